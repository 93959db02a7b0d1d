"""Hooks that report MixA-Q's cost next to the accuracy metrics."""
from typing import List, Optional, Sequence, Tuple

from mmdet.registry import HOOKS
from mmengine.dist import all_gather_object
from mmengine.hooks import Hook

from mixaq_mmdet.analysis import average_speedup, count_bitops
from mixaq_mmdet.models import QUANT_SCOPES
from ..model_wrappers import unwrap


@HOOKS.register_module()
class BitOpsHook(Hook):
    """Log the BitOPs speedup of the evaluated configuration with the test metrics.

    The speedup (uniform high-bit BitOPs over the configuration's, see
    :func:`mixaq_mmdet.analysis.count_bitops`) is computed at the real network
    input size of every evaluated image (after resize and padding) and averaged;
    it is added to the metrics as ``mixaq/bitops_speedup`` (mean over images),
    ``mixaq/bitops_speedup_pooled`` (summed BitOPs) and ``mixaq/act_bits`` (at
    the first evaluated size).
    Runs before the logger hook, so the values are printed with the mAP.

    Args:
        scope: what to count: None (default) the model's quantization scope
            (the backbone, or the detector when its neck and heads are
            quantized, see :func:`~mixaq_mmdet.models.quant_scope`); or
            'backbone' / 'detector' explicitly.
    """

    priority = 'NORMAL'

    def __init__(self, scope: Optional[str] = None) -> None:
        if scope is not None and scope not in QUANT_SCOPES:
            raise ValueError(f'scope must be None or one of {QUANT_SCOPES}, got {scope!r}')
        self.scope = scope
        self._shapes: List[Tuple[int, int]] = []

    def before_test_epoch(self, runner) -> None:
        self._shapes = []

    def after_test_iter(self,
                        runner,
                        batch_idx: int,
                        data_batch=None,
                        outputs: Optional[Sequence] = None) -> None:
        for sample in outputs or ():
            self._shapes.append(tuple(sample.metainfo['batch_input_shape']))

    def after_test_epoch(self, runner, metrics: Optional[dict] = None) -> None:
        if metrics is None:
            return
        shapes = [s for rank in all_gather_object(self._shapes) for s in rank]
        if not shapes:
            return
        model = unwrap(runner.model)
        stats = average_speedup(model, shapes, self.scope)
        values = {
            'mixaq/bitops_speedup': round(stats.mean, 4),
            'mixaq/bitops_speedup_pooled': round(stats.pooled, 4),
            'mixaq/act_bits': round(count_bitops(model, shapes[0], self.scope).act_bits, 3),
        }
        metrics.update(values)
        # RuntimeInfoHook has already copied the metrics into the message hub,
        # from which the logger prints: add ours there too.
        for key, value in values.items():
            runner.message_hub.update_scalar(f'test/{key}', value)
