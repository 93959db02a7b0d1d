"""Integer execution of a calibrated or trained quantized model.

:func:`to_integer` makes every quantized linear product of a model
(:class:`~.layers.QuantLinear`, and :class:`~.layers.QuantConv2d` over
non-overlapping patches) run as a uint8 x int8 product of the quantizers'
integer codes on the device's int8 kernels (:mod:`.kernels`), ending in one
rescale to float with the bias. Everything else (LayerNorm, softmax, GELU where
no kernel fuses it, the attention products on the dequantized codes) computes
what fake quantization computes, so the model's numbers differ from its
fake-quantized ones only by float rounding (a value on a rounding boundary can
move a downstream code by one step).

A layer that does not quantize its own input is fed by a module that does, and
that module says so: it has a method ``integer_inputs()`` yielding ``(layer,
input quantizer)`` pairs (e.g. the two branches of a Two-Branch block, which
share their linear layers). Every quantized layer of the model must be covered;
:func:`to_integer` refuses, naming what is wrong, a model in training mode, an
uncalibrated one, a quantizer kind without integer codes at a linear input, and
codes that do not fit the kernels' integer types.
"""
from typing import Dict, Iterator, List, Optional, Tuple

from torch import nn

from .base import QuantizerBase
from .layers import QuantConv2d, QuantLinear
from .switches import quantizers_of, set_quantizer_names

QuantLayer = (QuantLinear, QuantConv2d)


def to_integer(module: nn.Module, kernel: str = 'auto') -> nn.Module:
    """Run ``module``'s quantized linear products on integer kernels.

    Converts **in place** and returns ``module``, as ``nn.Module.to`` does:
    the weights are packed for the kernel once, and the model keeps its
    parameters, quantizers and ``state_dict`` (a checkpoint saved from it is the
    fake-quantized model's). :func:`to_fake_quant` undoes it. The packed weights
    are repacked if a weight, its qparams or its device change in eager mode;
    a compiled model keeps those it was compiled with.

    Args:
        module: a calibrated (PTQ) or trained (QAT) quantized model, in eval mode.
        kernel: 'auto' (oneDNN on CPU, ``torch._int_mm`` on CUDA), 'onednn' or
            'int_mm'.
    """
    set_quantizer_names(module)
    training = [name for name, m in module.named_modules() if m.training]
    if training:
        raise RuntimeError(f'to_integer: {type(module).__name__} is in training mode '
                           f'({training[0] or "the model itself"}); integer execution is for '
                           'inference: call model.eval() first')
    quantizers = quantizers_of(module)
    if not quantizers:
        raise ValueError(f'to_integer: {type(module).__name__} has no quantizers: build it '
                         'quantized (e.g. MixAQSwinTransformer with quant=True)')
    if not any(q.is_calibrated for q in quantizers):
        raise RuntimeError(f'to_integer: {type(module).__name__} is not calibrated (no '
                           'quantizer has qparams): calibrate it (PTQ) or load a calibrated or '
                           'QAT checkpoint first')
    pairs = _pairs(module)
    names = {id(m): name for name, m in module.named_modules()}
    for layer, quantizer in pairs:
        _check_quantizes(layer.weight_quantizer)
        _check_quantizes(quantizer)
        quantizer.check_integer_grid()
        if quantizer.is_calibrated:
            quantizer.integer_grid()  # what a compiled forward reads
        if not layer.weight_quantizer.is_calibrated:
            raise RuntimeError(f'to_integer: {layer.weight_quantizer.display_name} is not '
                               'calibrated: a quantized layer needs its weight qparams')
        if isinstance(layer, QuantConv2d):
            try:
                layer.check_integer()
            except ValueError as e:
                raise ValueError(f"to_integer: QuantConv2d '{names[id(layer)]}': {e}") from None
    for layer in {id(layer): layer for layer, _ in pairs}.values():
        layer.prepare_integer(kernel)
    return module


def to_fake_quant(module: nn.Module) -> nn.Module:
    """Undo :func:`to_integer`: fake-quantized products again (in place)."""
    for layer in module.modules():
        if isinstance(layer, QuantLayer):
            layer.release_integer()
    return module


def integer_kernels(module: nn.Module) -> Dict[str, Optional[str]]:
    """How each quantized layer computes, by name: its integer kernel, with
    the number of weight planes where more than one (see :mod:`.kernels`), or
    None where it is fake-quantized."""
    kernels = {}
    for name, layer in module.named_modules():
        if isinstance(layer, QuantLayer):
            kernels[name] = None
            if layer.integer_kernel is not None:
                kernel, weight = layer.packed_integer_weight()
                planes = weight.planes.shape[0]
                kernels[name] = kernel.name + (f' ({planes} weight planes)' if planes > 1 else '')
    return kernels


def _pairs(module: nn.Module) -> List[Tuple[nn.Module, QuantizerBase]]:
    """The layers of ``module`` with the quantizers of their inputs; raises for
    a quantized layer no quantizer feeds."""
    pairs = list(_declared_pairs(module))
    fed = {id(layer) for layer, _ in pairs}
    for name, layer in module.named_modules():
        if isinstance(layer, QuantLayer) and id(layer) not in fed:
            raise ValueError(f"to_integer: {type(layer).__name__} '{name}' has no input "
                             'quantizer and no module declares one (integer_inputs()): its '
                             'input is float, so its product cannot run on integer codes')
    return pairs


def _declared_pairs(module: nn.Module) -> Iterator[Tuple[nn.Module, QuantizerBase]]:
    for child in module.modules():
        if isinstance(child, QuantLayer) and child.input_quantizer is not None:
            yield child, child.input_quantizer
        declared = getattr(child, 'integer_inputs', None)
        if callable(declared):
            yield from declared()


def _check_quantizes(quantizer: QuantizerBase) -> None:
    if not quantizer.fake_quant_enabled or quantizer.observer_enabled:
        raise RuntimeError(f'to_integer: {quantizer.display_name} is not quantizing (fake quant '
                           f'{"on" if quantizer.fake_quant_enabled else "off"}, observer '
                           f'{"on" if quantizer.observer_enabled else "off"}): integer '
                           'execution replaces fake quantization of a calibrated model '
                           '(enable_fake_quant(model) after calibration)')


__all__ = ['to_integer', 'to_fake_quant', 'integer_kernels']
