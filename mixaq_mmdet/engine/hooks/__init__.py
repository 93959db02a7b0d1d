"""Hooks for PTQ and QAT runs (registered in mmdet's HOOKS)."""
from .bitops_hook import BitOpsHook
from .qat_init_hook import QATInitHook
from .random_state_hook import RandomStateHook
from .saqa_hook import SAQAHook

__all__ = ['BitOpsHook', 'QATInitHook', 'RandomStateHook', 'SAQAHook']
