"""mmengine loops and hooks for PTQ and QAT (registered in mmdet's registries)."""
from .hooks import BitOpsHook
from .loops import PTQLoop
from .ratio_sampling import sample_uniform_sum_ratios

__all__ = ['PTQLoop', 'BitOpsHook', 'sample_uniform_sum_ratios']
