"""BackboneLatencyHook: the backbone's measured time next to its BitOPs."""
import statistics
import time
from typing import List, Optional

import torch
from mmdet.registry import HOOKS
from mmengine.dist import all_gather_object
from mmengine.hooks import Hook

from ..model_wrappers import unwrap


@HOOKS.register_module()
class BackboneLatencyHook(Hook):
    """Add the backbone's wall time per image, measured in the test iterations
    (not in a calibration), to the test metrics as ``mixaq/backbone_ms`` (the
    median over batches of a
    batch's backbone forward divided by its images, the first batch left out
    where there are others: it pays one-off costs such as compiling; the mean
    of the ranks' medians). A measured latency of the shared machine the test
    ran on, next to ``mixaq/bitops_speedup`` (:class:`BitOpsHook`), which counts
    operations; ``benchmarks/`` compares latencies side by side."""

    priority = 'NORMAL'

    def __init__(self) -> None:
        #: This rank's backbone time per image of each test batch (ms).
        self.per_image_ms: List[float] = []
        self._start: Optional[float] = None
        self._handles: list = []
        self._in_iteration = False  # not the forwards of a calibration

    def before_test_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._in_iteration = True

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._in_iteration = False

    def before_test_epoch(self, runner) -> None:
        self.per_image_ms = []
        backbone = unwrap(runner.model).backbone
        self._handles = [
            backbone.register_forward_pre_hook(self._before),
            backbone.register_forward_hook(self._after)
        ]

    def _synchronize(self, x: torch.Tensor) -> None:
        if x.device.type == 'cuda':
            torch.cuda.synchronize(x.device)

    def _before(self, module, args) -> None:
        if not self._in_iteration:
            return
        self._synchronize(args[0])
        self._start = time.perf_counter()

    def _after(self, module, args, output) -> None:
        self._synchronize(args[0])
        if self._start is not None and args[0].shape[0] > 0:
            seconds = time.perf_counter() - self._start
            self.per_image_ms.append(1000.0 * seconds / args[0].shape[0])
        self._start = None

    def after_test_epoch(self, runner, metrics: Optional[dict] = None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        medians = [m for m in all_gather_object(self._median()) if m is not None]
        if metrics is None or not medians:
            return
        value = round(statistics.mean(medians), 2)
        metrics['mixaq/backbone_ms'] = value
        # RuntimeInfoHook has already copied the metrics into the message hub,
        # from which the logger prints: add ours there too.
        runner.message_hub.update_scalar('test/mixaq/backbone_ms', value)

    def _median(self) -> Optional[float]:
        times = self.per_image_ms[1:] if len(self.per_image_ms) > 1 else self.per_image_ms
        return statistics.median(times) if times else None
