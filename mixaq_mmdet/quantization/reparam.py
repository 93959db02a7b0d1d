"""RepQ-ViT's scale reparameterization of post-LayerNorm activations.

Post-LayerNorm activations vary strongly from channel to channel, which a
per-tensor quantizer handles badly; a per-channel activation quantizer is costly
in hardware. RepQ-ViT folds per-channel ranges into the LayerNorm affine and the
next layer's weights so that a per-tensor quantizer sees channels of equal range.

The channel ranges come from the statistics that calibrate the quantizers: a
per-channel histogram of the inputs of the next layer, searched at the bits of
the lowest-precision quantizer that reads them, and each channel's range is its
calibrated grid ``[(qmin - z_c) s_c, (qmax - z_c) s_c]``. So a rare outlier token
does not set its channel's scale (raw min/max ranges made the fold worse than no
fold on such data). ``reparam_range`` (:data:`REPARAM_RANGES`) says which grid:

- ``'repq_vit'``: RepQ-ViT's own per-channel calibration, the ``(1 - p, p)``
  quantile ranges for ``p`` in :data:`~.quantizers.PERCENTILES` under MSE, step
  ``(hi - lo) / (2^bits - 1)`` and zero point ``round(-lo / s)``, not clamped:
  a channel whose values all have one sign keeps its own range;
- ``'with_zero'``: the grid of this project's per-channel
  :class:`~mixaq_mmdet.quantization.UniformQuantizer` (``percentile_mse``, also
  the (min, max) candidate), whose range always includes 0 (torch.ao's
  convention): a one-sign channel's step covers ``[min(lo, 0), max(hi, 0)]``.

The two agree on channels that span 0, up to the (min, max) candidate.
:class:`~mixaq_mmdet.engine.PTQLoop` defaults to 'with_zero'. The map below turns
every channel's grid into one common grid of step ``mean(s)``, as RepQ-ViT does
with its calibrated per-channel steps ('with_zero': with the widened ones).

The fold is an exact float-equivalent transform. With per-channel ranges
``[m_c, M_c]``, the map

    X~_c = (X_c - delta_c) / r_c,   r_c = (M_c - m_c) / mean(M - m),
    delta_c = m_c - r_c * mean(m / r)

gives every channel the range ``[mean(m / r), mean(m / r) + mean(M - m)]``.
LayerNorm ``gamma * n + beta`` becomes ``(gamma / r) * n + (beta - delta) / r``
and the next linear ``W X + b`` becomes ``(W * r) X~ + (b + W delta)`` (a linear
without bias gets the scale-only map, ``delta = 0``: equal widths). Several
LayerNorms may feed one shared linear (the two branches of a Two-Branch block):
they all get the same map, computed from their joint statistics, so the shared
weights stay exact for both. After the fold the activation quantizers are
calibrated per tensor on ``X~``: no per-channel activation scale remains.
A padding token (zeros after the LayerNorm) is set to the map's image of 0,
``-delta / r`` (``reparam_pad``), which lies outside the common range where a
channel's range excludes 0.
"""
from contextlib import contextmanager
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .numerics import uniform_step_function
from .observers import RangeStatistics
from .quantizers import PERCENTILES, UniformQuantizer

#: Which calibrated per-channel grid sets a channel's range (``reparam_range``).
REPARAM_RANGES = ('repq_vit', 'with_zero')
#: ``reparam_range`` of :class:`~mixaq_mmdet.engine.PTQLoop` and of the functions
#: here: the range every published number of the project was calibrated with;
#: 'repq_vit' measured within noise of it at W4A4 (docs/ptq.md).
DEFAULT_REPARAM_RANGE = 'with_zero'


def check_reparam_range(reparam_range: object) -> str:
    """``reparam_range`` if it is one of :data:`REPARAM_RANGES`, else a ValueError."""
    if not isinstance(reparam_range, str) or reparam_range not in REPARAM_RANGES:
        raise ValueError(f'reparam_range must be one of {REPARAM_RANGES}, got {reparam_range!r}')
    return reparam_range


def repq_vit_ranges(stats: RangeStatistics, bits: int) -> Tuple[Tensor, Tensor]:
    """RepQ-ViT's calibrated per-channel grid ``(lo, hi)`` of ``stats``.

    As RepQ-ViT's ``UniformQuantizer.init_quantization_scale``: each channel
    keeps the ``(1 - p, p)`` quantile range, ``p`` in :data:`PERCENTILES`, whose
    grid (step ``(hi - lo) / (2^bits - 1)``, zero point ``round(-lo / step)``,
    not clamped to the codes) has the lowest MSE, the first on a tie; the
    grid's ends are returned. Unlike :class:`UniformQuantizer`, the range is
    not widened to include 0. A channel without width (a constant; RepQ-ViT
    divides by zero there) is widened to include 0 so that its step is not 0.
    """
    qmax = 2**bits - 1
    k = len(PERCENTILES)
    q = stats.quantiles([1.0 - p for p in PERCENTILES] + list(PERCENTILES))
    lows, highs = q[:k], q[k:]
    flat = highs - lows <= torch.finfo(torch.float32).eps * torch.maximum(lows.abs(), highs.abs())
    lows = torch.where(flat, lows.clamp(max=0.0), lows)
    highs = torch.where(flat, highs.clamp(min=0.0), highs)
    scales = ((highs - lows) / qmax).clamp(min=torch.finfo(torch.float32).eps)
    zero_points = torch.round(-lows / scales)
    mse = stats.step_mse(*uniform_step_function(scales, zero_points, 0, qmax))
    best = mse.argmin(0, keepdim=True)
    scale, zero_point = scales.gather(0, best)[0], zero_points.gather(0, best)[0]
    return (-zero_point * scale).float(), ((qmax - zero_point) * scale).float()


class ReparamTarget(NamedTuple):
    """LayerNorms whose outputs all feed ``linear``, the bits of the
    lowest-precision quantizer that reads ``linear``'s input, and an optional
    owner of a ``reparam_pad`` buffer: the value of a zero (padding) token after
    the map."""
    norms: Sequence[nn.LayerNorm]
    linear: nn.Linear
    bits: int = 8
    pad_owner: Optional[nn.Module] = None


class ChannelStatistics:
    """Per-channel statistics of the inputs of a set of linear layers, and the
    calibrated ranges they give."""

    def __init__(self, targets: Sequence[ReparamTarget]) -> None:
        self.observers: Dict[nn.Module, UniformQuantizer] = {}
        for target in targets:
            observer = UniformQuantizer(
                target.bits, per_channel=True, ch_axis=-1, calib='percentile_mse')
            observer.name = f'reparameterization of {type(target.linear).__name__}'
            self.observers[target.linear] = observer.to(target.linear.weight.device)

    def observe(self, linear: nn.Module, x: Tensor) -> None:
        self.observers[linear](x.detach())

    def ranges(self,
               linear: nn.Module,
               reparam_range: str = DEFAULT_REPARAM_RANGE) -> Tuple[Tensor, Tensor]:
        """Calibrated ``(lo, hi)`` of ``linear``'s input channels over all ranks,
        as ``reparam_range`` (:data:`REPARAM_RANGES`) takes them.

        A collective under distributed: every rank calls it, also one that saw
        no data for this layer (it contributes nothing).
        """
        observer = self.observers[linear]
        if check_reparam_range(reparam_range) == 'repq_vit':
            stats = observer.observer.reduced(observer.calibrated.device)
            if stats.empty:
                raise RuntimeError(f'no calibration data reached {linear}; cannot '
                                   'reparameterize its input')
            return repq_vit_ranges(stats, observer.bits)
        try:
            scale, zero_point = observer.calculate_qparams()
        except RuntimeError as e:
            raise RuntimeError(f'no calibration data reached {linear}; cannot '
                               'reparameterize its input') from e
        return ((observer.quant_min - zero_point) * scale,
                (observer.quant_max - zero_point) * scale)


@contextmanager
def record_channel_statistics(targets: Sequence[ReparamTarget]) -> Iterator[ChannelStatistics]:
    """Observe the per-channel inputs of the targets' linears while the block
    is active (forward pre-hooks, removed on exit)."""
    stats = ChannelStatistics(targets)
    handles = [
        t.linear.register_forward_pre_hook(lambda module, args: stats.observe(module, args[0]))
        for t in targets
    ]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def equalizing_map(lo: Tensor,
                   hi: Tensor,
                   shift: bool = True,
                   with_zero: bool = True) -> Tuple[Tensor, Tensor]:
    """``(r, delta)`` mapping channel ranges ``[lo, hi]`` onto one common range.

    With ``shift=False`` (a next layer without bias cannot absorb a shift) the
    map only scales: every channel gets the same width, ``delta = 0``. With
    ``with_zero`` each range is first widened to include 0 ('with_zero');
    without, it is taken as it is ('repq_vit').
    """
    if with_zero:
        lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    width = (hi - lo).clamp(min=torch.finfo(torch.float32).eps)
    r = width / width.mean()
    delta = lo - r * (lo / r).mean() if shift else torch.zeros_like(lo)
    return r, delta


@torch.no_grad()
def fold_channel_map(target: ReparamTarget, r: Tensor, delta: Tensor) -> None:
    """Apply ``X~ = (X - delta) / r`` to the outputs of ``target.norms`` and undo
    it in ``target.linear``: the float function is unchanged. The map is
    applied in the model's dtype (its statistics are float32)."""
    r, delta = r.to(target.linear.weight), delta.to(target.linear.weight)
    for norm in target.norms:
        if norm.weight is None or norm.bias is None:
            raise ValueError(f'{norm} has no affine parameters to fold into')
        norm.weight.div_(r)
        norm.bias.sub_(delta).div_(r)
    linear = target.linear
    if linear.bias is not None:
        linear.bias.add_(linear.weight @ delta)
    elif delta.any():
        raise ValueError(f'{linear} has no bias to absorb the shift; use a '
                         'scale-only map (equalizing_map(..., shift=False))')
    linear.weight.mul_(r)
    if target.pad_owner is not None:
        target.pad_owner.reparam_pad.copy_(-delta / r)


def reparameterize(targets: Sequence[ReparamTarget],
                   stats: ChannelStatistics,
                   reparam_range: str = DEFAULT_REPARAM_RANGE) -> List[Tuple[Tensor, Tensor]]:
    """Fold the equalizing map of every target, channel ranges as
    ``reparam_range`` takes them; returns the ``(r, delta)`` used.

    A collective under distributed (the ranges are reduced over ranks).
    """
    check_reparam_range(reparam_range)
    maps = []
    for target in targets:
        r, delta = equalizing_map(
            *stats.ranges(target.linear, reparam_range),
            shift=target.linear.bias is not None,
            with_zero=reparam_range == 'with_zero')
        fold_channel_map(target, r, delta)
        maps.append((r, delta))
    return maps


__all__ = [
    'ReparamTarget', 'ChannelStatistics', 'record_channel_statistics', 'equalizing_map',
    'fold_channel_map', 'reparameterize', 'REPARAM_RANGES', 'DEFAULT_REPARAM_RANGE',
    'check_reparam_range', 'repq_vit_ranges'
]
