"""OscillationHook: how many quantized weights flip between integer levels."""
from typing import Dict, Optional

import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from torch import Tensor

from .weight_grid import grid_weight_layers


@HOOKS.register_module()
class OscillationHook(Hook):
    """Log the weight oscillation of QAT (OFQ's measure of its problem).

    After every training iteration each quantized weight's integer code is
    compared with the previous iteration's. Every ``interval`` iterations it
    logs, over all quantized weights, ``train/weight_flip_rate``: the fraction
    whose integer code changed within the last ``window`` iterations, and
    ``train/weight_oscillation_rate``: the fraction that changed back, a flip
    against the direction of its previous one, within them (a weight that
    hovers on a rounding boundary). The state starts afresh with each run (a
    resumed run counts from the resume).

    Args:
        window: iterations a flip counts for, >= 1.
        interval: log every this many iterations, >= 1.
    """

    priority = 'LOW'

    def __init__(self, window: int = 100, interval: int = 50) -> None:
        for name, value in (('window', window), ('interval', interval)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'OscillationHook: {name} must be a positive int, got {value!r}')
        self.window = window
        self.interval = interval
        self._codes: Dict[str, Tensor] = {}
        self._direction: Dict[str, Tensor] = {}
        self._last_flip: Dict[str, Tensor] = {}
        self._last_oscillation: Dict[str, Tensor] = {}

    def before_train(self, runner) -> None:
        self._codes, self._direction = {}, {}
        self._last_flip, self._last_oscillation = {}, {}

    @torch.no_grad()
    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        iteration = runner.iter  # the iteration just run
        for name, layer in grid_weight_layers(runner.model):
            code = layer.weight_quantizer.integer_code(layer.weight).to(torch.int16)
            previous = self._codes.get(name)
            self._codes[name] = code
            if previous is None:
                never = torch.full_like(code, -2**31, dtype=torch.int64)
                self._direction[name] = torch.zeros_like(code, dtype=torch.int8)
                self._last_flip[name], self._last_oscillation[name] = never, never.clone()
                continue
            step = torch.sign(code - previous).to(torch.int8)
            flipped = step != 0
            back = flipped & (step == -self._direction[name])
            self._last_flip[name][flipped] = iteration
            self._last_oscillation[name][back] = iteration
            self._direction[name] = torch.where(flipped, step, self._direction[name])
        if self.every_n_train_iters(runner, self.interval) and self._codes:
            for key, last in (('weight_flip_rate', self._last_flip), ('weight_oscillation_rate',
                                                                      self._last_oscillation)):
                recent = sum(int((t > iteration - self.window).sum()) for t in last.values())
                total = sum(t.numel() for t in last.values())
                runner.message_hub.update_scalar(f'train/{key}', recent / max(total, 1))
