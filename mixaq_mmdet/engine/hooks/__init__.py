"""Hooks for PTQ and QAT runs (registered in mmdet's HOOKS)."""
from .backbone_latency_hook import BackboneLatencyHook
from .bitops_hook import BitOpsHook
from .cga_hook import ConfidenceGuidedAnnealingHook
from .oscillation_hook import OscillationHook
from .qat_init_hook import QATInitHook
from .random_state_hook import RandomStateHook
from .saqa_hook import SAQAHook

__all__ = [
    'BackboneLatencyHook', 'BitOpsHook', 'ConfidenceGuidedAnnealingHook', 'OscillationHook',
    'QATInitHook', 'RandomStateHook', 'SAQAHook'
]
