"""PTQ4ViT's twin uniform quantizer for post-softmax and post-GELU activations.

Yuan et al., "PTQ4ViT: Post-training Quantization for Vision Transformers with
Twin Uniform Quantization" (ECCV 2022). Both activations are far from uniform:
most softmax probabilities are tiny while the few large ones matter, and GELU
outputs have a short negative tail and a long positive one. Twin uniform
quantization spends one of its ``bits`` on choosing between two uniform ranges
of ``2^(bits-1)`` codes each.

Post-softmax (PTQ4ViT's ``SoSPTQSLBatchingQuantMatMul``): the two steps differ
by a power of two (a shift in hardware), and calibration picks that power.
Post-GELU (its ``PostGeluPTQSLBatchingQuantLinear``, the input quantizer of the
linear after GELU): the negative range has ``2^(bits-1)`` codes ``-i * s_neg``,
``i = 1..2^(bits-1)``, with ``s_neg = 0.16997 / 2^(bits-1)`` (the lowest level
is GELU's minimum), the positive range ``j * s_pos``, ``j = 0..2^(bits-1) - 1``:
``2^bits`` levels; ``s_pos`` is searched freely, as PTQ4ViT does it (see
:data:`GELU_SEARCH`).
"""
from typing import Any, Dict, Tuple

import torch
from torch import Tensor

from ..registry import QUANTIZERS
from .base import QuantizerBase
from .observers import HistogramObserver

#: The minimum of GELU(x) = x * Phi(x) (at x = -0.7518).
GELU_MIN = -0.16997124254703522
#: The inputs each mode is for.
TWIN_MODES = ('softmax', 'gelu')
#: 'softmax': candidate exponents ``m`` of the ratio ``2^m`` between the two steps.
SHIFTS = tuple(range(25))
#: 'gelu': PTQ4ViT's search of the positive step (``eq_alpha``, ``eq_beta``,
#: ``eq_n`` of its configs/PTQ4ViT.py): candidates ``(eq_alpha + i * (eq_beta -
#: eq_alpha) / eq_n) * max / (2^(bits-1) - 0.5)`` with ``max`` the largest
#: calibration value, for ``i = 0..eq_n - 1`` (PTQ4ViT builds ``eq_n + 1``
#: candidates; its search loop evaluates the first ``eq_n``).
GELU_SEARCH = (0.01, 1.2, 100)


def twin_quantize(x: Tensor, step_small: Tensor, step_large: Tensor, levels: int,
                  mode: str) -> Tensor:
    """``x`` on the twin grid (no gradient): each range is round-to-nearest
    on its own step, clamped to its codes; ``levels`` is ``2^(bits-1)``.

    'softmax': ``x < levels * step_small`` on ``i * step_small``, the rest on
    ``j * step_large``, ``0 <= i, j < levels``. 'gelu': negative ``x`` on
    ``-i * step_small``, ``0 <= i <= levels``, the rest on ``j * step_large``,
    ``0 <= j < levels`` (PTQ4ViT's ``quant_input``: its sum of the two clamped
    ranges is this choice by sign). The steps broadcast against ``x`` (one pair
    per candidate in calibration).
    """
    top = levels - 1
    large = torch.clamp(torch.round(x / step_large), 0, top) * step_large
    if mode == 'softmax':
        small = torch.clamp(torch.round(x / step_small), 0, top) * step_small
        return torch.where(x < levels * step_small, small, large)
    small = torch.clamp(torch.round(x / step_small), -levels, 0) * step_small
    return torch.where(x < 0, small, large)


@QUANTIZERS.register_module()
class TwinUniformQuantizer(QuantizerBase):
    """Twin uniform fake quantizer (PTQ4ViT), per tensor, straight-through.

    ``scale`` holds the two steps ``(small, large)``. 'softmax' (inputs in
    [0, 1]): ``large = 2^m * small``; the large range is fixed to end at 1 (step
    ``1 / (2^(bits-1) - 1)``), the small one covers ``[0, 2^(bits-1) * small)``
    for the many tiny probabilities; calibration picks ``m`` in :data:`SHIFTS`,
    the smallest on a tie. 'gelu': ``2^bits`` levels; the small range holds the
    negative values, ``2^(bits-1)`` codes of step ``0.16997 / 2^(bits-1)`` down
    to GELU's minimum; the large one the positive values, ``2^(bits-1)`` codes
    of a step calibration picks among PTQ4ViT's candidates
    (:data:`GELU_SEARCH`), the first on a tie. Candidates are ranked by the
    quantization MSE on a histogram of the calibration data (PTQ4ViT ranks them
    by a Hessian-guided metric of the layer's output; MSE is what every
    quantizer here uses).

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
        """Kind, bits, mode; 'gelu' also its negative codes, so that a state of
        the earlier 'gelu' grid (``2^(bits-1) - 1`` negative codes, steps tied by
        a power of two) is refused."""
        extra = dict(negative_levels=self.levels) if self.mode == 'gelu' else {}
        return dict(super().settings(), mode=self.mode, **extra)

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
        """``(..., 2)`` steps (small, large) for exponents ``shift``, float64:
        'softmax' ``large / 2^shift``; 'gelu' ``2^shift`` times the negative step
        as the positive one (the initial value, before calibration)."""
        power = torch.pow(2.0, shift.double())
        if self.mode == 'softmax':
            large = torch.full_like(power, 1.0 / (self.levels - 1))
            return torch.stack([large / power, large], -1)
        small = torch.full_like(power, -GELU_MIN / self.levels)
        return torch.stack([small, small * power], -1)

    def candidate_steps(self, max_val: Tensor) -> Tensor:
        """``(K, 2)`` step pairs the calibration chooses from, float64: 'softmax'
        one per shift in :data:`SHIFTS`; 'gelu' the negative step with each of
        PTQ4ViT's positive steps for the largest calibration value ``max_val``
        (:data:`GELU_SEARCH`; a ``max_val`` below float32's eps counts as eps)."""
        device = max_val.device
        if self.mode == 'softmax':
            return self._steps(torch.tensor(SHIFTS, device=device))
        alpha, beta, n = GELU_SEARCH
        factors = alpha + torch.arange(n, dtype=torch.float64, device=device) * (beta - alpha) / n
        top = max_val.double().reshape(()).clamp(min=torch.finfo(torch.float32).eps)
        large = factors * top / (self.levels - 0.5)
        return torch.stack([torch.full_like(large, -GELU_MIN / self.levels), large], -1)

    def _compute_qparams(self) -> Tuple[Tensor, Tensor]:
        stats = self.observer.reduced(self.calibrated.device)
        if stats.empty:
            raise self._no_statistics()
        steps = self.candidate_steps(stats.max_val.to(self.calibrated.device).max())
        errors = stats.step_mse(*self._step_function(steps))[:, 0]
        best = steps[errors.argmin()]  # first minimum: the smallest shift / factor on a tie
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
            negative = torch.arange(self.levels, dtype=torch.float64, device=steps.device) + 0.5
            bounds = [-(negative * small).flip(-1), split, half * large]
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


__all__ = [
    'TwinUniformQuantizer', 'twin_quantize', 'GELU_MIN', 'TWIN_MODES', 'SHIFTS', 'GELU_SEARCH'
]
