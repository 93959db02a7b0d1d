"""A detector quantized beyond its backbone, built from the config.

Which layers are quantized is a property of the model, decided when the config
builds it, so every tool (``tools/test.py``, ``tools/train.py``, the BitOPs
count, the analysis tools) sees the same model, and the quantizers are created
before the runner moves the model to its device.
"""
from typing import Any, Dict, Union

from mmdet.registry import MODELS
from torch import nn

from mixaq_mmdet.quantization import (QuantConv2d, QuantLinear, disable_quantization,
                                      enable_fake_quant, quantize_layers)
from ..backbones import MixAQSwinTransformer

#: 'backbone': the MixA-Q backbone only (the paper's BitOPs scope);
#: 'detector': also every Conv2d / Linear of the neck and heads (RepQ-ViT's).
QUANT_SCOPES = ('backbone', 'detector')
#: Children of a detector that the 'detector' scope leaves float.
_NOT_QUANTIZED = ('backbone', 'data_preprocessor')


def build_quantized_detector(detector: Union[str, type],
                             quant_scope: str = 'backbone',
                             **kwargs) -> nn.Module:
    """Build ``detector`` (a registered mmdet detector type, e.g. 'MaskRCNN',
    with ``kwargs`` as its config) and quantize it to ``quant_scope``.

    With 'detector', every Conv2d and Linear outside the backbone (neck, RPN
    and RoI heads; ConvTranspose2d stays float) is replaced by a quantized
    layer at the backbone's weight bits and high activation bits, switched on
    or off with the backbone's ``quant``. The result is the detector itself
    (same class, same ``state_dict`` keys), so FP checkpoints load unchanged.
    """
    if quant_scope not in QUANT_SCOPES:
        raise ValueError(f'quant_scope must be one of {QUANT_SCOPES}, got {quant_scope!r}')
    model = MODELS.build(dict(type=detector, **kwargs))
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, MixAQSwinTransformer):
        raise TypeError(f"{type(model).__name__} (QuantizedDetector) needs a backbone of "
                        f"type 'MixAQSwinTransformer', got {type(backbone).__name__}")
    if quant_scope == 'detector':
        for name, child in model.named_children():
            if name in _NOT_QUANTIZED:
                continue
            quantize_layers(child, backbone.weight_quantizer_cfg,
                            backbone.act_quantizer_cfgs['high'])
            if backbone.quant:
                enable_fake_quant(child)
            else:
                disable_quantization(child)
    return model


MODELS.register_module(name='QuantizedDetector', module=build_quantized_detector)


def quant_scope(model: nn.Module) -> str:
    """'detector' if ``model`` has quantized layers outside its backbone, else
    'backbone' (also for a bare backbone)."""
    if not isinstance(getattr(model, 'backbone', None), nn.Module):
        return 'backbone'
    for name, child in model.named_children():
        if name in _NOT_QUANTIZED:
            continue
        if any(isinstance(m, (QuantConv2d, QuantLinear)) for m in child.modules()):
            return 'detector'
    return 'backbone'


def quant_setting(model: nn.Module) -> Dict[str, Any]:
    """The model-level quantization setting of a detector (or a bare MixA-Q
    backbone): the backbone's bits, ratios and window policy, and the scope.
    Recorded with calibrated and QAT checkpoints and checked when they load."""
    backbone = model if isinstance(model, MixAQSwinTransformer) else getattr(
        model, 'backbone', None)
    if not isinstance(backbone, MixAQSwinTransformer):
        raise TypeError(f'{type(model).__name__} has no MixAQSwinTransformer backbone')
    return dict(backbone.quant_setting(), quant_scope=quant_scope(model))


__all__ = ['QUANT_SCOPES', 'build_quantized_detector', 'quant_scope', 'quant_setting']
