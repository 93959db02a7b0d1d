"""OFQ's statistics-based weight quantizer (StatsQ).

Liu et al., "Oscillation-free Quantization for Low-bit Vision Transformers"
(ICML 2023), the QAT base of MixA-Q's paper. A learnable weight scale (LSQ)
moves the quantization grid under the latent weights at every step, which
makes weights near a rounding boundary flip back and forth (oscillate); StatsQ
takes each output channel's scale from the weights themselves, ``2 * mean|w|``,
so the grid follows the weights instead of being trained against them.
"""
from typing import Any, Dict, Tuple

import torch
from torch import Tensor

from ..registry import QUANTIZERS
from .base import QuantizerBase
from .observers import TensorObserver

#: The latent weights are clipped to ``[-1, 1 - CLIP_EPS]`` scales (OFQ's).
CLIP_EPS = 1e-6


@QUANTIZERS.register_module()
class StatsQQuantizer(QuantizerBase):
    """StatsQ fake quantizer of a weight, one scale per output channel.

    With ``s_c = 2 * mean|w_c|`` and ``n = 2^(bits-1)``, a weight goes to
    ``s_c * (round(u * n - 1/2) + 1/2) / n`` where ``u = clip(w / s_c, -1, 1)``:
    ``2^bits`` levels symmetric about 0 (no zero level), the scale recomputed
    from the current weights in every forward and not learned. The gradient is
    straight through, clipped weights included (OFQ's). ``scale`` records the
    scales at calibration, for inspection; the forward always uses the current
    weights'.

    Args:
        bits: Bit width, 2 to 8.
        ch_axis: The output-channel dimension of the weight.
    """

    _qparam_names = ('scale', )
    kind = 'statsq'
    has_integer_grid = True

    def __init__(self, bits: int, ch_axis: int = 0) -> None:
        super().__init__(bits)
        if isinstance(ch_axis, bool) or not isinstance(ch_axis, int):
            raise TypeError(f'{self.display_name}: ch_axis must be an int, got {ch_axis!r}')
        self.ch_axis = ch_axis
        self.per_channel = True  # one scale per output channel, fixed by the layer
        self.levels = 2**(self.bits - 1)
        self.observer = TensorObserver(per_channel=True, ch_axis=ch_axis)
        self.num_channels = None
        self.register_buffer('scale', torch.ones(1))

    def settings(self) -> Dict[str, Any]:
        return dict(super().settings(), ch_axis=self.ch_axis)

    def set_num_channels(self, num_channels: int) -> None:
        """Give ``scale`` its final shape ``(num_channels,)`` (see
        :meth:`UniformQuantizer.set_num_channels`)."""
        self.num_channels = int(num_channels)
        if self.scale.shape != (num_channels, ):
            self.scale.data = self.scale.data.new_ones((num_channels, ))

    def has_statistics(self) -> bool:
        return not self.observer.empty

    def _observe(self, x: Tensor) -> None:
        self.observer.observe(x)

    def _reset_statistics(self) -> None:
        self.observer.reset()

    def _compute_qparams(self) -> Tuple[Tensor, Tensor]:
        stats = self.observer.reduced(self.calibrated.device)
        if stats.empty:
            raise self._no_statistics()
        with torch.no_grad():
            scale = self._scales(stats.tensor).reshape(-1)
            if self.scale.shape != scale.shape:
                self.scale.data = scale.to(self.scale.device).clone()
            else:
                self.scale.copy_(scale)
        return self.scale, torch.zeros_like(self.scale, dtype=torch.int32)

    def _scales(self, w: Tensor) -> Tensor:
        """``2 * mean|w|`` per output channel, shaped to broadcast against ``w``."""
        axis = self.observer.channel_axis(w)
        dims = [d for d in range(w.dim()) if d != axis]
        return 2 * w.detach().abs().mean(dims, keepdim=True).clamp(min=torch.finfo(w.dtype).tiny)

    def grid_position(self, w: Tensor) -> Tensor:
        """``u * n - 1/2``: rounding it gives the weight's integer code in
        ``[-n, n - 1]``; a weight half way between two codes sits on a
        rounding boundary (what CGA reads)."""
        return torch.clamp(w.detach() / self._scales(w), -1.0, 1.0 - CLIP_EPS) * self.levels - 0.5

    def integer_code(self, w: Tensor) -> Tensor:
        """The integer each weight is quantized to."""
        return torch.round(self.grid_position(w))

    @property
    def code_range(self) -> Tuple[int, int]:
        return -self.levels, self.levels - 1

    def integer_weight(self, w: Tensor) -> Tuple[Tensor, Tensor]:
        """``2 * code + 1`` (odd integers within ``+-(2^bits - 1)``) and each
        output channel's ``mean|w|``-based step, ``2 * mean|w| / 2^bits``."""
        self._check_integer_ready()
        if self.observer.channel_axis(w) != 0:
            raise ValueError(f'{self.display_name}: integer execution needs scales per output '
                             f'channel (ch_axis=0), got ch_axis={self.ch_axis}')
        with torch.no_grad():
            values = (2 * self.integer_code(w) + 1).to(torch.int32)
            step = self._scales(w).reshape(-1).float() / (2 * self.levels)
        return values, step

    def _fake_quantize(self, w: Tensor) -> Tensor:
        with torch.no_grad():
            quantized = self._scales(w) * ((self.integer_code(w) + 0.5) / self.levels)
        if not (torch.is_grad_enabled() and w.requires_grad):
            return quantized
        return w + (quantized - w).detach()  # straight through, clipped weights too
