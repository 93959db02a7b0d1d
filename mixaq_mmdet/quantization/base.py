"""QuantizerBase: the state, switches and serialization every fake quantizer shares.

Kept apart from the concrete quantizers (:mod:`.quantizers`) as torchao keeps
its base classes apart: this module knows what a quantizer saves, loads and
refuses, and nothing of how it computes its qparams.
"""
import json
from numbers import Integral
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from ..utils.tensor_cache import TensorCache
from .codes import Codes, IntegerGrid, quantize_codes

#: Bit widths a quantizer (and the backbone's w_bits / a_bits) accepts.
MIN_BITS, MAX_BITS = 2, 8
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
    ``state_dict``; the qparams, the ``calibrated`` buffer and what the quantizer
    is (:meth:`settings`, as the module's extra state) are, and a checkpoint of
    a calibrated quantizer with other settings is refused when loaded.

    ``name`` is the module's qualified name in its model (see
    :func:`~mixaq_mmdet.quantization.set_quantizer_names`); errors name the
    quantizer by it.
    """

    #: Names of the qparam tensors whose shape is only known after calibration.
    _qparam_names: Tuple[str, ...] = ()
    #: What the forward computes; quantizers of one kind can take each other's
    #: qparams (a PTQ UniformQuantizer checkpoint initializes an LSQQuantizer).
    kind = ''
    #: Whether :meth:`_fake_quantize` computes correctly on a float32 copy of its
    #: input with autocast off, which is how it runs under autocast (AMP). One
    #: that cannot sets False and is refused under autocast, naming it.
    supports_autocast = True
    #: Whether values are rounded on a uniform integer grid that
    #: :meth:`grid_position` and :meth:`integer_code` report.
    has_integer_grid = False

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.name = ''
        self.bits = self._check_bits(bits)
        self.observer_enabled = True
        self.fake_quant_enabled = False
        self.register_buffer('calibrated', torch.tensor(False))
        self._calibrated_host = False
        self._cache = TensorCache()
        # the last integer grid computed in eager, what a compiled forward reads
        self._integer_grid: Optional[IntegerGrid] = None
        #: Where the values this quantizer quantizes outside its forward are
        #: appended (integer codes, dequantized; fused kernels' outputs), for
        #: analysis; None: not recorded.
        self.code_record: Optional[List[Tensor]] = None

    @property
    def display_name(self) -> str:
        """Class and module name, used in messages."""
        cls = type(self).__name__
        return f"{cls} '{self.name}'" if self.name else cls

    @property
    def is_calibrated(self) -> bool:
        """Whether qparams have been computed or loaded: the ``calibrated`` buffer.

        The buffer is the one record (it is what checkpoints hold). It is read
        through a host copy, so that a forward on GPU does not wait for the
        device (``bool(buffer)`` would, in every forward) and ``torch.compile``
        sees a constant. Both are written by :meth:`_set_calibrated` only, called
        where the flag changes: :meth:`calculate_qparams` and loading a
        ``state_dict`` (with the value read from the checkpoint on the host).
        """
        return self._calibrated_host

    def _set_calibrated(self, value: bool) -> None:
        """Write the ``calibrated`` buffer and its host copy together."""
        self.calibrated.fill_(value)
        self._calibrated_host = value

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
        if not self.is_calibrated and x.numel() > 0:
            raise RuntimeError(
                f'{self.display_name}: fake quantization is on but the quantizer is not '
                'calibrated; call enable_calibration(model), run forward passes on '
                'calibration data, then calculate_qparams(model), or load a '
                'calibrated checkpoint')
        if autocast_enabled(x.device.type):
            return self._fake_quantize_in_float32(x)
        return self._fake_quantize(x)

    def _fake_quantize_in_float32(self, x: Tensor) -> Tensor:
        """Fake quantization inside autocast: in float32 (qparams, rounding and
        gradients as without AMP), the result in the input's dtype."""
        if not self.supports_autocast:
            raise RuntimeError(
                f'{self.display_name} cannot compute under autocast (mixed precision); '
                "train without AMP (optim_wrapper.type='OptimWrapper') or use a quantizer "
                'that supports it')
        with torch.autocast(x.device.type, enabled=False):
            return self._fake_quantize(x.float()).to(x.dtype)

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
        self._set_calibrated(True)
        return qparams

    def reset_statistics(self) -> None:
        """Forget the observed statistics (the qparams stay)."""
        self._reset_statistics()

    def extra_repr(self) -> str:
        return (f'bits={self.bits}{self._config_repr()}, observer={self.observer_enabled}, '
                f'fake_quant={self.fake_quant_enabled}, calibrated={self.is_calibrated}')

    def _config_repr(self) -> str:
        return ''

    def grid_position(self, x: Tensor) -> Tensor:
        """``x`` in units of the quantizer's integer grid (rounding gives the
        integer code; half way between two integers is a rounding boundary),
        for the analysis of quantized weights (oscillation, CGA). Uniform
        grids only."""
        raise NotImplementedError(f'{self.display_name} has no uniform integer grid')

    def integer_code(self, x: Tensor) -> Tensor:
        """The integer each value of ``x`` is quantized to (see
        :meth:`grid_position`)."""
        raise NotImplementedError(f'{self.display_name} has no uniform integer grid')

    @property
    def code_range(self) -> Tuple[int, int]:
        """The smallest and largest integer code (see :meth:`grid_position`)."""
        raise NotImplementedError(f'{self.display_name} has no uniform integer grid')

    def integer_grid(self) -> IntegerGrid:
        """The per-tensor grid of this activation quantizer's codes, for integer
        execution (:mod:`~mixaq_mmdet.quantization.integer`)."""
        self.check_integer_grid()
        raise NotImplementedError

    def integer_codes(self, x: Tensor) -> Codes:
        """``x`` as this quantizer's uint8 codes (the integers its fake
        quantization stands for), for the integer kernels."""
        return self.record_codes(quantize_codes(x, self.integer_grid()))

    def record_codes(self, codes: Codes) -> Codes:
        """``codes``, appended (dequantized) to :attr:`code_record` if set."""
        if self.code_record is not None:
            self.code_record.append(codes.dequantize())
        return codes

    def record_values(self, values: Tensor) -> Tensor:
        """``values`` this quantizer's fake quantization computed outside its
        forward (a fused kernel), appended to :attr:`code_record` if set."""
        if self.code_record is not None:
            self.code_record.append(values.detach().clone())
        return values

    def check_integer_grid(self) -> None:
        """Raise unless this quantizer's activation codes can feed the integer
        kernels (a uniform grid per tensor, at most 256 levels); calibration
        is not needed to know."""
        raise ValueError(f'{self.display_name} ({self.kind}) has no uniform integer codes: '
                         'integer execution needs a uniform quantizer (UniformQuantizer, '
                         'LSQQuantizer) at this position')

    def integer_weight(self, w: Tensor) -> Tuple[Tensor, Tensor]:
        """``(values, step)``: the int32 integers of the quantized weight ``w``
        and the float32 step of each output channel (dim 0), ``fake quant(w) ==
        step * values``, for integer execution."""
        raise ValueError(f'{self.display_name} ({self.kind}) has no integer weight codes: '
                         'integer execution needs a uniform or StatsQ weight quantizer')

    def _check_integer_ready(self) -> None:
        """Integer codes exist only for calibrated qparams."""
        if not self.is_calibrated:
            raise RuntimeError(f'{self.display_name} is not calibrated: integer execution '
                               'needs the qparams of a calibrated model (PTQ calibration, or a '
                               'calibrated or QAT checkpoint)')

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
        # NaN and inf reach the extremes: one reduction, no mask the size of x
        if x.numel() == 0 or bool(torch.isfinite(torch.stack(torch.aminmax(x))).all()):
            return
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
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if flag is not None:
            self._set_calibrated(saved_calibrated)

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
                             for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k))
            raise ValueError(
                f'{where}: the checkpoint was calibrated for {_format(saved)}, this model '
                f'has {_format(mine)} ({diff}); evaluate the checkpoint with the config '
                'it was calibrated with, or recalibrate from the FP checkpoint')


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (never for a type without
    autocast, such as ``meta``)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


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
