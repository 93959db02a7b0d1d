"""Calibration statistics kept across batches, and their reduction over ranks.

Observers are plain objects, not modules: their statistics are neither saved in a
``state_dict`` nor broadcast by ``DistributedDataParallel`` (which copies rank 0's
module buffers to every rank at each forward and would erase the other ranks'
data). Each rank accumulates its own statistics; :meth:`MinMaxObserver.reduced`
merges them over ranks once, when a quantizer computes its qparams.

Statistics are per tensor (one "channel") or per channel along ``ch_axis``; every
statistic has a leading channel dimension ``C`` (``C = 1`` per tensor).
:class:`Observer` and :class:`RangeStatistics` name what the quantizers use.
"""
import copy
from typing import List, Optional, Protocol, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

# Histogram exponent of a channel that has seen only zeros: below the exponent of
# any nonzero float32, so the first nonzero data always widens the range.
_ZERO_EXPONENT = -160
# Lowest histogram bottom exponent whose bins the float32 bit fields give
# (zeros and subnormals lie below it).
_MIN_BIT_FIELD_BOTTOM = -125
# Most dimensions of a static tensor (a weight) that ranks exchange.
_MAX_DIMS = 8


def is_distributed() -> bool:
    """Whether a default process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on at least one rank (a collective when distributed)."""
    if not is_distributed():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def pow2_exact(exponent: Tensor) -> Tensor:
    """Exact ``2.0 ** exponent`` in float64 for integer exponents in [-1022, 1023]."""
    return ((exponent.long() + 1023) << 52).view(torch.float64)


class Observer(Protocol):
    """What a quantizer uses of its observer: statistics kept across batches,
    merged over ranks by :meth:`reduced`, and the exact range seen
    (``(C,)`` float32 each, None while :attr:`empty`)."""

    min_val: Optional[Tensor]
    max_val: Optional[Tensor]

    @property
    def empty(self) -> bool:
        """Whether no data has been observed."""

    def observe(self, x: Tensor) -> None:
        """Add a batch to the statistics."""

    def reset(self) -> None:
        """Forget all statistics."""

    def reduced(self, device: torch.device) -> 'Observer':
        """The statistics of all ranks merged (a collective when distributed)."""

    def channel_axis(self, x: Tensor) -> int:
        """``ch_axis`` as a non-negative dimension of ``x``."""


class RangeStatistics(Observer, Protocol):
    """Statistics a percentile/MSE range search reads (:class:`HistogramObserver`,
    :class:`TensorObserver`)."""

    def reduced(self, device: torch.device) -> 'RangeStatistics':
        """The statistics of all ranks merged (a collective when distributed)."""

    def quantiles(self, qs: Sequence[float]) -> Tensor:
        """Quantiles ``qs`` of each channel, shape ``(len(qs), C)``, float64."""

    def step_mse(self, boundaries: Tensor, levels: Tensor) -> Tensor:
        """Mean squared error of each channel's data under each of ``K`` candidate
        step functions; returns ``(K, C)``, float64.

        A candidate maps ``x`` to ``levels[..., i]`` for ``boundaries[..., i - 1] <
        x <= boundaries[..., i]`` (ascending ``boundaries`` of shape ``(K, C, M)``,
        ``levels`` of shape ``(K, C, M + 1)``): any round-to-nearest quantizer with
        clamping, on a uniform grid (:func:`~.numerics.uniform_step_function`)
        or not (log-sqrt(2)).
        """


def _step_antiderivative(t: Tensor, boundaries: Tensor, levels: Tensor) -> Tuple[Tensor, Tensor]:
    """``G(t) = integral of (q(x) - x) ** 2`` from ``boundaries[..., 0]`` to ``t``
    for the step function ``q`` of :meth:`RangeStatistics.step_mse`, at every
    ``t`` (``(K, C, B)``), and ``q(t)``; float64."""
    seg = torch.searchsorted(boundaries, t)
    starts = torch.cat([boundaries[..., :1], boundaries], -1)
    ends = torch.cat([boundaries, boundaries[..., -1:]], -1)
    # G at the start of each segment: the exact integrals of the segments below.
    pieces = ((ends - levels)**3 - (starts - levels)**3) / 3
    at_start = torch.cat([torch.zeros_like(pieces[..., :1]), pieces[..., :-1].cumsum(-1)], -1)
    level = levels.gather(-1, seg)
    start = starts.gather(-1, seg)
    return at_start.gather(-1, seg) + ((t - level)**3 - (start - level)**3) / 3, level


class MinMaxObserver:
    """Running minimum and maximum, per tensor or per channel along ``ch_axis``.

    Memory: two float32 vectors of ``C`` values. An empty tensor (e.g. a window
    group that received no windows) is ignored.
    """

    def __init__(self, per_channel: bool = False, ch_axis: int = 0) -> None:
        self.per_channel = per_channel
        self.ch_axis = ch_axis
        self.min_val: Optional[Tensor] = None
        self.max_val: Optional[Tensor] = None

    @property
    def empty(self) -> bool:
        """Whether no data has been observed."""
        return self.min_val is None

    @property
    def num_channels(self) -> int:
        """``C``, or 0 before any data."""
        return 0 if self.min_val is None else self.min_val.numel()

    def reset(self) -> None:
        """Forget all statistics."""
        self.min_val = None
        self.max_val = None

    def observe(self, x: Tensor) -> None:
        """Add a batch to the statistics."""
        if x.numel() == 0:
            return
        self._update_minmax(*self._batch_minmax(x))

    def reduced(self, device: torch.device) -> 'MinMaxObserver':
        """The statistics of all ranks merged; ``self`` when not distributed.

        A collective: every rank must call it. Ranks without data take part.
        """
        if not is_distributed():
            return self
        out = self._new_empty()
        num_channels = self._reduce_num_channels(device)
        if num_channels == 0:
            return out
        inf = torch.full((num_channels, ), float('inf'), device=device)
        min_val = inf.clone() if self.empty else self.min_val.to(device).clone()
        max_val = -inf if self.empty else self.max_val.to(device).clone()
        dist.all_reduce(min_val, op=dist.ReduceOp.MIN)
        dist.all_reduce(max_val, op=dist.ReduceOp.MAX)
        out.min_val, out.max_val = min_val, max_val
        return out

    def channel_axis(self, x: Tensor) -> int:
        """``ch_axis`` as a non-negative dimension of ``x``."""
        if not -x.dim() <= self.ch_axis < x.dim():
            raise ValueError(f'ch_axis={self.ch_axis} is out of range for an input of '
                             f'shape {tuple(x.shape)}')
        return self.ch_axis % x.dim()

    def channel_shape(self, x: Tensor) -> List[int]:
        """Shape that broadcasts a per-channel vector against ``x``."""
        shape = [1] * x.dim()
        if self.per_channel:
            shape[self.channel_axis(x)] = -1
        return shape

    def _batch_minmax(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if not self.per_channel:
            return x.min().reshape(1).float(), x.max().reshape(1).float()
        axis = self.channel_axis(x)
        dims = [d for d in range(x.dim()) if d != axis]
        if dims:
            min_val, max_val = torch.amin(x, dim=dims).float(), torch.amax(x, dim=dims).float()
        else:
            min_val, max_val = x.float().clone(), x.float().clone()
        if self.min_val is not None and min_val.shape != self.min_val.shape:
            raise ValueError(f'observed {self.num_channels} channels before, got '
                             f'{min_val.numel()} (input shape {tuple(x.shape)}, '
                             f'ch_axis={self.ch_axis})')
        return min_val, max_val

    def _update_minmax(self, min_val: Tensor, max_val: Tensor) -> None:
        if self.min_val is None:
            self.min_val, self.max_val = min_val, max_val
        else:
            self.min_val = torch.minimum(self.min_val, min_val)
            self.max_val = torch.maximum(self.max_val, max_val)

    def _new_empty(self) -> 'MinMaxObserver':
        out = copy.copy(self)
        out.reset()
        return out

    def _reduce_num_channels(self, device: torch.device) -> int:
        """``C`` agreed over ranks (0 if no rank has data); ranks with data must agree."""
        c = self.num_channels
        t = torch.tensor([c, -c if c else -(1 << 62)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        largest, smallest = int(t[0]), -int(t[1])
        if largest and largest != smallest:
            raise ValueError(f'ranks observed different channel counts ({smallest} and '
                             f'{largest})')
        return largest


class HistogramObserver(MinMaxObserver):
    """Exact running min/max plus a log-scale histogram of each channel, for
    percentile search.

    Bins follow the floating-point format: a value's sign, its octave below the
    channel's top ``R_c = 2 ** exponent[c]`` (the smallest power of two above
    ``max |x|``) and the leading ``mantissa_bits`` bits of its mantissa. So every
    bin is at most ``2 ** -mantissa_bits`` (3 % by default) of its magnitude wide,
    from ``R_c`` down to ``R_c * 2 ** -octaves``; smaller magnitudes, zero
    included, share one bin per sign. Relative resolution suits heavy-tailed
    activations, whose bulk lies orders of magnitude below their maximum.

    The bins of a value are computed exactly (bit fields of the float), and when
    a batch raises ``R_c`` the counts shift by whole octaves, merging the lowest
    into the near-zero bins, which is exact too. Hence the histogram of a data
    set does not depend on how it is split into batches or over ranks: the
    distributed reduction (max of exponents, shift, sum of counts) gives exactly
    the single-process histogram of the union.

    Memory: ``C * (2 * octaves * 2 ** mantissa_bits + 2)`` int64 counts (16 KiB
    per channel by default; 12 MiB for 768 channels) plus three vectors of
    ``C``, independent of the input size and of the number of batches. Observing
    a batch allocates temporaries of about 16 bytes per input element.

    Percentiles and quantization errors assume the values of a bin are spread
    uniformly over it; bins are clipped to the exact minimum and maximum.
    """

    def __init__(self,
                 per_channel: bool = False,
                 ch_axis: int = 0,
                 octaves: int = 32,
                 mantissa_bits: int = 5) -> None:
        super().__init__(per_channel, ch_axis)
        for name, value, low, high in (('octaves', octaves, 1, 64), ('mantissa_bits', mantissa_bits,
                                                                     0, 10)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f'{name} must be an int in [{low}, {high}], got {value!r}')
        self.octaves = octaves
        self.mantissa_bits = mantissa_bits
        self.hist: Optional[Tensor] = None
        self.exponent: Optional[Tensor] = None

    @property
    def num_bins(self) -> int:
        """Bins per channel: magnitude bins and one near-zero bin, for each sign."""
        return 2 * self._half

    @property
    def _half(self) -> int:
        return self.octaves * 2**self.mantissa_bits + 1

    def reset(self) -> None:
        super().reset()
        self.hist = None
        self.exponent = None

    def observe(self, x: Tensor) -> None:
        if x.numel() == 0:
            return
        # the bins are float32's exponents and mantissas (_count): a float64
        # value that is 0 in float32 must also be 0 where zeros are binned
        x = x.float()
        min_val, max_val = self._batch_minmax(x)
        amax = torch.maximum(min_val.abs(), max_val.abs())
        exponent = torch.where(amax > 0,
                               torch.frexp(amax.double()).exponent.long(),
                               torch.full_like(amax, _ZERO_EXPONENT, dtype=torch.long))
        if self.hist is None:
            self.hist = torch.zeros(amax.numel(), self.num_bins, dtype=torch.long, device=x.device)
            self.exponent = exponent
        else:
            grown = torch.maximum(self.exponent, exponent)
            self.hist = self._shifted(self.hist, grown - self.exponent)
            self.exponent = grown
        self.hist += self._count(x)
        self._update_minmax(min_val, max_val)

    def reduced(self, device: torch.device) -> 'HistogramObserver':
        if not is_distributed():
            return self
        out = super().reduced(device)
        if out.empty:
            return out
        num_channels = out.num_channels
        exponent = (
            torch.full((num_channels, ), _ZERO_EXPONENT, device=device)
            if self.empty else self.exponent.to(device).clone())
        dist.all_reduce(exponent, op=dist.ReduceOp.MAX)
        if self.empty:
            hist = torch.zeros(num_channels, self.num_bins, dtype=torch.long, device=device)
        else:
            hist = self._shifted(self.hist.to(device), exponent - self.exponent.to(device))
            hist = hist.clone()
        dist.all_reduce(hist, op=dist.ReduceOp.SUM)
        out.hist, out.exponent = hist, exponent
        return out

    def quantiles(self, qs: Sequence[float]) -> Tensor:
        """Quantiles ``qs`` of each channel, shape ``(len(qs), C)``, float64.

        As :func:`torch.quantile`: linear interpolation between the order
        statistics around rank ``q * (n - 1)``, each located within its bin.
        """
        left, right = self._bin_edges()
        counts = self.hist.double()
        cum = counts.cumsum(1)
        rank = (cum[:, -1:] - 1) * torch.tensor(qs, dtype=torch.float64, device=cum.device)
        below = rank.floor()

        def order_statistic(k: Tensor) -> Tensor:
            # The k-th smallest value (from 0) sits at count k + 1/2 of its bin.
            idx = torch.searchsorted(cum, k + 0.5).clamp_(max=self.num_bins - 1)
            n = counts.gather(1, idx)
            frac = ((k + 0.5 - cum.gather(1, idx) + n) / n.clamp(min=1)).clamp(0, 1)
            lo, hi = left.gather(1, idx), right.gather(1, idx)
            return lo + frac * (hi - lo)

        upper = torch.minimum(below + 1, cum[:, -1:] - 1)
        return torch.lerp(order_statistic(below), order_statistic(upper), rank - below).t()

    def step_mse(self, boundaries: Tensor, levels: Tensor) -> Tensor:
        """Mean squared error of each channel under each of ``K`` step functions
        (see :meth:`RangeStatistics.step_mse`), ``(K, C)``, float64: integrated
        exactly over every bin, its values spread evenly across it."""
        boundaries, levels = boundaries.double(), levels.double()
        # The bins tile each channel's range, a bin's right edge being the next
        # one's left edge: the integral is evaluated once at every edge.
        left, right = self._bin_edges()
        edges = torch.cat([left, right[:, -1:]], 1).unsqueeze(0).expand(len(boundaries), -1, -1)
        integral, level = _step_antiderivative(edges.contiguous(), boundaries, levels)
        left, width = edges[..., :-1], right - left
        spread = integral.diff(dim=-1) / torch.where(width > 0, width, 1.0)
        point = (level[..., :-1] - left)**2
        counts = self.hist.double()
        return (torch.where(width > 0, spread, point) * counts).sum(-1) / counts.sum(1)

    def _count(self, x: Tensor) -> Tensor:
        """Histogram of one batch on the current exponents, shape ``(C, num_bins)``."""
        num_channels, half = self.exponent.numel(), self._half
        shape = self.channel_shape(x)
        bottom = self.exponent - self.octaves + 1
        # The float32 bit fields give every bin directly where no channel's range
        # reaches down to subnormals (any real activation); frexp otherwise.
        if bool((bottom < _MIN_BIT_FIELD_BOTTOM)[self.exponent > _ZERO_EXPONENT].any()):
            magnitude = self._magnitude_frexp(x, bottom.int().view(shape))
        else:
            magnitude = self._magnitude_bit_fields(
                x,
                bottom.clamp(min=_MIN_BIT_FIELD_BOTTOM).int().view(shape))
        negative = (half - 1) - magnitude
        idx = torch.where(x < 0, negative, magnitude.add_(half))
        del negative, magnitude
        if self.per_channel:
            idx += (torch.arange(num_channels, dtype=torch.int32, device=x.device) *
                    self.num_bins).view(shape)
        return torch.bincount(
            idx.flatten(),
            minlength=num_channels * self.num_bins).view(num_channels, self.num_bins)

    def _magnitude_frexp(self, x: Tensor, bottom: Tensor) -> Tensor:
        """Magnitude bin of every value: 0 near zero, then 1 .. octaves * steps in
        increasing order, (octave counted from ``bottom``) * steps + leading
        mantissa bits + 1."""
        steps = 2**self.mantissa_bits
        mantissa, exponent = torch.frexp(x)  # |mantissa| in [0.5, 1), or 0
        magnitude = exponent.sub_(bottom).mul_(steps).add_(1)
        magnitude += mantissa.abs_().mul_(2).sub_(1).mul_(steps).floor_().int()
        del mantissa
        return magnitude.clamp_(min=0).masked_fill_(x == 0, 0)

    def _magnitude_bit_fields(self, x: Tensor, bottom: Tensor) -> Tensor:
        """:meth:`_magnitude_frexp` from the bits of ``x``, for ``bottom >=``
        :data:`_MIN_BIT_FIELD_BOTTOM`: biased exponent and leading mantissa bits
        are one integer, ``frexp``'s exponent plus 126 times ``steps`` plus the
        mantissa bin; zeros and subnormals fall below ``bottom``."""
        shift = 23 - self.mantissa_bits
        magnitude = x.view(torch.int32).bitwise_and(0x7FFFFFFF).bitwise_right_shift_(shift)
        magnitude -= bottom.add(126).mul_(2**self.mantissa_bits).sub_(1)
        return magnitude.clamp_(min=0)

    def _shifted(self, hist: Tensor, octaves: Tensor) -> Tensor:
        """Counts moved down by ``octaves`` (per channel) after the top exponent grew;
        magnitudes leaving the range join the near-zero bins."""
        octaves = octaves.clamp(0, self.octaves)
        if not bool(octaves.any()):
            return hist
        steps, half = 2**self.mantissa_bits, self._half
        magnitude = torch.arange(half, device=hist.device)
        moved = (magnitude.unsqueeze(0) - octaves.unsqueeze(1) * steps).clamp_(min=0)
        target = torch.cat([half - 1 - moved.flip(1), half + moved], dim=1)
        return torch.zeros_like(hist).scatter_add_(1, target, hist)

    def _bin_edges(self) -> Tuple[Tensor, Tensor]:
        """Left and right edges of every bin, clipped to the channel's exact range."""
        steps = 2**self.mantissa_bits
        magnitude = torch.arange(self.octaves * steps, device=self.hist.device)
        octave, step = magnitude // steps, magnitude % steps
        # Octave o (from the bottom) spans [2^(k - octaves + o), 2^(k - octaves + o + 1)).
        base = pow2_exact(self.exponent.unsqueeze(1) - self.octaves + octave)
        low = torch.cat([torch.zeros_like(base[:, :1]), base * (1 + step / steps)], dim=1)
        high = torch.cat([base[:, :1], base * (1 + (step + 1) / steps)], dim=1)
        left = torch.cat([-high.flip(1), low], dim=1)
        right = torch.cat([-low.flip(1), high], dim=1)
        lo, hi = self.min_val.double().unsqueeze(1), self.max_val.double().unsqueeze(1)
        return left.clamp(lo, hi), right.clamp(lo, hi)


class TensorObserver(MinMaxObserver):
    """Keeps (a reference to) one static tensor, for exact statistics of a weight.

    Percentiles (as :func:`torch.quantile`) and quantization errors are computed
    exactly on the tensor. Observing it again is free; observing a *different*
    tensor raises, since that means the quantizer sees activations, which need
    :class:`HistogramObserver`. Memory: none beyond the reference (the weight
    itself); computing percentiles sorts a copy.

    Under distributed, every rank must observe a tensor of the same shape;
    :meth:`reduced` broadcasts the lowest observing rank's, so every rank
    computes the same qparams even if its replica differs or it saw nothing.
    """

    def __init__(self, per_channel: bool = False, ch_axis: int = 0) -> None:
        super().__init__(per_channel, ch_axis)
        self.tensor: Optional[Tensor] = None
        self._sorted: Optional[Tuple[Tensor, Tensor]] = None

    def reset(self) -> None:
        super().reset()
        self.tensor = None
        self._sorted = None

    def observe(self, x: Tensor) -> None:
        if x.numel() == 0:
            return
        if self.tensor is not None and not _same_tensor(x, self.tensor):
            raise ValueError('static statistics keep one tensor (a weight) but a '
                             'different tensor was observed; use static=False for '
                             'activations, or reset the statistics after the weight '
                             'changed')
        self.tensor = x
        self.min_val, self.max_val = self._batch_minmax(x)

    def reduced(self, device: torch.device) -> 'TensorObserver':
        """The tensor of the lowest rank that observed one, on every rank.

        A collective: every rank must call it, also one that observed nothing.
        """
        if not is_distributed():
            return self
        rank, world = dist.get_rank(), dist.get_world_size()
        src = torch.tensor([rank if self.tensor is not None else world], device=device)
        dist.all_reduce(src, op=dist.ReduceOp.MIN)
        src = int(src)
        out = self._new_empty()
        if src == world:
            return out
        dims = torch.zeros(_MAX_DIMS + 1, dtype=torch.long, device=device)
        if rank == src:
            shape = list(self.tensor.shape)
            dims[0] = len(shape)
            dims[1:1 + len(shape)] = torch.tensor(shape, dtype=torch.long)
        dist.broadcast(dims, src=src)
        src_shape = [int(d) for d in dims[1:1 + int(dims[0])]]
        if self.tensor is not None and list(self.tensor.shape) != src_shape:
            raise ValueError('a static tensor must be observed with the same shape on '
                             f'every rank, got {tuple(self.tensor.shape)} here and '
                             f'{tuple(src_shape)} on rank {src}')
        tensor = (
            self.tensor.to(device, torch.float32).clone() if rank == src else torch.empty(
                src_shape, device=device))
        dist.broadcast(tensor, src=src)
        out.observe(tensor)
        return out

    def quantiles(self, qs: Sequence[float]) -> Tensor:
        """Quantiles ``qs`` of each channel, shape ``(len(qs), C)``, float64."""
        rows = self._sorted_rows()
        pos = torch.tensor(qs, dtype=torch.float64, device=rows.device) * (rows.shape[1] - 1)
        below, above = pos.floor().long(), pos.ceil().long()
        return torch.lerp(rows[:, below], rows[:, above], pos - below).t()

    def step_mse(self, boundaries: Tensor, levels: Tensor) -> Tensor:
        """Mean squared error of each channel under each of ``K`` step functions
        (see :meth:`RangeStatistics.step_mse`), ``(K, C)``, float64, exactly up
        to float64 rounding: on the sorted values a segment is a run, found by
        one search per boundary, and its squared error comes from the run's
        count, sum and sum of squares."""
        rows = self._sorted_rows()
        num_candidates, num_channels, num_values = len(boundaries), rows.shape[0], rows.shape[1]
        boundaries, levels = boundaries.double(), levels.double()
        # values in segment i: boundaries[i - 1] < x <= boundaries[i]
        ends = torch.searchsorted(
            rows, boundaries.permute(1, 0, 2).reshape(num_channels, -1).contiguous(), right=True)
        ends = ends.view(num_channels, num_candidates, -1).permute(1, 0, 2)
        edges = torch.cat(
            [torch.zeros_like(ends[..., :1]), ends,
             torch.full_like(ends[..., :1], num_values)], -1)
        zero = rows.new_zeros(num_channels, 1)
        sums = (torch.cat([zero, rows.cumsum(1)], 1), torch.cat([zero, rows.square().cumsum(1)], 1))

        def run_sums(prefix: Tensor) -> Tensor:
            at = prefix.unsqueeze(0).expand(num_candidates, -1, -1).gather(-1, edges)
            return at[..., 1:] - at[..., :-1]

        count = (edges[..., 1:] - edges[..., :-1]).double()
        first, second = run_sums(sums[0]), run_sums(sums[1])
        error = count * levels.square() - 2 * levels * first + second
        return error.sum(-1) / num_values

    def _sorted_rows(self) -> Tensor:
        """:meth:`_rows` in float64, each sorted (kept until the tensor changes)."""
        if self._sorted is None or self._sorted[0] is not self.tensor:
            self._sorted = (self.tensor, self._rows().double().sort(dim=1).values.contiguous())
        return self._sorted[1]

    def _rows(self) -> Tensor:
        """The tensor as ``(C, N)``: one row per channel."""
        if not self.per_channel:
            return self.tensor.reshape(1, -1)
        return self.tensor.movedim(self.channel_axis(self.tensor), 0).reshape(self.num_channels, -1)


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if a.data_ptr() == b.data_ptr() and a.stride() == b.stride():
        return True
    return torch.equal(a, b)
