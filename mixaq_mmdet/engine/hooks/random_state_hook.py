"""RandomStateHook: a resumed run draws the random numbers the uninterrupted one drew."""
import random
from typing import Any, Dict, Optional

import numpy as np
import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.logging import print_log

#: Key of the saved generator states in a checkpoint's ``meta``.
RANDOM_STATE_META_KEY = 'random_state'


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Save the random generators' states with every checkpoint, restore them on resume.

    mmengine seeds the generators once, when the runner is built; a resumed run
    therefore draws other random flips, RoI samples and drop-path masks than the
    uninterrupted run would have. With this hook the Python, NumPy and torch
    (CPU and CUDA) generators continue where the checkpoint left them, so that
    ``--resume`` reproduces the uninterrupted run (bit for bit on CPU, with
    ``num_workers=0``: worker processes seed their own generators). Only applied
    when training resumes (iteration > 0), not to a ``load_from`` checkpoint.
    """

    priority = 'VERY_LOW'  # restore after every other before_train hook

    def __init__(self) -> None:
        self._loaded: Optional[Dict[str, Any]] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        state = dict(
            python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
        if torch.cuda.is_available():
            state['cuda'] = torch.cuda.get_rng_state_all()
        checkpoint.setdefault('meta', {})[RANDOM_STATE_META_KEY] = state

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._loaded = (checkpoint.get('meta') or {}).get(RANDOM_STATE_META_KEY)

    def before_train(self, runner) -> None:
        state, self._loaded = self._loaded, None
        if runner.iter == 0:
            return
        if state is None:
            print_log(
                'RandomStateHook: the resumed checkpoint has no random state; the '
                'run continues with freshly seeded generators',
                logger='current')
            return
        random.setstate(state['python'])
        np.random.set_state(state['numpy'])
        torch.set_rng_state(state['torch'])
        if 'cuda' in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['cuda'])
        print_log(
            f'RandomStateHook: random generators restored at iteration {runner.iter}',
            logger='current')


__all__ = ['RandomStateHook']
