"""The runner every config of the plugin names (``runner_type = 'MixAQRunner'``).

Registered in mmengine's root ``RUNNERS``: mmdet's ``tools/train.py`` and
``tools/test.py`` build the runner from that registry before any default scope
is set; mmdet's registry finds it there too."""
from typing import Dict

import torch
from mmengine.dist import is_distributed
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mixaq_mmdet.compat import checkpoint_types_allowed, init_process_group_without_cuda


@RUNNERS.register_module()
class MixAQRunner(Runner):
    """mmengine's ``Runner`` with the two fixes the pinned stack needs
    (:mod:`mixaq_mmdet.compat`), here rather than patched into mmengine so
    that other code in the process keeps mmengine's behaviour:

    - runner checkpoints (``load_from``, ``--resume``) load under torch's
      weights-only default with mmengine's own types allowed;
    - the pytorch launcher works on a machine without CUDA (gloo).
    """

    def load_checkpoint(self, filename: str, *args, **kwargs) -> dict:
        """``Runner.load_checkpoint`` (also behind ``resume``) with mmengine's
        checkpoint types allowed."""
        with checkpoint_types_allowed():
            return super().load_checkpoint(filename, *args, **kwargs)

    def setup_env(self, env_cfg: Dict) -> None:
        """``Runner.setup_env``, with the pytorch launcher's process group
        initialized without a CUDA device where there is no CUDA."""
        if (self.distributed and self.launcher == 'pytorch' and not is_distributed()
                and not torch.cuda.is_available()):
            init_process_group_without_cuda(**env_cfg.get('dist_cfg', {}))
        super().setup_env(env_cfg)
