"""Checkpoints in the exact layout of Swin-Transformer-Object-Detection's
releases (:mod:`mixaq_mmdet.utils.swin_od_checkpoint`) from a detector of known
weights: for tests, and for smoke runs of ``configs/ptq_papers/`` without the
real files (seeded random weights: the metrics mean nothing).

What such a file holds, as that repository's training stack writes it (its
``tools/train.py``, ``mmcv_custom/runner/epoch_based_runner.py`` and
``mmcv_custom/runner/checkpoint.py``):

- ``meta``: the ``CheckpointHook``'s meta dict (``mmdet_version``,
  ``CLASSES``), updated by the runner with ``epoch`` (1-based) and ``iter``,
  then with the runner's meta (``env_info``, ``config``, ``seed``,
  ``exp_name``), then by ``save_checkpoint`` with ``mmcv_version`` and
  ``time``. The hook reuses that dict at every save, so ``hook_msgs``
  (``last_ckpt``: the previous epoch's file, put into the runner's meta after
  each save) comes last;
- ``state_dict``: a plain ``OrderedDict`` of CPU tensors under Microsoft's
  names (:func:`~mixaq_mmdet.utils.swin_od_checkpoint.mmdet_to_swin_od`);
- ``optimizer``: AdamW's state dict as mmcv 1.x built it
  (:func:`~mixaq_mmdet.utils.official_checkpoint.mmcv_adamw_state_dict`: the
  same ``paramwise_cfg`` and 3x schedule; moments for two parameters only, and
  indices in mmdet 3.3's parameter order, which differs from Microsoft's only
  inside ``PatchMerging``);
- ``amp``: apex's ``amp.state_dict()``, one dynamic loss scaler.

Saved with ``torch.save``'s default (zip) serialization, as torch 1.8 did.
Stand-ins for what only the real files know: the git hash in
``mmdet_version`` ('unknown', what ``get_git_hash()`` gives outside a git
checkout), ``mmcv_version`` '1.3.0', ``env_info``, ``time``, ``seed`` None
(no ``--seed``), the loss scale, and ``config`` (a reconstruction of the 2.x
config from this project's 3.x one; no tool reads it back).
"""
import copy
import os
import os.path as osp
from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence

import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from torch import nn

from mixaq_mmdet.datasets.coco_fixture import COCO_CLASSES
from .official_checkpoint import (ITERS_PER_EPOCH, LR_STEPS, MAX_EPOCHS, adamw_2x_config,
                                  mmcv_adamw_state_dict)
from .swin_od_checkpoint import SWIN_OD_RELEASES, SwinODRelease, mmdet_to_swin_od, swin_od_release

#: ``mmdet.__version__`` of the fork plus ``get_git_hash()[:7]`` outside a git checkout.
MMDET_VERSION = '2.11.0unknown'
MMCV_VERSION = '1.3.0'
#: apex's dynamic loss scaler at the end of training (stand-in values).
AMP_LOSS_SCALE, AMP_UNSKIPPED = 512.0, 1927
#: ``meta``'s keys in the order the training stack inserts them.
SWIN_OD_META_KEYS = ('mmdet_version', 'CLASSES', 'epoch', 'iter', 'env_info', 'config', 'seed',
                     'exp_name', 'mmcv_version', 'time', 'hook_msgs')


def release_of_config(config: str) -> SwinODRelease:
    """The release whose detector ``config`` (one of this project's four
    ``configs/ptq_papers`` detector configs) builds."""
    release = swin_od_release(config)
    if release is None:
        raise ValueError(f'{config} is not the config of a Swin-Transformer-Object-Detection '
                         'release; valid: ' + ', '.join(r.config for r in SWIN_OD_RELEASES))
    return release


def build_swin_od_detector(config: str, seed: int = 0) -> nn.Module:
    """The detector of ``config`` (mmdet 3.3, no download) with the known
    weights :func:`seeded_state_dict` gives for ``seed``, in eval mode."""
    from mmdet.registry import MODELS
    release_of_config(config)
    cfg = copy.deepcopy(Config.fromfile(config).model)
    cfg.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg)
    model.load_state_dict(seeded_state_dict(model, seed))
    return model.eval()


@torch.no_grad()
def seeded_state_dict(model: nn.Module, seed: int = 0) -> 'OrderedDict[str, torch.Tensor]':
    """Known, non-trivial values for every floating-point entry of ``model``'s
    state dict, drawn from ``seed`` in key order: norm scales near 1, running
    variances in [0.5, 1.5), biases and other weights small; integer buffers
    (``relative_position_index``, ``num_batches_tracked``) as built."""
    generator = torch.Generator().manual_seed(seed)
    state: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    for name, value in model.state_dict().items():
        if not value.is_floating_point():
            state[name] = value.clone()
            continue
        if name.endswith('running_var'):
            new = torch.rand(value.shape, generator=generator) + 0.5
        elif name.endswith('.weight') and value.dim() == 1:
            new = 1 + 0.1 * torch.randn(value.shape, generator=generator)
        else:
            new = 0.02 * torch.randn(value.shape, generator=generator)
        state[name] = new.to(value.dtype)
    return state


def _swin_od_backbone_cfg(backbone: Dict[str, Any]) -> Dict[str, Any]:
    """Microsoft's ``SwinTransformer`` arguments for mmdet 3.3's."""
    return dict(
        type='SwinTransformer',
        embed_dim=backbone.get('embed_dims', 96),
        depths=list(backbone.get('depths', (2, 2, 6, 2))),
        num_heads=list(backbone.get('num_heads', (3, 6, 12, 24))),
        window_size=backbone.get('window_size', 7),
        mlp_ratio=backbone.get('mlp_ratio', 4),
        qkv_bias=backbone.get('qkv_bias', True),
        qk_scale=backbone.get('qk_scale'),
        drop_rate=backbone.get('drop_rate', 0.),
        attn_drop_rate=backbone.get('attn_drop_rate', 0.),
        drop_path_rate=backbone.get('drop_path_rate', 0.1),
        ape=False,
        patch_norm=backbone.get('patch_norm', True),
        out_indices=tuple(backbone.get('out_indices', (0, 1, 2, 3))),
        use_checkpoint=False)


def swin_od_config_text(config: str) -> str:
    """``meta['config']``: the 2.x config as ``cfg.pretty_text`` prints it,
    reconstructed from ``config`` (its model with Microsoft's backbone
    arguments, the 3x schedule with apex AMP). Not the original text."""
    release = release_of_config(config)
    model = copy.deepcopy(Config.fromfile(config).model.to_dict())
    model.pop('data_preprocessor', None)
    model['backbone'] = _swin_od_backbone_cfg(model['backbone'])
    model = dict(type=model.pop('type'), pretrained=None, **model)
    cfg = Config(
        dict(
            model=model,
            optimizer=adamw_2x_config(),
            optimizer_config=dict(
                type='DistOptimizerHook',
                update_interval=1,
                grad_clip=None,
                coalesce=True,
                bucket_size_mb=-1,
                use_fp16=True),
            lr_config=dict(
                policy='step',
                warmup='linear',
                warmup_iters=500,
                warmup_ratio=0.001,
                step=list(LR_STEPS)),
            runner=dict(type='EpochBasedRunnerAmp', max_epochs=MAX_EPOCHS),
            fp16=None,
            checkpoint_config=dict(interval=1),
            evaluation=dict(metric=['bbox', 'segm']),
            work_dir=f'./work_dirs/{release.exp_name[:-3]}',
            gpu_ids=range(0, 1)))
    return cfg.pretty_text


def swin_od_meta(release: SwinODRelease,
                 config_text: str,
                 classes: Sequence[str] = COCO_CLASSES,
                 epoch: int = MAX_EPOCHS) -> Dict[str, Any]:
    """The release's ``meta`` after ``epoch`` epochs, keys in
    :data:`SWIN_OD_META_KEYS` order (stand-ins in the module docstring)."""
    env_info = '\n'.join([
        'sys.platform: linux',
        'Python: 3.7.10 (default, Feb 26 2021, 18:47:35) [GCC 7.3.0]',
        'CUDA available: True',
        'GPU 0,1,2,3,4,5,6,7: Tesla V100-SXM2-32GB',
        'CUDA_HOME: /usr/local/cuda',
        'NVCC: Build cuda_10.1.243',
        'GCC: gcc (Ubuntu 7.5.0-3ubuntu1~18.04) 7.5.0',
        'PyTorch: 1.8.1',
        'PyTorch compiling details: PyTorch built with:\n  - GCC 7.3\n  - C++ Version: 201402',
        'TorchVision: 0.9.1',
        'OpenCV: 4.5.1',
        f'MMCV: {MMCV_VERSION}',
        'MMCV Compiler: GCC 7.3',
        'MMCV CUDA Compiler: 10.1',
        'MMDetection: 2.11.0+unknown',
    ])
    work_dir = f'./work_dirs/{release.exp_name[:-3]}'
    meta: Dict[str, Any] = dict(
        mmdet_version=MMDET_VERSION,
        CLASSES=tuple(classes),
        epoch=epoch,
        iter=epoch * ITERS_PER_EPOCH,
        env_info=env_info,
        config=config_text,
        seed=None,
        exp_name=release.exp_name,
        mmcv_version=MMCV_VERSION,
        time='Sat Apr 10 07:32:51 2021')
    if epoch > 1:
        meta['hook_msgs'] = dict(last_ckpt=f'{work_dir}/epoch_{epoch - 1}.pth')
    return meta


def apex_amp_state_dict() -> 'OrderedDict[str, Dict[str, Any]]':
    """What ``apex.amp.state_dict()`` returns for one loss."""
    return OrderedDict(loss_scaler0=dict(loss_scale=AMP_LOSS_SCALE, unskipped=AMP_UNSKIPPED))


def swin_od_checkpoint(model: nn.Module, config: str, seed: int = 0) -> Dict[str, Any]:
    """The release checkpoint dict of ``config``'s detector holding ``model``'s
    weights (an mmdet 3.3 detector built from ``config``)."""
    release = release_of_config(config)
    state = OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items())
    return dict(
        meta=swin_od_meta(release, swin_od_config_text(config)),
        state_dict=mmdet_to_swin_od(state),
        optimizer=mmcv_adamw_state_dict(model, seed=seed),
        amp=apex_amp_state_dict())


def write_swin_od_checkpoint(path: str,
                             config: str,
                             seed: int = 0,
                             model: Optional[nn.Module] = None) -> str:
    """Write the release checkpoint of ``config``'s detector to ``path``, with
    the weights of ``model`` (default :func:`build_swin_od_detector` of
    ``seed``). Returns ``path``."""
    if model is None:
        model = build_swin_od_detector(config, seed)
    checkpoint = swin_od_checkpoint(model, config, seed)
    if osp.dirname(path):
        os.makedirs(osp.dirname(path), exist_ok=True)
    torch.save(checkpoint, path)
    return path


__all__ = [
    'MMDET_VERSION', 'MMCV_VERSION', 'SWIN_OD_META_KEYS', 'release_of_config',
    'build_swin_od_detector', 'seeded_state_dict', 'swin_od_config_text', 'swin_od_meta',
    'apex_amp_state_dict', 'swin_od_checkpoint', 'write_swin_od_checkpoint'
]
