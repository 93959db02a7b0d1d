"""PTQ4ViT's twin uniform quantizer for post-softmax and post-GELU activations.

Yuan et al., "PTQ4ViT: Post-training Quantization for Vision Transformers with
Twin Uniform Quantization" (ECCV 2022). Both activations are far from uniform:
most softmax probabilities are tiny while the few large ones matter, and GELU
outputs have a short negative tail and a long positive one. Twin uniform
quantization spends one of its ``bits`` on choosing between two uniform ranges
of ``2^(bits-1)`` levels each, whose steps differ by a power of two (a shift in
hardware), and calibration picks that power.
"""
from typing import Any, Dict, Tuple

import torch
from torch import Tensor

from ..registry import QUANTIZERS
from .base import QuantizerBase
from .observers import HistogramObserver

#: The minimum of GELU(x) = x * Phi(x) (at x = -0.7518).
GELU_MIN = -0.16997
#: The inputs each mode is for.
TWIN_MODES = ('softmax', 'gelu')
#: Candidate exponents ``m`` of the ratio ``2^m`` between the two steps.
SHIFTS = tuple(range(25))


def twin_quantize(x: Tensor, step_small: Tensor, step_large: Tensor, levels: int,
                  mode: str) -> Tensor:
    """``x`` on the twin grid (no gradient): each range is round-to-nearest
    on its own step, clamped to ``levels`` levels.

    'softmax': ``x < levels * step_small`` on ``i * step_small``, the rest on
    ``j * step_large``, ``0 <= i, j < levels``. 'gelu': negative ``x`` on
    ``-i * step_small``, the rest on ``j * step_large``. The steps broadcast
    against ``x`` (one pair per candidate in calibration).
    """
    top = levels - 1
    large = torch.clamp(torch.round(x / step_large), 0, top) * step_large
    if mode == 'softmax':
        small = torch.clamp(torch.round(x / step_small), 0, top) * step_small
        return torch.where(x < levels * step_small, small, large)
    small = torch.clamp(torch.round(x / step_small), -top, 0) * step_small
    return torch.where(x < 0, small, large)


@QUANTIZERS.register_module()
class TwinUniformQuantizer(QuantizerBase):
    """Twin uniform fake quantizer (PTQ4ViT), per tensor, straight-through.

    ``scale`` holds the two steps ``(small, large)`` with ``large = 2^m * small``.
    'softmax' (inputs in [0, 1]): the large range is fixed to end at 1 (step
    ``1 / (2^(bits-1) - 1)``), the small one covers ``[0, 2^(bits-1) * small)``
    for the many tiny probabilities. 'gelu': the small range holds the negative
    values, its step fixed so that its lowest level is GELU's minimum; the large
    one holds the positive values. Calibration picks ``m`` in :data:`SHIFTS`
    with the lowest quantization MSE on a histogram of the calibration data
    (PTQ4ViT ranks candidates by a Hessian-guided metric; MSE is what every
    quantizer here uses), the smallest ``m`` on a tie.

    Args:
        bits: Bit width, 2 to 8 (one of them selects the range).
        mode: ``'softmax'`` or ``'gelu'``, the activation it follows.
    """

    kind = 'twin_uniform'

    def __init__(self, bits: int, mode: str = 'softmax') -> None:
        super().__init__(bits)
        if mode not in TWIN_MODES:
            raise ValueError(f'{self.display_name}: mode must be one of {TWIN_MODES}, '
                             f'got {mode!r}')
        self.mode = mode
        self.levels = 2**(self.bits - 1)
        self.observer = HistogramObserver()
        self.register_buffer('scale', self._steps(torch.tensor(0)).float().view(2))

    def settings(self) -> Dict[str, Any]:
        return dict(super().settings(), mode=self.mode)

    def _config_repr(self) -> str:
        return f', mode={self.mode!r}'

    def has_statistics(self) -> bool:
        return not self.observer.empty

    def _observe(self, x: Tensor) -> None:
        if self.mode == 'softmax':
            min_val = float(x.min())
            if min_val < 0:
                raise ValueError("mode='softmax' takes probabilities in [0, 1], got a "
                                 f"minimum of {min_val}; use mode='gelu' or another "
                                 'quantizer for signed inputs')
        self.observer.observe(x)

    def _reset_statistics(self) -> None:
        self.observer.reset()

    def _steps(self, shift: Tensor) -> Tensor:
        """``(..., 2)`` steps (small, large) for exponents ``shift``, float64."""
        power = torch.pow(2.0, shift.double())
        if self.mode == 'softmax':
            large = torch.full_like(power, 1.0 / (self.levels - 1))
            return torch.stack([large / power, large], -1)
        small = torch.full_like(power, -GELU_MIN / (self.levels - 1))
        return torch.stack([small, small * power], -1)

    def _compute_qparams(self) -> Tuple[Tensor, Tensor]:
        stats = self.observer.reduced(self.calibrated.device)
        if stats.empty:
            raise self._no_statistics()
        steps = self._steps(torch.tensor(SHIFTS, device=self.calibrated.device))
        errors = stats.step_mse(*self._step_function(steps))[:, 0]
        best = steps[errors.argmin()]  # first minimum: the smallest shift on a tie
        with torch.no_grad():
            self.scale.copy_(best.to(self.scale.dtype))
        return self.scale, torch.zeros(1, dtype=torch.int32)

    def _step_function(self, steps: Tensor) -> Tuple[Tensor, Tensor]:
        """Boundaries ``(K, 1, M)`` and levels ``(K, 1, M + 1)`` of the twin grid
        of each of the ``K`` step pairs, as ``step_mse`` takes them: the rounding
        boundaries of both ranges (those of the large range that fall inside the
        small one moved onto the split, leaving empty segments) and the level of
        every segment read from :func:`twin_quantize` itself."""
        small, large = steps[:, :1], steps[:, 1:]
        half = torch.arange(self.levels - 1, dtype=torch.float64, device=steps.device) + 0.5
        if self.mode == 'softmax':
            split = self.levels * small
            bounds = [half * small, split, torch.maximum(half * large, split)]
        else:
            split = torch.zeros_like(small)
            bounds = [-(half * small).flip(-1), split, half * large]
        boundaries = torch.cat(bounds, -1)
        inner = (boundaries[:, :-1] + boundaries[:, 1:]) / 2
        points = torch.cat([boundaries[:, :1] - large, inner, boundaries[:, -1:] + large], -1)
        levels = twin_quantize(points, small, large, self.levels, self.mode)
        return boundaries.unsqueeze(1), levels.unsqueeze(1)

    def _fake_quantize(self, x: Tensor) -> Tensor:
        steps = self.scale.to(x.dtype)
        q = twin_quantize(x.detach(), steps[0], steps[1], self.levels, self.mode)
        if torch.is_grad_enabled() and x.requires_grad:
            return x + (q - x).detach()
        return q


__all__ = ['TwinUniformQuantizer', 'twin_quantize', 'GELU_MIN', 'TWIN_MODES']
