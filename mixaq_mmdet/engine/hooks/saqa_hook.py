"""SAQAHook: sparsity-aware quantization adaptation (random window ratios in QAT)."""
from typing import List, Optional, Tuple

from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.logging import print_log

from mixaq_mmdet.quantization import quantizers_of
from ..model_wrappers import unwrap
from ..ratio_sampling import MAX_RATIO, sample_uniform_sum_ratios


@HOOKS.register_module()
class SAQAHook(Hook):
    """Train every pair of blocks at random low-bit (and prune) ratios.

    Before every training iteration the per-pair low-bit ratios are drawn by
    :func:`~mixaq_mmdet.engine.sample_uniform_sum_ratios` from ``(seed,
    iteration)``: every rank draws the same, and a resumed run draws what the
    uninterrupted one drew. With ``prune_max_ratio`` the prune ratios are drawn
    too (an independent stream), and each pair's low-bit ratio is cut to
    ``1 - prune``. After the iteration the configured ratios are restored, so
    validation, testing and the setting recorded in checkpoints see them.

    Args:
        seed: seed of the draws; None: the run's seed (mmengine's
            ``randomness.seed``), so that another training seed draws other
            ratios.
        max_ratio: largest low-bit ratio of a pair, in (0, 0.8].
        prune_max_ratio: largest prune ratio, in (0, 0.8]; None: no pruning.
        concentration: Dirichlet concentration of the split over the pairs.
    """

    priority = 'NORMAL'

    def __init__(self,
                 seed: Optional[int] = None,
                 max_ratio: float = MAX_RATIO,
                 prune_max_ratio: Optional[float] = None,
                 concentration: float = 1.0) -> None:
        # the sampler validates every setting and names a bad value
        sample_uniform_sum_ratios(1, seed or 0, 0, max_ratio, concentration)
        if prune_max_ratio is not None:
            try:
                sample_uniform_sum_ratios(1, seed or 0, 0, prune_max_ratio, concentration)
            except ValueError as e:
                raise ValueError(f'SAQAHook prune_max_ratio: {e}') from None
        self.seed = seed
        self.max_ratio = max_ratio
        self.prune_max_ratio = prune_max_ratio
        self.concentration = concentration
        self._configured: Optional[Tuple[List[float], List[float]]] = None

    def ratios(self, num_pairs: int, iteration: int) -> Tuple[List[float], List[float]]:
        """The (low-bit, prune) ratios of ``iteration``."""
        low = sample_uniform_sum_ratios(
            num_pairs, self.seed, iteration, self.max_ratio, self.concentration, stream=0)
        if self.prune_max_ratio is None:
            return low, [0.0] * num_pairs
        prune = sample_uniform_sum_ratios(
            num_pairs, self.seed, iteration, self.prune_max_ratio, self.concentration, stream=1)
        return [min(r, 1.0 - p) for r, p in zip(low, prune)], prune

    def before_train(self, runner) -> None:
        backbone = unwrap(runner.model).backbone
        if not hasattr(backbone, 'set_ratios'):
            raise ValueError(f'SAQAHook needs a backbone with Two-Branch blocks '
                             f"(type='MixAQSwinTransformer'), got {type(backbone).__name__}")
        uncalibrated = [q.display_name for q in quantizers_of(backbone) if not q.is_calibrated]
        if uncalibrated:
            raise ValueError(
                f'SAQAHook draws low-bit ratios up to {self.max_ratio}, but '
                f'{len(uncalibrated)} quantizers are not calibrated (e.g. '
                f'{uncalibrated[0]}): set QATInitHook.calib_low_bit_ratios (e.g. 0.5) so '
                'that calibration reaches the low branch of every pair')
        self._configured = (list(backbone.low_bit_ratios), list(backbone.prune_ratios))
        if self.seed is None:
            self.seed = runner.seed
        print_log(
            f'SAQA: random ratios per iteration (seed {self.seed}, low <= '
            f'{self.max_ratio}, prune <= {self.prune_max_ratio}); configured ratios '
            f'{self._configured} for validation, testing and checkpoints',
            logger='current')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        backbone = unwrap(runner.model).backbone
        backbone.set_ratios(*self.ratios(backbone.num_pairs, runner.iter))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._restore(runner)

    def before_val_epoch(self, runner) -> None:
        self._restore(runner)

    def after_train(self, runner) -> None:
        self._restore(runner)

    def _restore(self, runner) -> None:
        if self._configured is not None:
            unwrap(runner.model).backbone.set_ratios(*self._configured)


__all__ = ['SAQAHook']
