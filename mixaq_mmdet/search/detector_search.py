"""The NSGA-II ratio search applied to a detector: objectives, speedup targets,
and the config files that carry a searched point to ``tools/test.py``."""
import json
import os
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from mmengine.logging import print_log

from .evaluator import RatioEvaluator
from .nsga import Candidate, Evaluation, RatioSearchSpace, SearchResult, search_ratios

#: What the search maximizes: COCO bbox mAP on the search images, or minus the
#: distortion of the neck's features against the float model (a cheap proxy).
OBJECTIVES = ('map', 'proxy')


def check_targets(targets: Sequence[float], tolerance: float) -> None:
    """Raise unless every target speedup is > 1 and the tolerance in [0, 1)."""
    if not 0 <= tolerance < 1:
        raise ValueError(f'the speedup tolerance must be in [0, 1), got {tolerance!r}')
    for target in targets:
        if not target - tolerance > 1.0:
            raise ValueError(f'target speedup {target!r} (tolerance {tolerance}) must exceed '
                             '1: the uniform high-bit model is speedup 1')


def speedup_band(uniform_cost: float, targets: Sequence[float],
                 tolerance: float) -> Tuple[float, float]:
    """The BitOPs interval of speedups ``[min(targets) - tolerance,
    max(targets) + tolerance]`` over ``uniform_cost``."""
    check_targets(targets, tolerance)
    return (uniform_cost / (max(targets) + tolerance), uniform_cost / (min(targets) - tolerance))


def objective_fn(evaluator: RatioEvaluator, objective: str) -> Callable[[Candidate], float]:
    """The accuracy the search maximizes (higher is better)."""
    if objective == 'map':
        return evaluator.bbox_map
    if objective == 'proxy':
        return lambda candidate: -evaluator.feature_distortion(candidate)
    raise ValueError(f'objective must be one of {OBJECTIVES}, got {objective!r}')


def uniform_candidates(space: RatioSearchSpace, cost_fn: Callable[[Candidate], float],
                       band: Optional[Tuple[float, float]]) -> List[Candidate]:
    """The same low-bit ratio on every pair, for the grid's ratios inside
    ``band``: seeds of the first population."""
    seeds = [space.uniform(r) for r in space.low_choices]
    if band is None:
        return seeds
    return [c for c in seeds if band[0] <= cost_fn(c) <= band[1]]


def uniform_ratio_at(evaluator: RatioEvaluator,
                     speedup: float,
                     step: float = 0.01,
                     prune: float = 0.0) -> Candidate:
    """The largest uniform low-bit ratio (on a ``step`` grid) whose speedup is
    at most ``speedup``: the one-ratio-for-all baseline a searched point must
    beat at equal or higher speedup."""
    uniform = evaluator.uniform_cost()
    num_pairs = evaluator.backbone.num_pairs
    best = Candidate((0.0, ) * num_pairs, (prune, ) * num_pairs)
    for k in range(int(round((1.0 - prune) / step)) + 1):
        ratio = round(k * step, 6)
        candidate = Candidate((ratio, ) * num_pairs, (prune, ) * num_pairs)
        if uniform / evaluator.cost(candidate) <= speedup + 1e-9:
            best = candidate
    return best


def run_search(
    evaluator: RatioEvaluator,
    space: RatioSearchSpace,
    objective: str,
    targets: Sequence[float] = (),
    tolerance: float = 0.02,
    pop_size: int = 16,
    generations: int = 8,
    seed: int = 0,
    cache_path: Optional[str] = None,
    on_generation: Optional[Callable[[int, int, SearchResult], None]] = None
) -> Tuple[SearchResult, Dict[float, Evaluation]]:
    """Search per-pair ratios (:func:`search_ratios`) on the evaluator's images.

    With ``targets`` the search stays inside their speedup band and the best
    point of each target's band ``target +- tolerance`` is returned with it.
    """
    measure = objective_fn(evaluator, objective)
    calls = []

    def accuracy(candidate: Candidate) -> float:
        calls.append(candidate)
        return measure(candidate)

    band = speedup_band(evaluator.uniform_cost(), targets, tolerance) if targets else None
    result = search_ratios(
        space,
        accuracy,
        evaluator.cost,
        band=band,
        pop_size=pop_size,
        generations=generations,
        seed=seed,
        cache_path=cache_path,
        initial=uniform_candidates(space, evaluator.cost, band)[:pop_size],
        on_generation=on_generation)
    print_log(
        f'search: {len(calls)} of {len(result.evaluations)} candidates evaluated anew '
        '(the others from the cache or outside the band)',
        logger='current')
    uniform = evaluator.uniform_cost()
    chosen = {t: result.best_in_band(speedup_band(uniform, [t], tolerance)) for t in targets}
    return result, chosen


def write_searched_config(base_config: str,
                          candidate: Candidate,
                          out_file: str,
                          note: str = '') -> str:
    """Write a config that inherits ``base_config`` with the searched per-pair
    ratios (``_base_`` relative to ``out_file``, so the pair can move together)."""
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    base = osp.relpath(osp.abspath(base_config), osp.dirname(osp.abspath(out_file)))
    lines = [f'# {line}' for line in note.splitlines()] + [
        f'_base_ = {base!r}', '', 'model = dict(', '    backbone=dict(',
        f'        low_bit_ratios={list(candidate.low_bit_ratios)!r},',
        f'        prune_ratios={list(candidate.prune_ratios)!r}))', ''
    ]
    with open(out_file, 'w') as f:
        f.write('\n'.join(lines))
    print_log(f'search: wrote {out_file}', logger='current')
    return out_file


def front_records(result: SearchResult, uniform_cost: float) -> List[dict]:
    """The Pareto front as JSON-ready records (ratios, accuracy, BitOPs, speedup)."""
    return [
        dict(
            low_bit_ratios=list(e.candidate.low_bit_ratios),
            prune_ratios=list(e.candidate.prune_ratios),
            accuracy=e.accuracy,
            bitops=e.cost,
            speedup=uniform_cost / e.cost) for e in result.front()
    ]


def save_json(obj, path: str) -> None:
    """Write ``obj`` as indented JSON (atomically)."""
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


__all__ = [
    'OBJECTIVES', 'check_targets', 'speedup_band', 'objective_fn', 'uniform_candidates',
    'uniform_ratio_at', 'run_search', 'write_searched_config', 'front_records', 'save_json'
]
