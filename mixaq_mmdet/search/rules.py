"""What every ratio search obeys, wherever it runs (``tools/search_ratios.py``,
the tables' in-process search): the ratios it may give a pair, the images it
may tune on, and the rows a searched point is reported as."""
import os
import os.path as osp
import shutil
from typing import Dict, NamedTuple, Optional

from mmengine.dist import get_rank, is_main_process

from ..ratios import MAX_RATIO
from .detector_search import uniform_ratio_at
from .evaluator import DEFAULT_SEARCH_IMAGES, RatioEvaluator
from .nsga import Candidate, Evaluation, RatioSearchSpace

#: Low-bit ratio of every pair (prune 0) while an FP model is calibrated for a
#: search: both branches of every pair see data.
CALIB_LOW_BIT_RATIO = 0.5


def calibration_options(low_bit_ratio: float = CALIB_LOW_BIT_RATIO) -> Dict[str, float]:
    """Config overrides under which a search's model is calibrated (an FP
    checkpoint) or loaded: ``low_bit_ratio`` on every pair, nothing pruned."""
    return {'model.backbone.low_bit_ratios': low_bit_ratio, 'model.backbone.prune_ratios': 0.0}


def check_search_config(cfg, config: str) -> None:
    """Raise unless ``cfg`` (loaded from ``config``) can be searched: a
    quantized MixA-Q test config with a search split."""
    if 'search_dataloader' not in cfg:
        raise ValueError(f'{config} has no search_dataloader: add one (a split disjoint '
                         'from val and the calibration images; see '
                         'configs/benchmark/ptq/ptq_uniform_w4a8_shapes.py)')
    if cfg.test_cfg.get('type') != 'PTQLoop':
        raise ValueError(f"{config}: test_cfg.type is {cfg.test_cfg.get('type')!r}; the "
                         'search needs a quantized MixA-Q config (PTQLoop)')


def ratio_space(num_pairs: int,
                max_ratio: float = MAX_RATIO,
                prune: bool = False) -> RatioSearchSpace:
    """The grid 0, 0.1, ..., ``max_ratio`` for every pair's low-bit ratio, and
    for its prune ratio with ``prune``."""
    if not 0 < max_ratio <= 1:
        raise ValueError(f'the largest ratio must be in (0, 1], got {max_ratio!r}')
    grid = tuple(round(0.1 * k, 1) for k in range(int(round(max_ratio * 10)) + 1))
    return RatioSearchSpace(num_pairs, grid, grid if prune else ())


def search_evaluator(loop,
                     search_dataloader: Dict,
                     num_images: Optional[int] = None,
                     seed: int = 0) -> RatioEvaluator:
    """The evaluator of a search on ``search_dataloader``'s split (a config)
    for ``loop``'s model (a prepared :class:`~mixaq_mmdet.engine.PTQLoop`):
    the images ``loop`` calibrated on are left out, and a split that shares an
    image with ``loop``'s val set is refused (results are measured on val)."""
    evaluator = RatioEvaluator(
        loop.model,
        search_dataloader['dataset'],
        num_images=num_images,
        max_images=DEFAULT_SEARCH_IMAGES,
        seed=seed,
        exclude=set(loop.calibration_image_paths()),
        batch_size=search_dataloader.get('batch_size', 8))
    val_set = loop.dataloader.dataset
    val = {val_set.get_data_info(i)['img_path'] for i in range(len(val_set))}
    overlap = sorted(val.intersection(evaluator.img_paths))
    if overlap:
        raise ValueError(f'the search split shares {len(overlap)} images with val (e.g. '
                         f'{overlap[0]}): results are measured on val, nothing may be '
                         'searched on it; point search_dataloader at another split')
    return evaluator


class SearchedRows(NamedTuple):
    """A target's searched point and the one-ratio-for-all baseline at equal
    or lower speedup (the same prune ratio on every pair as none)."""
    target: float
    searched: Candidate
    uniform: Candidate


def searched_rows(evaluator: RatioEvaluator, chosen: Dict[float,
                                                          Evaluation]) -> Dict[float, SearchedRows]:
    """The rows each target of a search is reported as."""
    uniform_cost = evaluator.uniform_cost()
    return {
        target:
        SearchedRows(target, point.candidate, uniform_ratio_at(evaluator,
                                                               uniform_cost / point.cost))
        for target, point in chosen.items()
    }


def rank_cache(path: str) -> str:
    """The search cache file this rank writes: ``path`` on rank 0; on the
    others a private copy of it, so that every rank resumes from the same
    evaluations (the same collective calls) while only rank 0 writes ``path``."""
    if is_main_process():
        return path
    private = f'{path}.rank{get_rank()}'
    if osp.isfile(path):
        shutil.copyfile(path, private)
    elif osp.isfile(private):
        os.remove(private)
    return private


__all__ = [
    'CALIB_LOW_BIT_RATIO', 'calibration_options', 'check_search_config', 'ratio_space',
    'search_evaluator', 'SearchedRows', 'searched_rows', 'rank_cache'
]
