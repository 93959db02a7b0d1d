"""The model inside mmengine's wrappers, for hooks and tools that read it."""
from mmengine.model import is_model_wrapper
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The detector inside a DDP (or other mmengine) wrapper, or ``model``."""
    return model.module if is_model_wrapper(model) else model


__all__ = ['unwrap']
