"""Swap the float Conv2d / Linear layers of a module tree for quantized ones."""
from typing import Mapping, Tuple, Type

from torch import nn

from .layers import QuantConv2d, QuantLinear


def quantize_layers(module: nn.Module,
                    weight_quantizer: Mapping,
                    input_quantizer: Mapping,
                    skip: Tuple[Type[nn.Module], ...] = ()) -> int:
    """Replace every float ``nn.Conv2d`` and ``nn.Linear`` below ``module``.

    The quantized layers share the float parameters and keep their state_dict
    keys, so checkpoints load unchanged. Layers that are already quantized, and
    instances of ``skip``, stay as they are (``nn.ConvTranspose2d`` is not a
    ``Conv2d`` and is never touched).

    Returns:
        The number of layers replaced.
    """
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, skip) or isinstance(child, (QuantConv2d, QuantLinear)):
            continue
        if isinstance(child, nn.Conv2d):
            setattr(module, name, QuantConv2d(child, weight_quantizer, input_quantizer))
            replaced += 1
        elif isinstance(child, nn.Linear):
            setattr(module, name, QuantLinear(child, weight_quantizer, input_quantizer))
            replaced += 1
        else:
            replaced += quantize_layers(child, weight_quantizer, input_quantizer, skip)
    return replaced
