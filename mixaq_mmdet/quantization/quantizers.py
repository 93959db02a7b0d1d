"""Fake quantizers: uniform affine (PTQ), LSQ (QAT) and log-sqrt(2) (post-softmax).

Each is a :class:`~.base.QuantizerBase` (state, switches, checkpoints) that
computes its qparams from the statistics of its observer (:mod:`.observers`)
and quantizes with the functions of :mod:`.numerics`.
"""
import math
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from ..registry import QUANTIZERS
from .base import QuantizerBase
from .codes import MAX_CODE_LEVELS, IntegerGrid, weight_values
from .numerics import (LogSqrt2, fake_quantize, fake_quantize_values, log_sqrt2_tables,
                       uniform_step_function)
from .observers import (HistogramObserver, MinMaxObserver, Observer, RangeStatistics,
                        TensorObserver, any_rank)

CALIB_METHODS = ('minmax', 'percentile_mse')
# RepQ-ViT's percentile candidates; (min, max) is always a candidate too.
PERCENTILES = (0.999, 0.9999, 0.99999)

#: Weights in the PTQ setting (RepQ-ViT W4): per output channel, asymmetric,
#: percentile/MSE range computed exactly on the weight.
DEFAULT_WEIGHT_QUANTIZER: Mapping[str, Any] = MappingProxyType(
    dict(type='UniformQuantizer', bits=4, per_channel=True, calib='percentile_mse', static=True))
#: Activations in the PTQ setting (RepQ-ViT A8): per tensor, asymmetric,
#: percentile/MSE range from a histogram of the calibration data.
DEFAULT_ACT_QUANTIZER: Mapping[str, Any] = MappingProxyType(
    dict(type='UniformQuantizer', bits=8, calib='percentile_mse'))


@QUANTIZERS.register_module()
class UniformQuantizer(QuantizerBase):
    """Uniform affine fake quantizer (round to nearest), RepQ-ViT's PTQ quantizer.

    Asymmetric: integers ``[0, 2^bits - 1]`` and an integer zero point; symmetric:
    ``[-2^(bits-1), 2^(bits-1) - 1]`` and zero point 0. Ranges always include 0, so
    zero is exact. qparams from a range follow torch.ao's ``MinMaxObserver``; the
    forward is :func:`torch.fake_quantize_per_tensor_affine` /
    :func:`torch.fake_quantize_per_channel_affine` with the ``scale`` and
    ``zero_point`` buffers.

    Args:
        bits: Bit width, 2 to 8.
        symmetric: Signed range with zero point 0 instead of an unsigned one.
        per_channel: One scale/zero point per index of ``ch_axis`` (weights: output
            channels, ``ch_axis=0``; tokens ``(B, N, C)``: ``ch_axis=-1``).
        ch_axis: Channel dimension for ``per_channel``.
        calib: ``'minmax'``: the range of all observed data. ``'percentile_mse'``:
            RepQ-ViT's search; candidate ranges are (min, max) and the
            ``(1 - p, p)`` quantiles for ``p`` in :data:`PERCENTILES`; each channel
            keeps the candidate with the lowest MSE on the observed data.
        static: For ``'percentile_mse'``: the input is one static tensor (a weight)
            whose percentiles and errors are computed exactly on the tensor itself
            (:class:`TensorObserver`). Otherwise the statistics are a histogram of
            bounded memory, merged exactly across batches and ranks
            (:class:`HistogramObserver`). The weight quantizers of
            :class:`QuantLinear` / :class:`QuantConv2d` default to True.
    """

    _qparam_names = ('scale', 'zero_point')
    kind = 'uniform'
    has_integer_grid = True

    def __init__(self,
                 bits: int,
                 symmetric: bool = False,
                 per_channel: bool = False,
                 ch_axis: int = 0,
                 calib: str = 'minmax',
                 static: bool = False) -> None:
        super().__init__(bits)
        if calib not in CALIB_METHODS:
            raise ValueError(f'{self.display_name}: calib must be one of {CALIB_METHODS}, '
                             f'got {calib!r}')
        if isinstance(ch_axis, bool) or not isinstance(ch_axis, int):
            raise TypeError(f'{self.display_name}: ch_axis must be an int, got {ch_axis!r}')
        if static and calib != 'percentile_mse':
            raise ValueError(f"{self.display_name}: static=True applies to "
                             f"calib='percentile_mse' only (it computes percentiles "
                             f"exactly on a weight), got calib={calib!r}")
        self.symmetric = bool(symmetric)
        self.per_channel = bool(per_channel)
        self.ch_axis = ch_axis
        self.calib = calib
        self.static = bool(static)
        if self.symmetric:
            self.quant_min, self.quant_max = -2**(self.bits - 1), 2**(self.bits - 1) - 1
        else:
            self.quant_min, self.quant_max = 0, 2**self.bits - 1
        self.observer = self._make_observer()
        #: Per-channel count fixed when the owning layer is built, else None.
        self.num_channels: Optional[int] = None
        self._init_qparams()

    def settings(self) -> Dict[str, Any]:
        return dict(
            super().settings(),
            symmetric=self.symmetric,
            per_channel=self.per_channel,
            ch_axis=self.ch_axis if self.per_channel else None)

    def has_statistics(self) -> bool:
        return not self.observer.empty

    def _config_repr(self) -> str:
        axis = f', ch_axis={self.ch_axis}' if self.per_channel else ''
        static = ', static=True' if self.static else ''
        return (f', symmetric={self.symmetric}, per_channel={self.per_channel}{axis}, '
                f'calib={self.calib!r}{static}')

    def _make_observer(self) -> Observer:
        if self.calib == 'minmax':
            return MinMaxObserver(self.per_channel, self.ch_axis)
        if self.static:
            return TensorObserver(self.per_channel, self.ch_axis)
        return HistogramObserver(self.per_channel, self.ch_axis)

    def _init_qparams(self) -> None:
        self.register_buffer('scale', torch.ones(1))
        self.register_buffer('zero_point', torch.zeros(1, dtype=torch.int32))

    def _observe(self, x: Tensor) -> None:
        self.observer.observe(x)

    def _reset_statistics(self) -> None:
        self.observer.reset()

    def _compute_qparams(self) -> Tuple[Tensor, Tensor]:
        stats = self.observer.reduced(self.calibrated.device)
        if stats.empty:
            raise self._no_statistics()
        if self.calib == 'minmax':
            scale, zero_point = self._range_to_qparams(stats.min_val, stats.max_val)
        else:
            scale, zero_point = self._search_percentile_mse(stats)
        self._set_qparam('scale', scale)
        self._set_qparam('zero_point', zero_point)
        return self.scale, self.zero_point

    def set_num_channels(self, num_channels: int) -> None:
        """Give per-channel qparams their final shape ``(num_channels,)`` now,
        before an optimizer or DDP holds them (LSQ parameters must never be
        resized afterwards). A per-tensor quantizer ignores it."""
        if not self.per_channel:
            return
        if self.is_calibrated and self.scale.numel() != num_channels:
            raise ValueError(f'{self.display_name}: calibrated for {self.scale.numel()} '
                             f'channels, cannot take {num_channels}')
        self.num_channels = int(num_channels)
        for name in self._qparam_names:
            tensor = getattr(self, name)
            if tensor.shape != (num_channels, ):
                tensor.data = tensor.data.new_full((num_channels, ),
                                                   float(tensor.detach().flatten()[0]))

    def _set_qparam(self, name: str, value: Tensor) -> None:
        """Store computed qparams in place when the shape is known (a parameter
        keeps its identity), else take their shape."""
        tensor = getattr(self, name)
        value = value.to(tensor.device, tensor.dtype)
        if tensor.shape == value.shape:
            with torch.no_grad():  # in place, counted by the version counter
                tensor.copy_(value)
        elif self.num_channels is not None:
            raise ValueError(f'{self.display_name}: built for {self.num_channels} channels, '
                             f'calibration data has {value.numel()}')
        else:
            tensor.data = value

    def _range_to_qparams(self, min_val: Tensor, max_val: Tensor) -> Tuple[Tensor, Tensor]:
        """torch.ao's qparams for the range ``[min_val, max_val]`` widened to include 0."""
        min_neg = torch.clamp(min_val, max=0.0)
        max_pos = torch.clamp(max_val, min=0.0)
        eps = torch.finfo(torch.float32).eps
        if self.symmetric:
            max_pos = torch.max(-min_neg, max_pos)
            scale = torch.clamp(max_pos / (float(self.quant_max - self.quant_min) / 2), min=eps)
            return scale, torch.zeros_like(scale, dtype=torch.int32)
        scale = torch.clamp((max_pos - min_neg) / float(self.quant_max - self.quant_min), min=eps)
        zero_point = self.quant_min - torch.round(min_neg / scale).to(torch.int32)
        return scale, torch.clamp(zero_point, self.quant_min, self.quant_max)

    def _search_percentile_mse(self, stats: RangeStatistics) -> Tuple[Tensor, Tensor]:
        k = len(PERCENTILES)
        q = stats.quantiles([1.0 - p for p in PERCENTILES] + list(PERCENTILES)).float()
        lows = torch.cat([stats.min_val.unsqueeze(0), q[:k]])
        highs = torch.cat([stats.max_val.unsqueeze(0), q[k:]])
        scales, zero_points = self._range_to_qparams(lows, highs)
        mse = stats.step_mse(
            *uniform_step_function(scales, zero_points, self.quant_min, self.quant_max))
        best = mse.argmin(0, keepdim=True)  # first minimum: (min, max) wins ties
        return scales.gather(0, best)[0], zero_points.gather(0, best)[0]

    def grid_position(self, x: Tensor) -> Tensor:
        """``x`` in units of the integer grid, ``x / scale + zero_point``:
        rounded and clamped to ``[quant_min, quant_max]`` it is the integer
        ``x`` is quantized to; a value half way between two integers sits on a
        rounding boundary."""
        shape = [1] * x.dim()
        if self.per_channel:
            shape[self.observer.channel_axis(x)] = -1
        scale = self.scale.detach().float().reshape(shape)
        zero_point = self.zero_point.detach().float().reshape(shape).round().clamp(
            self.quant_min, self.quant_max)
        return torch.mul(x.detach(), torch.reciprocal(scale)) + zero_point

    def integer_code(self, x: Tensor) -> Tensor:
        """The integer each value of ``x`` is quantized to."""
        return torch.round(self.grid_position(x)).clamp_(self.quant_min, self.quant_max)

    @property
    def code_range(self) -> Tuple[int, int]:
        return self.quant_min, self.quant_max

    def _integer_qparams(self) -> Tuple[Tensor, Tensor]:
        """The scale and zero point the forward quantizes with (the zero point
        rounded and clamped to the integer range, as LSQ's forward takes it)."""
        zero_point = self.zero_point.detach().float().round().clamp(self.quant_min, self.quant_max)
        return self.scale.detach().float(), zero_point

    def integer_grid(self) -> IntegerGrid:
        """The per-tensor grid of the codes (see :class:`~.codes.IntegerGrid`);
        inside ``torch.compile`` the one last computed in eager."""
        if torch.compiler.is_compiling() and self._integer_grid is not None:
            return self._integer_grid
        self.check_integer_grid()
        self._check_integer_ready()

        def grid() -> IntegerGrid:
            scale, zero_point = self._integer_qparams()
            return IntegerGrid.create(scale, int(zero_point.reshape(-1)[0]), self.quant_min,
                                      self.quant_max)

        self._integer_grid = self._cache.get('integer_grid', (self.scale, self.zero_point), grid)
        return self._integer_grid

    def check_integer_grid(self) -> None:
        if self.per_channel:
            raise ValueError(f'{self.display_name}: integer execution takes one scale and zero '
                             'point per activation tensor; this quantizer is per channel '
                             f'(ch_axis={self.ch_axis})')
        levels = self.quant_max - self.quant_min + 1
        if levels > MAX_CODE_LEVELS:
            raise ValueError(f'{self.display_name}: {self.bits}-bit codes '
                             f'[{self.quant_min}, {self.quant_max}] do not fit the kernels\' '
                             f'uint8 after the zero-point shift ({MAX_CODE_LEVELS} levels)')

    def integer_weight(self, w: Tensor) -> Tuple[Tensor, Tensor]:
        """``code - zero_point`` of each weight (int32) and each output
        channel's scale."""
        self._check_integer_ready()
        if self.per_channel and self.observer.channel_axis(w) != 0:
            raise ValueError(f'{self.display_name}: integer execution needs weight qparams per '
                             f'output channel (ch_axis=0), got ch_axis={self.ch_axis}')
        scale, zero_point = self._integer_qparams()
        values = weight_values(w, scale, zero_point, self.quant_min, self.quant_max)
        return values, scale.reshape(-1).expand(w.shape[0]).contiguous()

    def _fake_quantize(self, x: Tensor) -> Tensor:
        axis = self.observer.channel_axis(x) if self.per_channel else None
        if torch.is_grad_enabled() and (x.requires_grad or self.scale.requires_grad):
            if axis is not None:
                return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, axis,
                                                              self.quant_min, self.quant_max)
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point,
                                                         self.quant_min, self.quant_max)
        return fake_quantize_values(x, self.value_params(), axis)

    def value_params(self) -> Tuple[Tensor, ...]:
        """``(1 / scale, scale, quant_min - zero_point, quant_max - zero_point)``
        as the forward (without gradient) quantizes with them, one row per
        channel (see :func:`~.numerics.fake_quantize_values`); computed once
        per qparams in inference."""

        def rows() -> Tuple[Tensor, ...]:
            scale, zero_point = (t.reshape(-1, 1) for t in self._integer_qparams())
            return (torch.reciprocal(scale), scale, self.quant_min - zero_point,
                    self.quant_max - zero_point)

        return self._cache.get('affine', (self.scale, self.zero_point), rows)


@QUANTIZERS.register_module()
class LSQQuantizer(UniformQuantizer):
    """Uniform fake quantizer with a learnable step size (LSQ) and, when asymmetric,
    a learnable zero point (LSQ+), for QAT.

    ``scale`` (and ``zero_point``) are parameters, initialized by calibration with
    any :class:`UniformQuantizer` method (:meth:`calculate_qparams` writes them in
    place, so an optimizer built before keeps them); then trained. The
    forward and its gradients equal ``torch._fake_quantize_learnable_per_tensor_affine``
    (``..._per_channel_affine``): straight-through rounding; the zero point is
    rounded and clamped to the integer range in the forward and gets gradient only
    from clamped inputs; scale and zero-point gradients are multiplied by
    ``grad_factor``, by default LSQ's ``1 / sqrt(n * quant_max)`` with ``n`` the
    number of input elements per scale. Like torch.ao's ``_LearnableFakeQuantize``
    the scale is kept at or above the float32 eps.

    Args:
        grad_factor: Fixed gradient factor instead of LSQ's.
        Others: as :class:`UniformQuantizer`.
    """

    def __init__(self,
                 bits: int,
                 symmetric: bool = False,
                 per_channel: bool = False,
                 ch_axis: int = 0,
                 calib: str = 'minmax',
                 static: bool = False,
                 grad_factor: Optional[float] = None) -> None:
        super().__init__(bits, symmetric, per_channel, ch_axis, calib, static)
        if grad_factor is not None and not grad_factor > 0:
            raise ValueError(f'{self.display_name}: grad_factor must be positive or None, '
                             f'got {grad_factor!r}')
        self.grad_factor = grad_factor

    def _config_repr(self) -> str:
        factor = '' if self.grad_factor is None else f', grad_factor={self.grad_factor}'
        return super()._config_repr() + factor

    def _init_qparams(self) -> None:
        self.scale = nn.Parameter(torch.ones(1))
        if self.symmetric:
            self.register_buffer('zero_point', torch.zeros(1))
        else:
            self.zero_point = nn.Parameter(torch.zeros(1))

    def _integer_qparams(self) -> Tuple[Tensor, Tensor]:
        scale, zero_point = super()._integer_qparams()
        return scale.clamp(min=torch.finfo(torch.float32).eps), zero_point

    def _fake_quantize(self, x: Tensor) -> Tensor:
        self.scale.data.clamp_(min=torch.finfo(torch.float32).eps)
        factor = self.grad_factor
        if factor is None:
            per_scale = max(x.numel() // self.scale.numel(), 1)
            factor = 1.0 / math.sqrt(per_scale * self.quant_max)
        ch_axis = self.observer.channel_axis(x) if self.per_channel else None
        return fake_quantize(x, self.scale, self.zero_point, self.quant_min, self.quant_max,
                             ch_axis, factor)


@QUANTIZERS.register_module()
class LogSqrt2Quantizer(QuantizerBase):
    """Log-sqrt(2) fake quantizer for post-softmax attention (RepQ-ViT).

    Inputs in ``[0, top]`` go to the nearest (in log domain) of the levels
    ``top * 2^(-k/2)``, ``k = 0 .. 2^bits - 1``; values below
    ``top * 2^(-(2^bits - 1/2) / 2)`` become exactly 0, values above ``top``
    become ``top``. Straight-through gradient.

    Args:
        bits: Bit width, 2 to 8.
        calib: ``'fixed'``: ``top = 1``, calibration only checks the data
            (finite, not negative). ``'percentile_mse'`` (RepQ-ViT's search,
            widened): ``top`` is the candidate with the lowest quantization MSE
            on a histogram of the calibration data, among the observed maximum,
            its 99.9 / 99.99 / 99.999 % quantiles and a quarter-octave grid
            down to 1/256 of the maximum (the MSE of the probabilities is the
            expected error of ``softmax @ v`` for uncorrelated values). At low
            bits a fixed top of 1 zeroes most probabilities of a 49-token
            softmax (3 bits: below 0.074; 2 bits: below 0.30); a calibrated top
            moves the levels down to them.
    """

    kind = 'log_sqrt2'
    CALIB_METHODS = ('fixed', 'percentile_mse')

    def __init__(self, bits: int, calib: str = 'fixed') -> None:
        super().__init__(bits)
        if calib not in self.CALIB_METHODS:
            raise ValueError(f'{self.display_name}: calib must be one of '
                             f'{self.CALIB_METHODS}, got {calib!r}')
        self.calib = calib
        self.observer = HistogramObserver() if calib == 'percentile_mse' else None
        self._observed = False
        self.register_buffer('scale', torch.ones(1))
        # The tables live on the model's device (no host copy in the forward) as the
        # bits of float64 values: an integer buffer, so model.half() leaves it exact.
        for name, table in zip(('log_boundaries', 'log_levels'), log_sqrt2_tables(bits)):
            self.register_buffer(name, table.view(torch.int64), persistent=False)

    def _config_repr(self) -> str:
        return f', calib={self.calib!r}'

    def has_statistics(self) -> bool:
        return self._observed if self.observer is None else not self.observer.empty

    def _observe(self, x: Tensor) -> None:
        min_val = float(x.min())
        if min_val < 0:
            raise ValueError('inputs must lie in [0, 1] (post-softmax), got a minimum of '
                             f'{min_val}')
        self._observed = True
        if self.observer is not None:
            self.observer.observe(x)

    def _reset_statistics(self) -> None:
        self._observed = False
        if self.observer is not None:
            self.observer.reset()

    def _compute_qparams(self) -> Tuple[Tensor, Tensor]:
        """The range top (1 when ``'fixed'``) and no offset."""
        if self.observer is None:
            if not any_rank(self._observed, self.calibrated.device):
                raise self._no_statistics()
            top = torch.ones(1)
        else:
            stats = self.observer.reduced(self.calibrated.device)
            if stats.empty:
                raise self._no_statistics()
            top = self._search_top(stats)
        with torch.no_grad():
            self.scale.copy_(top.to(self.scale.device, self.scale.dtype))
        return self.scale, torch.zeros(1, dtype=torch.int32)

    def _search_top(self, stats: HistogramObserver) -> Tensor:
        quantiles = stats.quantiles(list(PERCENTILES))[:, 0]
        grid = stats.max_val.double() * 2.0**(-torch.arange(1, 33, dtype=torch.float64) / 4)
        candidates = torch.cat([stats.max_val.double(), quantiles, grid]).clamp(min=1e-12)
        boundaries, levels = (
            t.view(torch.float64).to(candidates.device)
            for t in (self.log_boundaries, self.log_levels))
        top = candidates.view(-1, 1, 1)
        errors = stats.step_mse(top * boundaries, top * levels.flip(0))[:, 0]
        return candidates[errors.argmin()].reshape(1).float()  # first minimum: max wins ties

    def _tables(self, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        """Boundaries and levels in ``dtype``."""

        def cast() -> Tuple[Tensor, Tensor]:
            return (self.log_boundaries.view(torch.float64).to(dtype),
                    self.log_levels.view(torch.float64).to(dtype))

        return self._cache.get('tables', (self.log_boundaries, ), cast, extra=(dtype, ))

    def _quantize(self, x: Tensor, top: Optional[Tensor]) -> Tensor:
        """``x`` quantized to the levels ``top * 2^(-k/2)`` (top 1 if None),
        straight-through."""
        return LogSqrt2.apply(x, *self._tables(x.dtype), top)

    def _fake_quantize(self, x: Tensor) -> Tensor:
        # top 1: no scaling on the default path
        return self._quantize(x, None if self.calib == 'fixed' else self.scale)
