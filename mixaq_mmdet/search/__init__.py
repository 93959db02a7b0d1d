"""Per-pair window ratio search: NSGA-II over the low-bit (and prune) ratio of
every pair of blocks, accuracy against BitOPs.

:mod:`.nsga` is the search itself (pymoo; needs neither torch nor mmdet);
:mod:`.evaluator` measures a detector at any ratios on a fixed set of images;
:mod:`.detector_search` joins them with speedup targets and config output;
:mod:`.rules` holds what every search obeys (its space, its images, its rows).
"""
from .detector_search import (OBJECTIVES, check_targets, front_records, objective_fn, run_search,
                              save_json, speedup_band, uniform_candidates, uniform_ratio_at,
                              write_searched_config)
from .evaluator import (DEFAULT_REFERENCE_BUDGET_MB, DEFAULT_SEARCH_IMAGES, RatioEvaluator,
                        check_branches_calibrated)
from .nsga import (RATIO_GRID, Candidate, Evaluation, RatioSearchSpace, SearchResult, cost_range,
                   search_ratios)
from .rules import (CALIB_LOW_BIT_RATIO, SearchedRows, calibration_options, check_search_config,
                    rank_cache, ratio_space, search_evaluator, searched_rows)

__all__ = [
    'RATIO_GRID', 'Candidate', 'Evaluation', 'RatioSearchSpace', 'SearchResult', 'cost_range',
    'search_ratios', 'RatioEvaluator', 'check_branches_calibrated', 'DEFAULT_SEARCH_IMAGES',
    'DEFAULT_REFERENCE_BUDGET_MB', 'OBJECTIVES', 'check_targets', 'front_records', 'objective_fn',
    'run_search', 'save_json', 'speedup_band', 'uniform_candidates', 'uniform_ratio_at',
    'write_searched_config', 'CALIB_LOW_BIT_RATIO', 'SearchedRows', 'calibration_options',
    'check_search_config', 'rank_cache', 'ratio_space', 'search_evaluator', 'searched_rows'
]
