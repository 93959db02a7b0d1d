"""ConfidenceGuidedAnnealingHook: OFQ's end of training, confident weights frozen."""
from numbers import Integral, Real
from typing import Dict, List, Optional, Tuple, Union

import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from torch import Tensor

from .weight_grid import grid_weight_layers


@HOOKS.register_module()
class ConfidenceGuidedAnnealingHook(Hook):
    """Confidence-guided annealing (CGA, OFQ): from ``start`` to the end of
    training only the quantized weights near a rounding boundary train.

    Before every iteration from ``start`` on, each quantized weight whose
    position on its quantizer's integer grid lies farther than
    ``boundary_range`` from a rounding boundary (half way between two integer
    codes of the quantizer's range; clamped weights are far from all) is
    confident: its gradient is zeroed and, after the optimizer step, its
    value restored, so momentum and weight decay do not move it either. The
    others, the weights that oscillate across a boundary, keep training while
    the learning rate anneals and settle on one side. OFQ uses
    ``boundary_range`` 0.005-0.007 over its last epochs. The fraction frozen is
    logged as ``train/cga_frozen_rate``.

    Args:
        start: first iteration of the annealing: an int (0-based iteration) or
            a float in (0, 1), a fraction of the training's iterations. It
            must come before the end of training.
        boundary_range: half-width, in integer steps, of the band around a
            rounding boundary whose weights keep training; in (0, 0.5).
    """

    priority = 'NORMAL'

    def __init__(self, start: Union[int, float] = 0.8, boundary_range: float = 0.005) -> None:
        if isinstance(start, bool) or not isinstance(start, Real) or (isinstance(
                start, Integral) and start < 0) or (not isinstance(start, Integral)
                                                    and not 0.0 < start < 1.0):
            raise ValueError('ConfidenceGuidedAnnealingHook: start must be an iteration (int '
                             f'>= 0) or a fraction of training in (0, 1), got {start!r}')
        if isinstance(
                boundary_range,
                bool) or not isinstance(boundary_range, Real) or not 0.0 < boundary_range < 0.5:
            raise ValueError('ConfidenceGuidedAnnealingHook: boundary_range must be in (0, 0.5) '
                             f'integer steps, got {boundary_range!r}')
        self.start = start
        self.boundary_range = float(boundary_range)
        self.start_iter: Optional[int] = None
        self._frozen: List[Tuple[Tensor, Tensor, Tensor]] = []
        self._handles: List = []

    def before_train(self, runner) -> None:
        max_iters = runner.max_iters
        start = self.start if isinstance(self.start, Integral) else int(self.start * max_iters)
        if start >= max_iters:
            raise ValueError(f'ConfidenceGuidedAnnealingHook: start={self.start!r} is iteration '
                             f'{start}, at or after the end of training ({max_iters} '
                             'iterations): the annealing would never run')
        if not grid_weight_layers(runner.model):
            raise ValueError('ConfidenceGuidedAnnealingHook: the model has no quantized weights '
                             'on an integer grid (StatsQQuantizer, LSQQuantizer, '
                             'UniformQuantizer) to anneal')
        self.start_iter = start

    @torch.no_grad()
    def before_train_iter(self, runner, batch_idx: int, data_batch: Optional[dict] = None) -> None:
        if runner.iter < self.start_iter:
            return
        frozen_weights = total = 0
        for _, layer in grid_weight_layers(runner.model):
            weight = layer.weight
            quantizer = layer.weight_quantizer
            position = quantizer.grid_position(weight)
            # the boundaries lie between two codes of the range: a clamped
            # weight is as confident as can be
            low, high = quantizer.code_range
            boundary = torch.clamp(torch.floor(position) + 0.5, low + 0.5, high - 0.5)
            frozen = (position - boundary).abs() > self.boundary_range
            self._frozen.append((weight, frozen, weight.detach().clone()))
            self._handles.append(weight.register_hook(_masked(frozen)))
            frozen_weights += int(frozen.sum())
            total += frozen.numel()
        runner.message_hub.update_scalar('train/cga_frozen_rate', frozen_weights / max(total, 1))

    @torch.no_grad()
    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: Optional[dict] = None,
                         outputs: Optional[Dict] = None) -> None:
        for weight, frozen, value in self._frozen:
            weight.copy_(torch.where(frozen, value, weight))
        for handle in self._handles:
            handle.remove()
        self._frozen, self._handles = [], []


def _masked(frozen: Tensor):

    def hook(grad: Tensor) -> Tensor:
        return grad.masked_fill(frozen, 0)

    return hook
