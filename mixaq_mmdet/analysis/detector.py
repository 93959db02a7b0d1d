"""Build a detector from a config and a checkpoint for offline analysis."""
import os.path as osp
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

from mixaq_mmdet.compat import checkpoint_types_allowed
from mixaq_mmdet.quantization import disable_quantization
from .window_maps import check_swin


def load_detector(config: str,
                  checkpoint: str,
                  cfg_options: Optional[dict] = None,
                  device: str = 'cpu') -> Tuple[nn.Module, Config]:
    """The config's detector with the checkpoint's weights, in eval mode, float.

    Quantizers are switched off: the analyses look at how windows are ranked,
    which the policy computes from the float stage inputs, and they work with a
    PTQ config and its FP checkpoint before any calibration.

    Raises if a file is missing, the backbone is not a Swin, or the checkpoint
    shares no parameter name with the model (a checkpoint of another model
    would otherwise load silently, as loading is not strict: a MixA-Q backbone
    reads plain mmdet checkpoints).
    """
    for path, what in ((config, 'config'), (checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} file {path} does not exist')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    check_swin(getattr(model, 'backbone', model))
    with checkpoint_types_allowed():
        ckpt = load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    state = ckpt.get('state_dict', ckpt)
    if not set(state) & set(model.state_dict()):
        raise ValueError(f'checkpoint {checkpoint} has no parameter of the '
                         f'model built from {config}')
    disable_quantization(model)
    return model.to(torch.device(device)).eval(), cfg
