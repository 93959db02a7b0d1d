"""The quantized weights that the weight-grid hooks (oscillation tracking,
CGA) watch."""
from typing import List, Tuple

from torch import nn

from mixaq_mmdet.quantization import QuantConv2d, QuantLinear
from ..model_wrappers import unwrap


def grid_weight_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, layer)`` of each quantized layer whose weight quantizer rounds
    on a uniform integer grid (``has_integer_grid``), in module order."""
    return [(name, module) for name, module in unwrap(model).named_modules()
            if isinstance(module, (QuantLinear,
                                   QuantConv2d)) and module.weight_quantizer.has_integer_grid]
