"""The detector inside mmengine's wrappers, for hooks and tools that read it."""
from mmengine.model import BaseTTAModel, is_model_wrapper
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The detector inside DDP (or other mmengine) and test-time-augmentation
    wrappers (``tools/test.py --tta``), or ``model``."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


__all__ = ['unwrap']
