"""Fake quantizers: uniform affine (PTQ), log-sqrt(2) (post-softmax) and LSQ (QAT).

All quantizers share :class:`QuantizerBase`: torch.ao-style observer / fake-quant
switches, a ``calibrated`` flag in the ``state_dict`` and a ``name`` for error
messages. The module-level helpers switch every quantizer of a model at once,
like torch.ao's ``enable_observer`` / ``enable_fake_quant`` helpers.
"""
import contextlib
import json
import math
from numbers import Integral
from types import MappingProxyType
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..registry import QUANTIZERS
from ..utils.tensor_cache import TensorCache
from .numerics import LogSqrt2, fake_quantize, fake_quantize_no_grad, log_sqrt2_tables
from .observers import HistogramObserver, MinMaxObserver, TensorObserver, any_rank

#: Bit widths a quantizer (and the backbone's w_bits / a_bits) accepts.
MIN_BITS, MAX_BITS = 2, 8
CALIB_METHODS = ('minmax', 'percentile_mse')
# RepQ-ViT's percentile candidates; (min, max) is always a candidate too.
PERCENTILES = (0.999, 0.9999, 0.99999)

#: Weights in the PTQ setting (RepQ-ViT W4): per output channel, asymmetric,
#: percentile/MSE range computed exactly on the weight.
DEFAULT_WEIGHT_QUANTIZER: Mapping[str, Any] = MappingProxyType(
    dict(type='UniformQuantizer', bits=4, per_channel=True, calib='percentile_mse',
         static=True))
#: Activations in the PTQ setting (RepQ-ViT A8): per tensor, asymmetric,
#: percentile/MSE range from a histogram of the calibration data.
DEFAULT_ACT_QUANTIZER: Mapping[str, Any] = MappingProxyType(
    dict(type='UniformQuantizer', bits=8, calib='percentile_mse'))

QuantizerCfg = Union[Mapping[str, Any], 'QuantizerBase']
#: ``state_dict`` key suffix of a module's extra state (``nn.Module.get_extra_state``).
EXTRA_STATE_KEY = '_extra_state'


class QuantizerBase(nn.Module):
    """State and switches common to all fake quantizers.

    The switches do what their names say and nothing else, as torch.ao's: with
    the observer on, every forward input is added to the statistics (across
    batches, until :meth:`reset_statistics`); with fake quant on the forward
    returns the input quantized with the current qparams (also while observing);
    with it off the forward is exactly the identity. Only
    :meth:`calculate_qparams` turns statistics into qparams. A new quantizer
    observes and does not quantize. The switches are not part of the
    ``state_dict``; the qparams, the ``calibrated`` flag and what the quantizer
    is (:meth:`settings`, as the module's extra state) are, and a checkpoint of
    a calibrated quantizer with other settings is refused when loaded.

    ``name`` is the module's qualified name in its model (see
    :func:`set_quantizer_names`); errors name the quantizer by it.
    """

    #: Names of the qparam tensors whose shape is only known after calibration.
    _qparam_names: Tuple[str, ...] = ()
    #: What the forward computes; quantizers of one kind can take each other's
    #: qparams (a PTQ UniformQuantizer checkpoint initializes an LSQQuantizer).
    kind = ''

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.name = ''
        self.bits = self._check_bits(bits)
        self.observer_enabled = True
        self.fake_quant_enabled = False
        self._is_calibrated = False
        self.register_buffer('calibrated', torch.tensor(False))
        self._cache = TensorCache()

    @property
    def display_name(self) -> str:
        """Class and module name, used in messages."""
        cls = type(self).__name__
        return f"{cls} '{self.name}'" if self.name else cls

    @property
    def is_calibrated(self) -> bool:
        """Whether qparams have been computed or loaded."""
        return self._is_calibrated

    def settings(self) -> Dict[str, Any]:
        """What the quantizer is: kind and bits, plus the granularity of its
        subclass. Saved with its state; a loaded calibrated state must match."""
        return dict(kind=self.kind, bits=self.bits)

    def forward(self, x: Tensor) -> Tensor:
        if self.observer_enabled and x.numel() > 0:
            self._check_finite(x)
            with torch.no_grad():
                try:
                    self._observe(x.detach())
                except ValueError as e:
                    raise ValueError(f'{self.display_name}: {e}') from None
        if not self.fake_quant_enabled:
            return x
        if not self._is_calibrated and x.numel() > 0:
            raise RuntimeError(
                f'{self.display_name}: fake quantization is on but the quantizer is not '
                'calibrated; call enable_calibration(model), run forward passes on '
                'calibration data, then calculate_qparams(model), or load a '
                'calibrated checkpoint')
        return self._fake_quantize(x)

    def enable_observer(self, enabled: bool = True) -> None:
        """Collect statistics in forward (``enabled=False``: stop collecting)."""
        self.observer_enabled = enabled

    def disable_observer(self) -> None:
        """Stop collecting statistics; the qparams stay as they are."""
        self.enable_observer(False)

    def enable_fake_quant(self, enabled: bool = True) -> None:
        """Quantize the forward output (``enabled=False``: identity)."""
        self.fake_quant_enabled = enabled

    def disable_fake_quant(self) -> None:
        """Make the forward the identity."""
        self.enable_fake_quant(False)

    def has_statistics(self) -> bool:
        """Whether this rank observed any data since the last reset."""
        raise NotImplementedError

    def calculate_qparams(self) -> Tuple[Tensor, Tensor]:
        """Compute, store and return ``(scale, zero_point)`` from all ranks' statistics.

        A collective under distributed. Raises if no rank observed any data.
        """
        try:
            qparams = self._compute_qparams()
        except ValueError as e:
            raise ValueError(f'{self.display_name}: {e}') from None
        self.calibrated.fill_(True)
        self._is_calibrated = True
        return qparams

    def reset_statistics(self) -> None:
        """Forget the observed statistics (the qparams stay)."""
        self._reset_statistics()

    def extra_repr(self) -> str:
        return (f'bits={self.bits}{self._config_repr()}, observer={self.observer_enabled}, '
                f'fake_quant={self.fake_quant_enabled}, calibrated={self._is_calibrated}')

    def _config_repr(self) -> str:
        return ''

    def _observe(self, x: Tensor) -> None:
        raise NotImplementedError

    def _reset_statistics(self) -> None:
        raise NotImplementedError

    def _compute_qparams(self) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _fake_quantize(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _no_statistics(self) -> RuntimeError:
        return RuntimeError(
            f'{self.display_name}: no calibration statistics were observed (empty '
            'calibration set, or the quantizer is never reached); run forward passes '
            'with the observer enabled (enable_calibration(model)) first')

    def _check_bits(self, bits: Any) -> int:
        if isinstance(bits, bool) or not isinstance(bits, Integral):
            raise TypeError(f'{self.display_name}: bits must be an int in '
                            f'[{MIN_BITS}, {MAX_BITS}], got {bits!r} '
                            f'({type(bits).__name__})')
        if not MIN_BITS <= bits <= MAX_BITS:
            raise ValueError(f'{self.display_name}: bits must be an int in '
                             f'[{MIN_BITS}, {MAX_BITS}], got {bits!r}')
        return int(bits)

    def _check_finite(self, x: Tensor) -> None:
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = x[~finite]
            raise ValueError(f'{self.display_name}: calibration data has {bad.numel()} '
                             f'non-finite value(s) out of {x.numel()} (first: '
                             f'{bad[0].item()}); quantization ranges need finite inputs')

    def get_extra_state(self) -> Tensor:
        """:meth:`settings` as JSON in a uint8 tensor: a ``state_dict`` of tensors
        only, which mmengine broadcasts entry by entry when a distributed run
        starts."""
        return encode_settings(self.settings())

    def set_extra_state(self, state: Any) -> None:
        """Checked in :meth:`_load_from_state_dict`, where the key is known."""

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str,
                              local_metadata: dict, strict: bool, missing_keys: List[str],
                              unexpected_keys: List[str], error_msgs: List[str]) -> None:
        flag = state_dict.get(prefix + 'calibrated')
        saved_calibrated = flag is not None and bool(flag)
        saved = decode_settings(state_dict.get(prefix + EXTRA_STATE_KEY))
        if saved_calibrated:
            self._check_saved_settings(saved, prefix[:-1])
        elif saved is not None and saved != self.settings():
            # An uncalibrated quantizer of another setting carries nothing (e.g. the
            # unused low branch of a uniform model): keep this one's fresh state.
            return
        # Per-channel qparams of a calibrated checkpoint may not match the shape of
        # a freshly built quantizer: take the checkpoint's shape, unless the
        # owning layer fixed it (then the checkpoint has another layout).
        for name in self._qparam_names:
            value, current = state_dict.get(prefix + name), getattr(self, name)
            if isinstance(value, Tensor) and value.shape != current.shape:
                fixed = getattr(self, 'num_channels', None)
                if fixed is not None:
                    raise ValueError(
                        f"{type(self).__name__} '{self.name or prefix[:-1]}': the "
                        f'checkpoint has {tuple(value.shape)} {name} values, the model\'s '
                        f'layer has {fixed} channels')
                current.data = current.data.new_empty(value.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
        if flag is not None:
            self._is_calibrated = saved_calibrated

    def _check_saved_settings(self, saved: Any, key: str) -> None:
        """Refuse calibrated qparams of a quantizer that is not this one."""
        where = f"{type(self).__name__} '{key}'"
        if not isinstance(saved, Mapping):
            raise ValueError(
                f'{where}: the checkpoint holds calibrated qparams but not the settings '
                'they were calibrated for (a checkpoint written before quantizer settings '
                'were recorded); recalibrate from the FP checkpoint')
        mine = self.settings()
        if dict(saved) != mine:
            diff = ', '.join(f'{k}={saved.get(k)!r} (model: {mine.get(k)!r})'
                             for k in sorted(set(saved) | set(mine))
                             if saved.get(k) != mine.get(k))
            raise ValueError(
                f'{where}: the checkpoint was calibrated for {_format(saved)}, this model '
                f'has {_format(mine)} ({diff}); evaluate the checkpoint with the config '
                'it was calibrated with, or recalibrate from the FP checkpoint')


def encode_settings(settings: Mapping[str, Any]) -> Tensor:
    """Quantizer settings as a uint8 tensor of their JSON text."""
    text = json.dumps(dict(settings))
    return torch.tensor(list(text.encode()), dtype=torch.uint8)


def decode_settings(saved: Any) -> Any:
    """Settings saved by :func:`encode_settings` (or as a dict, by the first
    releases that recorded them); anything else is returned as it is."""
    if isinstance(saved, Tensor) and saved.dtype == torch.uint8 and saved.dim() == 1:
        return json.loads(bytes(saved.tolist()).decode())
    return saved


def _format(settings: Mapping[str, Any]) -> str:
    return ', '.join(f'{k}={v!r}' for k, v in settings.items())


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

    def __init__(self, bits: int, symmetric: bool = False, per_channel: bool = False,
                 ch_axis: int = 0, calib: str = 'minmax', static: bool = False) -> None:
        super().__init__(bits)
        if calib not in CALIB_METHODS:
            raise ValueError(f'{self.display_name}: calib must be one of {CALIB_METHODS}, '
                             f'got {calib!r}')
        if isinstance(ch_axis, bool) or not isinstance(ch_axis, int):
            raise TypeError(f'{self.display_name}: ch_axis must be an int, got {ch_axis!r}')
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
        return dict(super().settings(), symmetric=self.symmetric,
                    per_channel=self.per_channel,
                    ch_axis=self.ch_axis if self.per_channel else None)

    def has_statistics(self) -> bool:
        return not self.observer.empty

    def _config_repr(self) -> str:
        axis = f', ch_axis={self.ch_axis}' if self.per_channel else ''
        static = ', static=True' if self.static else ''
        return (f', symmetric={self.symmetric}, per_channel={self.per_channel}{axis}, '
                f'calib={self.calib!r}{static}')

    def _make_observer(self) -> MinMaxObserver:
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
        if self._is_calibrated and self.scale.numel() != num_channels:
            raise ValueError(f'{self.display_name}: calibrated for {self.scale.numel()} '
                             f'channels, cannot take {num_channels}')
        self.num_channels = int(num_channels)
        for name in self._qparam_names:
            tensor = getattr(self, name)
            if tensor.shape != (num_channels, ):
                tensor.data = tensor.data.new_full((num_channels, ), float(tensor.detach().flatten()[0]))

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
        scale = torch.clamp((max_pos - min_neg) / float(self.quant_max - self.quant_min),
                            min=eps)
        zero_point = self.quant_min - torch.round(min_neg / scale).to(torch.int32)
        return scale, torch.clamp(zero_point, self.quant_min, self.quant_max)

    def _search_percentile_mse(self, stats: MinMaxObserver) -> Tuple[Tensor, Tensor]:
        k = len(PERCENTILES)
        q = stats.quantiles([1.0 - p for p in PERCENTILES] + list(PERCENTILES)).float()
        lows = torch.cat([stats.min_val.unsqueeze(0), q[:k]])
        highs = torch.cat([stats.max_val.unsqueeze(0), q[k:]])
        scales, zero_points = self._range_to_qparams(lows, highs)
        mse = stats.quantization_mse(scales, zero_points, self.quant_min, self.quant_max)
        best = mse.argmin(0, keepdim=True)  # first minimum: (min, max) wins ties
        return scales.gather(0, best)[0], zero_points.gather(0, best)[0]

    def _fake_quantize(self, x: Tensor) -> Tensor:
        axis = self.observer.channel_axis(x) if self.per_channel else None
        if torch.is_grad_enabled() and (x.requires_grad or self.scale.requires_grad):
            if axis is not None:
                return torch.fake_quantize_per_channel_affine(
                    x, self.scale, self.zero_point, axis, self.quant_min, self.quant_max)
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point,
                                                         self.quant_min, self.quant_max)
        params = self._cache.get('affine', (self.scale, self.zero_point),
                                 lambda: self._affine_params(x.dim(), axis),
                                 extra=(x.dim(), axis))
        return fake_quantize_no_grad(x, *params)

    def _affine_params(self, dim: int, axis: Optional[int]) -> Tuple[Tensor, ...]:
        """``(1 / scale, scale, quant_min - zero_point, quant_max - zero_point)``
        shaped to broadcast against a ``dim``-dimensional input."""
        shape = [1] * dim
        if axis is not None:
            shape[axis] = -1
        scale = self.scale.detach().reshape(shape)
        zero_point = self.zero_point.detach().reshape(shape).to(scale.dtype)
        return (torch.reciprocal(scale), scale, self.quant_min - zero_point,
                self.quant_max - zero_point)


@QUANTIZERS.register_module()
class LSQQuantizer(UniformQuantizer):
    """Uniform fake quantizer with a learnable step size (LSQ) and, when asymmetric,
    a learnable zero point (LSQ+), for QAT.

    ``scale`` (and ``zero_point``) are parameters, initialized by calibration with
    any :class:`UniformQuantizer` method: turning the observer off sets them. The
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

    def __init__(self, bits: int, symmetric: bool = False, per_channel: bool = False,
                 ch_axis: int = 0, calib: str = 'minmax', static: bool = False,
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
            expected error of ``softmax @ v`` for uncorrelated values). At low bits a fixed top of 1 zeroes most
            probabilities of a 49-token softmax (3 bits: below 0.074; 2 bits:
            below 0.30); a calibrated top moves the levels down to them.
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
        midpoints, counts = (t[0] for t in stats.bin_midpoints())
        errors = torch.stack([
            (counts * (self._quantize(midpoints, top) - midpoints)**2).sum()
            for top in candidates
        ])
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
        if top is None:
            return LogSqrt2.apply(x, *self._tables(x.dtype))
        return LogSqrt2.apply(x / top, *self._tables(x.dtype)) * top

    def _fake_quantize(self, x: Tensor) -> Tensor:
        # top 1: no scaling on the default path
        return self._quantize(x, None if self.calib == 'fixed' else self.scale)


def build_quantizer(cfg: QuantizerCfg,
                    default_args: Optional[Mapping[str, Any]] = None) -> QuantizerBase:
    """Build a quantizer from a config (``type`` plus arguments) or return a built one.

    ``default_args`` fill the arguments that ``cfg`` does not set (as in mmengine).
    """
    if isinstance(cfg, QuantizerBase):
        return cfg
    if not isinstance(cfg, Mapping) or 'type' not in cfg:
        raise TypeError('a quantizer must be a QuantizerBase or a config dict with a '
                        f"'type' key, got {cfg!r}")
    args = dict(default_args or {})
    args.update(cfg)
    args.pop('_scope_', None)
    qtype = args.pop('type')
    cls = qtype
    if isinstance(qtype, str):
        try:
            cls = QUANTIZERS.get(qtype)
        except RuntimeError:
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, QuantizerBase)):
        raise KeyError(f'unknown quantizer type {qtype!r}; registered types: '
                       f'{", ".join(sorted(QUANTIZERS.module_dict))}')
    return cls(**args)


def quantizers_of(model: nn.Module) -> List[QuantizerBase]:
    """The quantizers of ``model`` in module order (each shared one once)."""
    return [m for m in model.modules() if isinstance(m, QuantizerBase)]


def set_quantizer_names(model: nn.Module) -> None:
    """Give every quantizer its qualified module name, for error messages."""
    for name, module in model.named_modules():
        if isinstance(module, QuantizerBase):
            module.name = name


def enable_calibration(model: nn.Module) -> None:
    """Start a calibration: statistics reset, observers on, fake quant off.

    Forwards then compute the float model and collect statistics, across
    batches, until :func:`calculate_qparams`.
    """
    set_quantizer_names(model)
    for quantizer in quantizers_of(model):
        quantizer.reset_statistics()
        quantizer.enable_observer()
        quantizer.disable_fake_quant()


def reset_statistics(model: nn.Module) -> None:
    """Forget every quantizer's statistics (qparams stay)."""
    for quantizer in quantizers_of(model):
        quantizer.reset_statistics()


def calculate_qparams(model: nn.Module, strict: bool = True) -> List[str]:
    """Observers off; qparams computed from the statistics of every quantizer
    that observed data on some rank. The one call that computes qparams.

    Quantizers that observed nothing keep their qparams (e.g. loaded ones). An
    empty calibration must not silently leave a float model: with ``strict``
    any quantizer with neither statistics nor qparams raises, naming it. With
    ``strict=False`` such quantizers are allowed when part of the model saw no
    data by design (e.g. the low-bit branch of a block whose low-bit ratio was
    0 during calibration): they stay uncalibrated, so they raise if ever reached
    with fake quant on; if no quantizer at all is calibrated it still raises.
    A collective under distributed: call it on every rank.

    Returns:
        The names of the quantizers left uncalibrated (empty when ``strict``).
    """
    set_quantizer_names(model)
    quantizers = quantizers_of(model)
    for quantizer in quantizers:
        quantizer.disable_observer()
        device = quantizer.calibrated.device
        if any_rank(quantizer.has_statistics(), device):
            quantizer.calculate_qparams()
    missing = [q.display_name for q in quantizers if not q.is_calibrated]
    if missing and (strict or len(missing) == len(quantizers)):
        shown = ', '.join(missing[:5]) + (f' and {len(missing) - 5} more' if len(missing) > 5
                                          else '')
        raise RuntimeError(f'{len(missing)} quantizer(s) have no calibration statistics: '
                           f'{shown}; run forward passes on calibration data after '
                           'enable_calibration(model)')
    return missing


def finish_calibration(model: nn.Module, strict: bool = True) -> List[str]:
    """End a calibration: :func:`calculate_qparams`, then :func:`enable_fake_quant`.

    Returns:
        The names of the quantizers left uncalibrated (see :func:`calculate_qparams`).
    """
    missing = calculate_qparams(model, strict)
    enable_fake_quant(model)
    return missing


def enable_fake_quant(model: nn.Module) -> None:
    """Fake quant on and observers off, computing nothing: the state of a model
    built for quantized inference. Its uncalibrated quantizers raise when reached
    until the model is calibrated or a calibrated checkpoint is loaded."""
    set_quantizer_names(model)
    for quantizer in quantizers_of(model):
        quantizer.disable_observer()
        quantizer.enable_fake_quant()


def disable_quantization(model: nn.Module) -> None:
    """Observers and fake quant off: the model computes its float function exactly."""
    for quantizer in quantizers_of(model):
        quantizer.disable_observer()
        quantizer.disable_fake_quant()


@contextlib.contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in float (:func:`disable_quantization`) inside the block, each
    quantizer's fake-quant and observer switches as they were after it."""
    quantizers = quantizers_of(model)
    states = [(q.fake_quant_enabled, q.observer_enabled) for q in quantizers]
    disable_quantization(model)
    try:
        yield model
    finally:
        for quantizer, (fake_quant, observer) in zip(quantizers, states):
            quantizer.enable_fake_quant(fake_quant)
            quantizer.enable_observer(observer)
