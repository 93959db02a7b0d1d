"""Layers whose weights and inputs are fake-quantized.

:class:`QuantLinear` and :class:`QuantConv2d` replace a float ``nn.Linear`` /
``nn.Conv2d`` and keep its ``weight``/``bias`` state_dict keys, so float
checkpoints load unchanged (the quantizer keys are then reported missing).
:class:`QuantMatMul` makes the bare ``@`` products of attention quantizable.
"""
from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.tensor_cache import TensorCache
from .base import QuantizerBase
from .builder import QuantizerCfg, build_quantizer
from .quantizers import DEFAULT_ACT_QUANTIZER, DEFAULT_WEIGHT_QUANTIZER


def _build_optional(cfg: Optional[QuantizerCfg]) -> Optional[QuantizerBase]:
    return None if cfg is None else build_quantizer(cfg)


def _build_weight_quantizer(cfg: QuantizerCfg) -> QuantizerBase:
    # A weight is one static tensor: a percentile/MSE search reads it exactly unless
    # the config says otherwise (min/max is exact anyway).
    searched = isinstance(cfg, Mapping) and cfg.get('calib') == 'percentile_mse'
    return build_quantizer(cfg, default_args=dict(static=True) if searched else None)


def _take_param(param: Optional[nn.Parameter], share: bool) -> Optional[nn.Parameter]:
    if param is None or share:
        return param
    return nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)


class _QuantLayerMixin:
    """What :class:`QuantLinear` and :class:`QuantConv2d` share."""

    def _adopt(self, layer: nn.Module, weight_quantizer: QuantizerCfg,
               input_quantizer: Optional[QuantizerCfg], share_params: bool) -> None:
        self.weight = _take_param(layer.weight, share_params)
        self.bias = _take_param(layer.bias, share_params)
        self.weight_quantizer = _build_weight_quantizer(weight_quantizer)
        if getattr(self.weight_quantizer, 'per_channel', False):
            axis = self.weight_quantizer.ch_axis % self.weight.dim()
            self.weight_quantizer.set_num_channels(self.weight.shape[axis])
        self.input_quantizer = _build_optional(input_quantizer)
        self._cache = TensorCache()
        self._reused_weight: Optional[Tensor] = None
        self._reuse_weight = False

    @classmethod
    def from_float(cls,
                   layer: nn.Module,
                   weight_quantizer: QuantizerCfg = DEFAULT_WEIGHT_QUANTIZER,
                   input_quantizer: Optional[QuantizerCfg] = DEFAULT_ACT_QUANTIZER,
                   share_params: bool = True):
        """Quantized copy of ``layer``, by default in the PTQ setting (W4 per
        channel, A8 per tensor, percentile/MSE ranges)."""
        return cls(layer, weight_quantizer, input_quantizer, share_params)

    def _quantized_input(self, x: Tensor) -> Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def quantized_weight(self) -> Tensor:
        """The weight through its quantizer; in inference computed once per
        weight and qparams (see :class:`~mixaq_mmdet.utils.TensorCache`)."""
        quantizer = self.weight_quantizer
        if self._reuse_weight:
            if self._reused_weight is None:
                self._reused_weight = quantizer(self.weight)
            return self._reused_weight
        if quantizer.observer_enabled or not quantizer.fake_quant_enabled:
            return quantizer(self.weight)
        sources = (self.weight, *quantizer.parameters(), *quantizer.buffers())
        return self._cache.get('weight', sources, lambda: quantizer(self.weight))


@contextmanager
def reused_quantized_weights(layers: Iterable[_QuantLayerMixin]) -> Iterator[None]:
    """Within the context each layer quantizes its weight once and reuses it
    for every call, autograd graph included (e.g. a layer shared by the two
    branches of a training forward); outside it, as before."""
    layers = tuple(layers)
    for layer in layers:
        layer._reuse_weight = True
    try:
        yield
    finally:
        for layer in layers:
            layer._reuse_weight = False
            layer._reused_weight = None


class QuantLinear(_QuantLayerMixin, nn.Linear):
    """``nn.Linear`` with a fake-quantized weight and, optionally, input.

    A subclass of ``nn.Linear`` (as torch.ao's QAT ``Linear``), so initialization
    and ``isinstance`` checks keep working; code that swaps layers must test for
    ``QuantLinear`` before ``nn.Linear``.

    Args:
        linear: The float layer.
        weight_quantizer: Quantizer (config or module) of the weight; per channel
            means per output channel (``ch_axis=0``). A ``'percentile_mse'``
            config that does not set ``static`` gets ``static=True``.
        input_quantizer: Quantizer of the input, or None when the caller quantizes
            the input itself (e.g. two branches that share this layer, each with
            its own activation quantizers).
        share_params: Use the float layer's parameters (True) or copies of them.
    """

    def __init__(self,
                 linear: nn.Linear,
                 weight_quantizer: QuantizerCfg,
                 input_quantizer: Optional[QuantizerCfg],
                 share_params: bool = True) -> None:
        if not isinstance(linear, nn.Linear) or isinstance(linear, QuantLinear):
            raise TypeError(f'QuantLinear needs a float nn.Linear, got {type(linear).__name__}')
        super().__init__(
            linear.in_features, linear.out_features, linear.bias is not None, device='meta')
        self._adopt(linear, weight_quantizer, input_quantizer, share_params)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self._quantized_input(x), self.quantized_weight(), self.bias)


class QuantConv2d(_QuantLayerMixin, nn.Conv2d):
    """``nn.Conv2d`` with a fake-quantized weight and, optionally, input.

    Same arguments and conventions as :class:`QuantLinear`; per-channel weight
    quantization is per output channel (``ch_axis=0``).
    """

    def __init__(self,
                 conv: nn.Conv2d,
                 weight_quantizer: QuantizerCfg,
                 input_quantizer: Optional[QuantizerCfg],
                 share_params: bool = True) -> None:
        if not isinstance(conv, nn.Conv2d) or isinstance(conv, QuantConv2d):
            raise TypeError(f'QuantConv2d needs a float nn.Conv2d, got {type(conv).__name__}')
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device='meta')
        self._adopt(conv, weight_quantizer, input_quantizer, share_params)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self._quantized_input(x), self.quantized_weight(), self.bias)


class QuantMatMul(nn.Module):
    """``a @ b`` with each operand fake-quantized by its own quantizer.

    Args:
        quantizer_a: Quantizer of ``a``, or None to leave it float.
        quantizer_b: Quantizer of ``b``, or None to leave it float.
    """

    def __init__(self,
                 quantizer_a: Optional[QuantizerCfg] = None,
                 quantizer_b: Optional[QuantizerCfg] = None) -> None:
        super().__init__()
        self.quantizer_a = _build_optional(quantizer_a)
        self.quantizer_b = _build_optional(quantizer_b)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.quantizer_a is not None:
            a = self.quantizer_a(a)
        if self.quantizer_b is not None:
            b = self.quantizer_b(b)
        return torch.matmul(a, b)
