"""UQ-ViT's quantizers for the two activations that break uniform grids.

"UQ-ViT: Harmonizing Extreme Activations with Hardware-Friendly Uniform
Quantization in Vision Transformers" (AAAI 2026). Both of its quantizers stay
uniform, so they suit integer execution:

- :class:`DeMaxQuantizer` (post-softmax): each row of the attention matrix
  keeps its maximum apart, exactly, and quantizes the other probabilities on a
  per-row grid that ends at their own maximum. Nothing is calibrated; the grid
  is computed per row at run time. ``attn @ v`` is then one product of the
  codes plus a rank-1 correction from the kept maxima.
- :class:`NormQuantizer` (post-GELU, the input of fc2): quantizes per channel
  and dequantizes per tensor. A per-channel map ``x~ = x * (1 / r) - b`` (a
  :class:`ChannelMap`, applied at run time) gives every channel one grid; its
  inverse is folded into fc2's weight and bias, exactly as RepQ-ViT's scale
  reparameterization folds its map (:func:`~.reparam.fold_channel_map`, the
  same function), so fc2 stays one product with one activation scale.

The map comes from the same per-channel percentile/MSE search as RepQ-ViT's
(:class:`~.reparam.ChannelStatistics`, :func:`~.reparam.equalizing_map`);
:func:`fold_channel_maps` folds it, called by PTQ calibration before the
quantizers calibrate (:func:`~mixaq_mmdet.engine.calibration.calibrate_model`).
"""
from contextlib import contextmanager
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..registry import QUANTIZERS
from .base import QuantizerBase
from .codes import Codes, quantize_codes
from .observers import any_rank
from .quantizers import UniformQuantizer
from .reparam import ChannelStatistics, ReparamTarget, reparameterize


def demax_quantize(x: Tensor, bits: int) -> Tensor:
    """``x`` quantized by DeMax along its last dimension (no gradient).

    Per row: the first maximum is kept exactly; the others are set to 0 there
    and quantized on the grid ``k * step``, ``k = 0 .. 2^bits - 1``, ``step =
    (their maximum) / (2^bits - 1)``, round to nearest. A row whose other
    values are all 0 gives them 0 (step 0).
    """
    top = 2**bits - 1
    index = x.argmax(dim=-1, keepdim=True)
    kept = x.gather(-1, index)
    rest = x.scatter(-1, index, 0.0)
    step = rest.amax(dim=-1, keepdim=True) / top
    safe = torch.where(step > 0, step, torch.ones_like(step))
    q = torch.clamp(torch.round(rest / safe), 0, top) * step
    return q.scatter(-1, index, kept)


@QUANTIZERS.register_module()
class DeMaxQuantizer(QuantizerBase):
    """UQ-ViT's DeMax quantizer of post-softmax attention, straight-through.

    Dynamic: each row (last dimension) gets its own grid at run time (see
    :func:`demax_quantize`), with zero point 0 and ``2^bits`` levels below the
    row's second value. Calibration only checks the data (finite, not
    negative) and marks the quantizer calibrated, as a fixed-top
    :class:`~.quantizers.LogSqrt2Quantizer` does: a quantizer no data reached
    (the low branch of a pair calibrated at low-bit ratio 0) stays
    uncalibrated and raises if reached.

    Args:
        bits: Bit width, 2 to 8.
    """

    kind = 'demax'
    #: Where a backbone may put it (:data:`~mixaq_mmdet.models.layers.QUANTIZER_POSITIONS`).
    positions = ('softmax', )

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self._observed = False

    def has_statistics(self) -> bool:
        return self._observed

    def _observe(self, x: Tensor) -> None:
        min_val = float(x.min())
        if min_val < 0:
            raise ValueError('DeMax takes post-softmax probabilities (not negative), got a '
                             f'minimum of {min_val}')
        self._observed = True

    def _reset_statistics(self) -> None:
        self._observed = False

    def _compute_qparams(self) -> Tuple[Tensor, Tensor]:
        """Nothing to compute: the grid is per row at run time."""
        if not any_rank(self._observed, self.calibrated.device):
            raise self._no_statistics()
        return torch.ones(1), torch.zeros(1, dtype=torch.int32)

    def _fake_quantize(self, x: Tensor) -> Tensor:
        q = demax_quantize(x.detach(), self.bits)
        if torch.is_grad_enabled() and x.requires_grad:
            return x + (q - x).detach()
        return q


class ChannelMap(nn.Module):
    """``x * weight + bias`` over the last dimension: NormQuant's per-channel
    map, the identity until a map is folded in.

    ``weight`` and ``bias`` are an affine like a LayerNorm's, so
    :func:`~.reparam.fold_channel_map` folds into them as into a LayerNorm.
    Empty (the identity) until :meth:`set_channels`; a checkpoint's map is
    loaded with its shape."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer('weight', torch.ones(0))
        self.register_buffer('bias', torch.zeros(0))

    @property
    def folded(self) -> bool:
        """Whether a map was set (read from shapes: no device sync)."""
        return self.weight.numel() > 0

    def set_channels(self, channels: int) -> None:
        """Give the map ``channels`` channels (identity) if it has none yet."""
        if self.folded:
            if self.weight.numel() != channels:
                raise ValueError(f'the channel map has {self.weight.numel()} channels, its '
                                 f'layer {channels}')
            return
        self.weight = self.weight.new_ones(channels)
        self.bias = self.bias.new_zeros(channels)

    def forward(self, x: Tensor) -> Tensor:
        if not self.folded:
            return x
        return torch.addcmul(self.bias.to(x.dtype), x, self.weight.to(x.dtype))

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args,
                              **kwargs) -> None:
        for name in ('weight', 'bias'):
            value = state_dict.get(prefix + name)
            current = getattr(self, name)
            if isinstance(value, Tensor) and value.shape != current.shape:
                current.data = current.data.new_empty(value.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f'channels={self.weight.numel()}' if self.folded else 'identity'


@QUANTIZERS.register_module()
class NormQuantizer(UniformQuantizer):
    """UQ-ViT's NormQuant of the post-GELU input of fc2: quantized per
    channel, dequantized per tensor.

    The forward maps its input with :attr:`channel_map` (``x~ = x / r - b``,
    one step ``mean(s)`` for every channel), then quantizes ``x~`` per tensor
    as a :class:`~.quantizers.UniformQuantizer` (asymmetric, the
    percentile/MSE search by default). fc2's weight and bias hold the inverse
    map (:func:`fold_channel_maps`), so the block computes the float function
    with quantization off as well. Calibrating the per-tensor grid before a
    map is folded is an error: it would be a plain per-tensor quantizer under
    NormQuant's name.

    Args:
        bits: Bit width, 2 to 8.
        calib: ``'percentile_mse'`` (default) or ``'minmax'``, for the
            per-tensor grid of ``x~``.
    """

    kind = 'normquant'
    #: Where a backbone may put it (:data:`~mixaq_mmdet.models.layers.QUANTIZER_POSITIONS`).
    positions = ('fc2_in', )

    def __init__(self, bits: int, calib: str = 'percentile_mse') -> None:
        super().__init__(bits, calib=calib)
        self.channel_map = ChannelMap()

    @property
    def maps_input(self) -> bool:
        """Whether the forward changes its input even with quantization off (a
        folded map): the block must then not run mmdet's dense path."""
        return self.channel_map.folded

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.channel_map(x))

    def integer_codes(self, x: Tensor) -> Codes:
        """The codes of the mapped ``x``: the map is fused into the
        quantization of fc2's input, so fc2 is one integer product."""
        return self.record_codes(quantize_codes(self.channel_map(x), self.integer_grid()))

    def _compute_qparams(self) -> Tuple[Tensor, Tensor]:
        if not self.channel_map.folded:
            raise ValueError(
                'its per-channel map was never folded into fc2: NormQuant calibrates its '
                'per-tensor grid on the mapped activations, after fold_channel_maps (PTQ '
                'calibration, calibrate_model, does both)')
        return super()._compute_qparams()


def normquant_target(quantizers: Sequence[QuantizerBase], fc2: nn.Linear,
                     where: str) -> Optional[ReparamTarget]:
    """The fold target of the NormQuantizers that all quantize ``fc2``'s input
    (the branches of one block): their maps, one per branch, get one map;
    None if none is a NormQuantizer. Every one or none must be."""
    normquant = [isinstance(q, NormQuantizer) for q in quantizers]
    if not any(normquant):
        return None
    if not all(normquant):
        kinds = [type(q).__name__ for q in quantizers]
        raise ValueError(f'{where}: the quantizers of one fc2 input are {kinds}; NormQuant '
                         'folds one map into the shared fc2, so every branch needs a '
                         'NormQuantizer, or none')
    return ReparamTarget([q.channel_map for q in quantizers], fc2, min(q.bits for q in quantizers))


@contextmanager
def record_map_statistics(targets: Sequence[ReparamTarget]) -> Iterator[ChannelStatistics]:
    """Observe the per-channel outputs of the targets' maps (forward hooks,
    removed on exit); the maps of one target feed one set of statistics, so
    the branches get one map from their windows together. The outputs, not
    fc2's inputs: a second fold then composes with the first exactly."""
    stats = ChannelStatistics(targets)
    handles = [
        channel_map.register_forward_hook(
            lambda module, args, out, linear=target.linear: stats.observe(linear, out))
        for target in targets for channel_map in target.norms
    ]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def fold_channel_maps(targets: Sequence[ReparamTarget],
                      stats: ChannelStatistics) -> List[Tuple[Tensor, Tensor]]:
    """Fold NormQuant's map of every target into its maps and fc2 (exact in
    float); returns the ``(r, delta)`` folded, ``x~ = (x - delta) / r``.

    RepQ-ViT's fold (:func:`~.reparam.reparameterize`) on the targets'
    :class:`ChannelMap` s instead of LayerNorms: ``r_c = s_c / mean(s)`` from
    each channel's calibrated step, the shift aligning the channels' minima,
    absorbed by fc2's bias. A map already folded gets the new one composed
    with it (the statistics are of its outputs). A collective under
    distributed.
    """
    for target in targets:
        for channel_map in target.norms:
            channel_map.set_channels(target.linear.in_features)
    return reparameterize(targets, stats)


__all__ = [
    'DeMaxQuantizer', 'NormQuantizer', 'ChannelMap', 'demax_quantize', 'normquant_target',
    'record_map_statistics', 'fold_channel_maps'
]
