"""The runner every config of the plugin names (``runner_type = 'MixAQRunner'``).

Registered in mmengine's root ``RUNNERS``: mmdet's ``tools/train.py`` and
``tools/test.py`` build the runner from that registry before any default scope
is set; mmdet's registry finds it there too."""
import os.path as osp
from typing import Dict

import torch
from mmengine.dist import is_distributed
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mixaq_mmdet.compat import checkpoint_types_allowed, init_process_group_without_cuda
from .converted_checkpoints import checkpoint_to_load
from .model_wrappers import unwrap


@RUNNERS.register_module()
class MixAQRunner(Runner):
    """mmengine's ``Runner`` with the two fixes the pinned stack needs
    (:mod:`mixaq_mmdet.compat`), here rather than patched into mmengine so
    that other code in the process keeps mmengine's behaviour, and the
    checkpoints of microsoft's Swin-Transformer-Object-Detection loadable:

    - runner checkpoints (``load_from``, ``--resume``) load under torch's
      weights-only default with mmengine's own types allowed;
    - a checkpoint in Swin-Transformer-Object-Detection's layout loads through
      its mmdet 3.x conversion, written once
      (:func:`~mixaq_mmdet.engine.converted_checkpoints.checkpoint_to_load`),
      and must fit the model (:func:`~mixaq_mmdet.engine.checkpoints.check_checkpoint_layout`);
    - the pytorch launcher works on a machine without CUDA (gloo).
    """

    def load_checkpoint(self, filename: str, *args, **kwargs) -> dict:
        """``Runner.load_checkpoint`` (also behind ``resume``) of
        :func:`checkpoint_to_load`'s file with mmengine's checkpoint types
        allowed; raises if the checkpoint's layout does not fit the model."""
        # imported here: checkpoints imports mixaq_mmdet.models, which imports this module
        from .checkpoints import check_checkpoint_layout
        path = checkpoint_to_load(filename)  # not inside: the allowlist does not nest
        with checkpoint_types_allowed():
            checkpoint = super().load_checkpoint(path, *args, **kwargs)
        config = osp.basename(self.cfg.filename) if self.cfg.filename else None
        check_checkpoint_layout(unwrap(self.model), checkpoint, filename, config)
        return checkpoint

    def setup_env(self, env_cfg: Dict) -> None:
        """``Runner.setup_env``, with the pytorch launcher's process group
        initialized without a CUDA device where there is no CUDA."""
        if (self.distributed and self.launcher == 'pytorch' and not is_distributed()
                and not torch.cuda.is_available()):
            init_process_group_without_cuda(**env_cfg.get('dist_cfg', {}))
        super().setup_env(env_cfg)
