"""Layers whose weights and inputs are fake-quantized.

:class:`QuantLinear` and :class:`QuantConv2d` replace a float ``nn.Linear`` /
``nn.Conv2d`` and keep its ``weight``/``bias`` state_dict keys, so float
checkpoints load unchanged (the quantizer keys are then reported missing).
:class:`QuantMatMul` makes the bare ``@`` products of attention quantizable.
"""
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.tensor_cache import TensorCache, version_key
from .base import QuantizerBase
from .builder import QuantizerCfg, build_quantizer
from .codes import Codes
from .kernels import Int8Kernel, PackedWeight, epilogue, get_kernel
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
        #: The integer kernel's name after :func:`~.integer.to_integer`, else None.
        self.integer_kernel: Optional[str] = None
        self._integer: Optional[Tuple[Any, Int8Kernel, PackedWeight]] = None

    @classmethod
    def from_float(cls,
                   layer: nn.Module,
                   weight_quantizer: QuantizerCfg = DEFAULT_WEIGHT_QUANTIZER,
                   input_quantizer: Optional[QuantizerCfg] = DEFAULT_ACT_QUANTIZER,
                   share_params: bool = True):
        """Quantized copy of ``layer``, by default in the PTQ setting (W4 per
        channel, A8 per tensor, percentile/MSE ranges)."""
        return cls(layer, weight_quantizer, input_quantizer, share_params)

    def _integer_sources(self) -> Tuple[Tensor, ...]:
        quantizer = self.weight_quantizer
        bias = () if self.bias is None else (self.bias, )
        return (self.weight, *bias, *quantizer.parameters(), *quantizer.buffers())

    def runs_integer(self, input_quantizer: Optional[QuantizerBase]) -> bool:
        """Whether a forward whose input ``input_quantizer`` quantizes runs on
        the integer kernels: the layer was converted (:func:`~.integer.to_integer`)
        and both quantizers quantize (fake quant on, not observing). With
        quantization off (``disable_quantization``) the layer computes in float,
        while observing it computes the fake-quantized function."""
        if self.integer_kernel is None:
            return False
        if input_quantizer is None:
            raise ValueError(f'{type(self).__name__} runs on integer kernels and needs the '
                             'quantizer of its input (none given, and the layer has none)')
        return all(
            q.fake_quant_enabled and not q.observer_enabled
            for q in (self.weight_quantizer, input_quantizer))

    def prepare_integer(self, kernel: str = 'auto') -> None:
        """Pack the weight's integers for ``kernel`` ('auto': the device's, see
        :func:`~.kernels.get_kernel`) and run integer products from now on."""
        chosen = get_kernel(kernel, self.weight.device)
        with torch.no_grad():
            values, step = self.weight_quantizer.integer_weight(self.weight)
            bias = None if self.bias is None else self.bias.detach().float()
            packed = chosen.pack(values.reshape(values.shape[0], -1), step, bias)
        self._integer = (tuple(map(version_key, self._integer_sources())), chosen, packed)
        self.integer_kernel = kernel

    def release_integer(self) -> None:
        """Back to fake-quantized products; the packed weight is dropped."""
        self.integer_kernel = None
        self._integer = None

    def packed_integer_weight(self) -> Tuple[Int8Kernel, PackedWeight]:
        """The kernel and the packed weight, packed again (eager) if the weight,
        its qparams or its device changed since they were packed, or the layer
        was copied (a packed weight is not copied or pickled)."""
        if self.integer_kernel is None:
            raise RuntimeError(f'{type(self).__name__} was not converted: call to_integer(model)')
        if not torch.compiler.is_compiling() and (self._integer is None
                                                  or self._integer[0] != tuple(
                                                      map(version_key, self._integer_sources()))):
            self.prepare_integer(self.integer_kernel)
        return self._integer[1], self._integer[2]

    def __getstate__(self) -> dict:
        # oneDNN's packed weights are opaque tensors, which cannot be copied:
        # a copy packs its own
        return dict(super().__getstate__(), _integer=None)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if self.integer_kernel is not None:
            self.prepare_integer(self.integer_kernel)

    def integer_linear(self,
                       x: Union[Tensor, Codes],
                       input_quantizer: QuantizerBase,
                       activation: Optional[nn.Module] = None,
                       output_quantizer: Optional[QuantizerBase] = None,
                       residual: Optional[Tensor] = None) -> Union[Tensor, Codes]:
        """The layer's product on integer kernels, over the last dimension of
        ``x`` (float, or codes of ``input_quantizer``): ``activation`` applied to
        the output, which is then quantized to ``output_quantizer``'s codes, or
        added into ``residual`` in place (and returned). Inference only."""
        if self.training or (torch.is_grad_enabled() and isinstance(x, Tensor) and x.requires_grad):
            raise RuntimeError(f'{type(self).__name__} runs on integer kernels, which have no '
                               'gradient: integer execution is for inference (model.eval(), '
                               'torch.no_grad()); call to_fake_quant(model) to train')
        kernel, weight = self.packed_integer_weight()
        codes = x if isinstance(x, Codes) else input_quantizer.integer_codes(x)
        lead = codes.values.shape[:-1]
        rows = codes.values.reshape(-1, weight.in_features)
        out_grid = None if output_quantizer is None else output_quantizer.integer_grid()
        flat_residual = None if residual is None else residual.view(-1, weight.out_features)
        if rows.shape[0] == 0:
            y = epilogue(
                rows.new_empty((0, weight.out_features), dtype=torch.float32), activation, out_grid,
                flat_residual)
        else:
            y = kernel.linear(rows, codes.grid, weight, activation, out_grid, flat_residual)
        if residual is not None:
            return residual
        if isinstance(y, Codes):
            return output_quantizer.record_codes(Codes(y.values.view(*lead, -1), y.grid))
        return y.view(*lead, -1)

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

    def forward(self, x: Tensor, input_quantizer: Optional[QuantizerBase] = None) -> Tensor:
        """``x`` through its quantizer (``input_quantizer``, else the layer's
        own), times the quantized weight; on the integer kernels once converted
        (:meth:`runs_integer`)."""
        quantizer = self.input_quantizer if input_quantizer is None else input_quantizer
        if self.runs_integer(quantizer):
            return self.integer_linear(x, quantizer)
        x = x if quantizer is None else quantizer(x)
        return F.linear(x, self.quantized_weight(), self.bias)


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
        if self.runs_integer(self.input_quantizer):
            return self._integer_patches(x)
        return self._conv_forward(self._quantized_input(x), self.quantized_weight(), self.bias)

    def check_integer(self) -> None:
        """Integer execution covers convolutions over non-overlapping patches
        (kernel == stride, no padding, dilation or groups: a patch embedding),
        computed as one product over the patches."""
        if (self.kernel_size != self.stride or self.padding not in ((0, 0), 'valid')
                or self.dilation != (1, 1) or self.groups != 1):
            raise ValueError(
                f'kernel {self.kernel_size}, stride {self.stride}, padding {self.padding}, '
                f'dilation {self.dilation}, groups {self.groups}: no integer kernel; integer '
                'execution covers linear layers and convolutions whose kernel equals their '
                "stride (patch embeddings): evaluate this model with test_cfg.execution="
                "'fake_quant', or quantize only its backbone (quant_scope='backbone')")

    def prepare_integer(self, kernel: str = 'auto') -> None:
        self.check_integer()
        super().prepare_integer(kernel)

    def _integer_patches(self, x: Tensor) -> Tensor:
        """The convolution as one integer product over the (kh, kw) patches."""
        codes = self.input_quantizer.integer_codes(x)
        b, c, h, w = x.shape
        kh, kw = self.kernel_size
        ho, wo = h // kh, w // kw
        patches = codes.values[:, :, :ho * kh, :wo * kw].reshape(b, c, ho, kh, wo, kw)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(b, ho, wo, c * kh * kw)
        y = self.integer_linear(Codes(patches, codes.grid), self.input_quantizer)
        return y.permute(0, 3, 1, 2)


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
