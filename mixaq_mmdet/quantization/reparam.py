"""RepQ-ViT's scale reparameterization of post-LayerNorm activations.

Post-LayerNorm activations vary strongly from channel to channel, which a
per-tensor quantizer handles badly; a per-channel activation quantizer is costly
in hardware. RepQ-ViT folds per-channel ranges into the LayerNorm affine and the
next layer's weights so that a per-tensor quantizer sees channels of equal range.

Here the fold is an exact float-equivalent transform. With per-channel ranges
``[m_c, M_c]`` (observed on calibration data, widened to include 0), the map

    X~_c = (X_c - delta_c) / r_c,   r_c = (M_c - m_c) / mean(M - m),
    delta_c = m_c - r_c * mean(m / r)

gives every channel the range ``[mean(m / r), mean(m / r) + mean(M - m)]``.
LayerNorm ``gamma * n + beta`` becomes ``(gamma / r) * n + (beta - delta) / r``
and the next linear ``W X + b`` becomes ``(W * r) X~ + (b + W delta)`` (a linear
without bias gets the scale-only map, ``delta = 0``: equal widths). Several
LayerNorms may feed one shared linear (the two branches of a Two-Branch block):
they all get the same map, computed from their joint ranges, so the shared
weights stay exact for both. After the fold the activation quantizers are
calibrated per tensor on ``X~``: no per-channel activation scale remains.
"""
from contextlib import contextmanager
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


class ReparamTarget(NamedTuple):
    """LayerNorms whose outputs all feed ``linear``, and an optional owner of a
    ``reparam_pad`` buffer: the value of a zero (padding) token after the map."""
    norms: Sequence[nn.LayerNorm]
    linear: nn.Linear
    pad_owner: Optional[nn.Module] = None


class ChannelRanges:
    """Per-channel min/max of the inputs of a set of linear layers."""

    def __init__(self) -> None:
        self.ranges: Dict[nn.Module, Tuple[Tensor, Tensor]] = {}

    def observe(self, linear: nn.Module, x: Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1])
        if flat.numel() == 0:
            return
        lo, hi = flat.amin(0), flat.amax(0)
        if linear in self.ranges:
            old_lo, old_hi = self.ranges[linear]
            lo, hi = torch.minimum(lo, old_lo), torch.maximum(hi, old_hi)
        self.ranges[linear] = (lo, hi)

    def reduced(self, linear: nn.Module) -> Tuple[Tensor, Tensor]:
        """The range of ``linear``'s inputs over all ranks."""
        if linear not in self.ranges:
            raise RuntimeError(f'no calibration data reached {linear}; cannot '
                               'reparameterize its input')
        lo, hi = (t.clone() for t in self.ranges[linear])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
            torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
        return lo, hi


@contextmanager
def record_channel_ranges(targets: Sequence[ReparamTarget]) -> Iterator[ChannelRanges]:
    """Record the per-channel input ranges of the targets' linears while the
    block is active (forward pre-hooks, removed on exit)."""
    ranges = ChannelRanges()
    handles = [
        t.linear.register_forward_pre_hook(
            lambda module, args: ranges.observe(module, args[0]))
        for t in targets
    ]
    try:
        yield ranges
    finally:
        for handle in handles:
            handle.remove()


def equalizing_map(lo: Tensor, hi: Tensor,
                   shift: bool = True) -> Tuple[Tensor, Tensor]:
    """``(r, delta)`` mapping channel ranges ``[lo, hi]`` onto one common range.

    With ``shift=False`` (a next layer without bias cannot absorb a shift) the
    map only scales: every channel gets the same width, ``delta = 0``.
    """
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    width = (hi - lo).clamp(min=torch.finfo(torch.float32).eps)
    r = width / width.mean()
    delta = lo - r * (lo / r).mean() if shift else torch.zeros_like(lo)
    return r, delta


@torch.no_grad()
def fold_channel_map(target: ReparamTarget, r: Tensor, delta: Tensor) -> None:
    """Apply ``X~ = (X - delta) / r`` to the outputs of ``target.norms`` and undo
    it in ``target.linear``: the float function is unchanged."""
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
                   ranges: ChannelRanges) -> List[Tuple[Tensor, Tensor]]:
    """Fold the equalizing map of every target; returns the ``(r, delta)`` used."""
    maps = []
    for target in targets:
        r, delta = equalizing_map(*ranges.reduced(target.linear),
                                  shift=target.linear.bias is not None)
        fold_channel_map(target, r, delta)
        maps.append((r, delta))
    return maps


__all__ = ['ReparamTarget', 'ChannelRanges', 'record_channel_ranges',
           'equalizing_map', 'fold_channel_map', 'reparameterize']
