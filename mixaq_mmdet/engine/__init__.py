"""mmengine loops and hooks for PTQ and QAT (registered in mmdet's registries)."""
from .hooks import BitOpsHook
from .loops import PTQLoop

__all__ = ['PTQLoop', 'BitOpsHook']
