"""mmengine loops, hooks and optimizer construction for PTQ and QAT (registered
in mmdet's registries)."""
from .amp_optim_wrapper import CPUAmpOptimWrapper
from .calibration import calibrate_model
from .hooks import (BitOpsHook, ConfidenceGuidedAnnealingHook, OscillationHook, QATInitHook,
                    RandomStateHook, SAQAHook)
from .loops import PTQLoop, prepare_test_loop
from .model_wrappers import unwrap
from .optim_constructor import QATOptimWrapperConstructor
from .ratio_sampling import sample_uniform_sum_ratios
from .runner import MixAQRunner

__all__ = [
    'CPUAmpOptimWrapper', 'MixAQRunner', 'PTQLoop', 'prepare_test_loop', 'BitOpsHook',
    'ConfidenceGuidedAnnealingHook', 'OscillationHook', 'QATInitHook', 'RandomStateHook',
    'SAQAHook', 'QATOptimWrapperConstructor', 'calibrate_model', 'sample_uniform_sum_ratios',
    'unwrap'
]
