"""NSGA-II ratio search (:mod:`mixaq_mmdet.search.nsga`) on toy objectives."""
import itertools
import json
import math
import os.path as osp
import subprocess
import sys
from typing import Callable, List, Tuple

import numpy as np
import pytest

from mixaq_mmdet.search.nsga import (RATIO_GRID, Candidate, Evaluation, RatioSearchSpace,
                                     SearchResult, cost_range, search_ratios)

PACKAGE_DIR = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'mixaq_mmdet')
NSGA_DIR = osp.join(PACKAGE_DIR, 'search', 'nsga')

# Per-pair weights: the later pairs matter more for cost, the earlier ones
# hurt accuracy more, so the front trades them off non-trivially.
COST_WEIGHTS = (3.0, 4.3, 2.2)
ACCURACY_WEIGHTS = (0.6, 0.3, 0.45)
PRUNE_COST_WEIGHT = 1.7
PRUNE_ACCURACY_WEIGHT = 0.9


def toy_cost(candidate: Candidate) -> float:
    """Decreasing in every ratio, never below 1."""
    return 10.0 - sum(
        w * (low + PRUNE_COST_WEIGHT * prune)
        for w, low, prune in zip(COST_WEIGHTS, candidate.low_bit_ratios, candidate.prune_ratios))


def toy_accuracy(candidate: Candidate) -> float:
    """Decreasing, convex loss in every ratio."""
    return 1.0 - sum(w * (low**1.5 + PRUNE_ACCURACY_WEIGHT * prune**2) for w, low, prune in zip(
        ACCURACY_WEIGHTS, candidate.low_bit_ratios, candidate.prune_ratios))


class Recorder:
    """An objective that records every candidate it is called with."""

    def __init__(self, fn: Callable[[Candidate], float]) -> None:
        self.fn = fn
        self.calls: List[Candidate] = []

    def __call__(self, candidate: Candidate) -> float:
        self.calls.append(candidate)
        return self.fn(candidate)


class Interrupted(Exception):
    pass


def all_candidates(space: RatioSearchSpace) -> List[Candidate]:
    upper = space.gene_upper_bounds()
    genes = itertools.product(*(range(u + 1) for u in upper))
    return [space.decode(g) for g in genes if space.feasible(g)]


def true_front(candidates: List[Candidate]) -> List[Tuple[float, float]]:
    """Brute-force non-dominated (accuracy, cost) points."""
    points = [(toy_accuracy(c), toy_cost(c)) for c in candidates]
    return sorted(
        {(a, c)
         for a, c in points if not any(oa >= a and oc <= c and (oa > a or oc < c)
                                       for oa, oc in points)},
        key=lambda p: p[1])


def as_records(result: SearchResult) -> List[Tuple[str, object, float]]:
    """Evaluations with nan as None, so that lists compare with ==."""
    return [(e.candidate.key(), e.accuracy if math.isfinite(e.accuracy) else None, e.cost)
            for e in result.evaluations]


# ----------------------------------------------------------------- the space


def test_ratio_grid():
    assert RATIO_GRID == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def test_space_encode_decode_round_trip():
    space = RatioSearchSpace(3, prune_choices=(0.0, 0.2, 0.4))
    assert space.num_genes == 6
    assert RatioSearchSpace(3).num_genes == 3
    candidate = Candidate((0.5, 0.3, 0.0), (0.2, 0.0, 0.4))
    genes = space.encode(candidate)
    assert genes.tolist() == [5, 3, 0, 1, 0, 2]
    assert space.decode(genes) == candidate
    assert space.decode([5.0, 3.0, 0.0, 1.0, 0.0, 2.0]) == candidate
    assert candidate.key() == '0.5,0.3,0|0.2,0,0.4'
    # A ratio within the tolerance of a choice is that choice.
    assert space.encode(Candidate((0.1 + 0.2, 0.0, 0.0), (0, 0, 0))).tolist()[0] == 3


def test_space_without_prune_genes_decodes_prune_zero():
    space = RatioSearchSpace(2)
    assert space.decode([8, 0]) == Candidate((0.8, 0.0), (0.0, 0.0))
    assert space.decode([8, 0]).key() == '0.8,0|0,0'
    assert space.encode(Candidate((0.8, 0.0), ())).tolist() == [8, 0]
    with pytest.raises(ValueError, match='no prune genes'):
        space.encode(Candidate((0.8, 0.0), (0.1, 0.0)))


def test_space_feasible_and_uniform():
    space = RatioSearchSpace(2, prune_choices=(0.0, 0.3, 0.5))
    assert space.feasible(space.encode(Candidate((0.7, 0.5), (0.3, 0.5))))
    assert not space.feasible(space.encode(Candidate((0.8, 0.5), (0.3, 0.5))))
    assert space.uniform(0.4, 0.3) == Candidate((0.4, 0.4), (0.3, 0.3))
    assert RatioSearchSpace(3).uniform(0.6) == Candidate((0.6, ) * 3, (0.0, ) * 3)
    with pytest.raises(ValueError, match='exceeds 1'):
        space.uniform(0.8, 0.5)
    with pytest.raises(ValueError, match='0.35'):
        space.uniform(0.35)
    assert space.to_dict() == {
        'num_pairs': 2,
        'low_choices': list(RATIO_GRID),
        'prune_choices': [0.0, 0.3, 0.5]
    }
    assert RatioSearchSpace.from_dict(space.to_dict()) == space


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_pairs=0), 'num_pairs must be a positive integer, got 0'),
    (dict(num_pairs=2.0), 'num_pairs must be a positive integer'),
    (dict(num_pairs=2, low_choices=(0.0, 1.2)), r'\[0, 1\], got 1.2'),
    (dict(num_pairs=2, low_choices=(-0.1, 0.5)), r'\[0, 1\], got -0.1'),
    (dict(num_pairs=2, prune_choices=(0.0, 1.5)), 'prune_choices.*1.5'),
    (dict(num_pairs=2, low_choices=()), 'at least one ratio'),
    (dict(num_pairs=2, low_choices=(0.0, 0.5, 0.5)), 'strictly increasing'),
    (dict(num_pairs=2, low_choices=(0.6, 0.8), prune_choices=(0.5, )), 'no feasible candidate'),
])
def test_space_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RatioSearchSpace(**kwargs)


def test_space_rejects_bad_genes_and_ratios():
    space = RatioSearchSpace(2)
    with pytest.raises(ValueError, match='0.25 is not one of the choices'):
        space.encode(Candidate((0.25, 0.0), (0.0, 0.0)))
    with pytest.raises(
            ValueError, match=r'gene 1 is 9, outside the valid '
            r'indices 0\.\.8'):
        space.decode([0, 9])
    with pytest.raises(ValueError, match='gene 0 must be an integer index'):
        space.decode([0.5, 1])
    with pytest.raises(ValueError, match='expected 2 genes'):
        space.decode([0, 1, 2])
    with pytest.raises(ValueError, match='3 low-bit ratios'):
        space.encode(Candidate((0.0, 0.1, 0.2), (0.0, 0.0)))


def test_cost_range():
    space = RatioSearchSpace(3)
    lowest, highest = cost_range(space, toy_cost)
    assert highest == pytest.approx(10.0)
    assert lowest == pytest.approx(10.0 - 0.8 * sum(COST_WEIGHTS))
    # With prune genes the cheapest corner has the most pruning (weight 1.7).
    pruned = RatioSearchSpace(3, prune_choices=(0.0, 0.2, 0.4, 0.6))
    lowest, highest = cost_range(pruned, toy_cost)
    brute = [toy_cost(c) for c in all_candidates(pruned)]
    assert (lowest, highest) == pytest.approx((min(brute), max(brute)))


# -------------------------------------------------------------- the results


def test_front_and_best_in_band():
    space = RatioSearchSpace(1)

    def evaluation(low: float, accuracy: float, cost: float) -> Evaluation:
        return Evaluation(space.uniform(low), accuracy, cost)

    result = SearchResult(
        space,
        [
            evaluation(0.0, 0.9, 10.0),
            evaluation(0.1, 0.8, 8.0),
            evaluation(0.2, 0.7, 9.0),  # dominated by 0.1
            evaluation(0.3, math.nan, 7.0),  # not evaluated
            evaluation(0.4, 0.6, 6.0),
        ])
    assert [e.candidate.low_bit_ratios[0] for e in result.front()] == [0.4, 0.1, 0.0]
    assert result.best_in_band((7.0, 9.0)).candidate == space.uniform(0.1)
    assert result.best_in_band((5.0, 11.0)).candidate == space.uniform(0.0)
    with pytest.raises(ValueError, match=r'band \[6.5, 7.5\]'):
        result.best_in_band((6.5, 7.5))


# --------------------------------------------------------------- the search


def test_search_recovers_the_true_front():
    """2 pairs, 81 candidates: NSGA-II finds every point of the brute-force
    front, and reports nothing that is dominated."""
    space = RatioSearchSpace(2)
    accuracy = Recorder(toy_accuracy)
    result = search_ratios(space, accuracy, toy_cost, pop_size=16, generations=12, seed=0)
    truth = true_front(all_candidates(space))
    found = [(e.accuracy, e.cost) for e in result.front()]
    assert len(truth) >= 10  # a front worth searching
    assert found == truth
    # Each distinct candidate evaluated once, and fewer than all of them.
    keys = [c.key() for c in accuracy.calls]
    assert len(keys) == len(set(keys)) == len(result.evaluations)
    assert len(keys) < 81
    for e in result.evaluations:
        assert e.accuracy == toy_accuracy(e.candidate)
        assert e.cost == toy_cost(e.candidate)


def test_search_inside_a_band():
    space = RatioSearchSpace(3)
    band = (6.5, 7.0)
    accuracy = Recorder(toy_accuracy)
    result = search_ratios(space, accuracy, toy_cost, band=band, pop_size=12, generations=6, seed=1)
    assert accuracy.calls, 'nothing was evaluated'
    for candidate in accuracy.calls:
        assert band[0] <= toy_cost(candidate) <= band[1], candidate
    scored = [e for e in result.evaluations if math.isfinite(e.accuracy)]
    assert len(scored) == len(accuracy.calls)
    # The repair moved every candidate into the band, so all were evaluated.
    assert all(math.isfinite(e.accuracy) for e in result.evaluations)
    best = result.best_in_band(band)
    assert best.accuracy == max(e.accuracy for e in scored)
    assert all(band[0] <= e.cost <= band[1] for e in result.front())
    # The repair puts the search in the band: it finds a good point of it.
    in_band = [toy_accuracy(c) for c in all_candidates(space) if band[0] <= toy_cost(c) <= band[1]]
    assert best.accuracy >= sorted(in_band)[-5]
    assert result.band == band


def test_search_respects_low_plus_prune_at_most_one():
    space = RatioSearchSpace(2, prune_choices=(0.0, 0.2, 0.4, 0.6))
    accuracy = Recorder(toy_accuracy)
    costs = Recorder(toy_cost)
    result = search_ratios(space, accuracy, costs, pop_size=16, generations=8, seed=3)
    assert accuracy.calls
    for candidate in accuracy.calls + costs.calls:
        for low, prune in zip(*candidate):
            assert low + prune <= 1 + 1e-9, candidate
    assert any(max(c.prune_ratios) > 0 for c in accuracy.calls)
    assert all(math.isfinite(e.accuracy) for e in result.evaluations)
    # The cheapest point of the front prunes where pruning is cheap.
    assert max(result.front()[0].candidate.prune_ratios) > 0


def test_search_with_prune_genes_in_a_band():
    space = RatioSearchSpace(3, prune_choices=(0.0, 0.2, 0.4))
    band = (5.0, 5.5)
    accuracy = Recorder(toy_accuracy)
    result = search_ratios(space, accuracy, toy_cost, band=band, pop_size=8, generations=4, seed=0)
    assert len(accuracy.calls) == len(result.evaluations) > 8
    for candidate in accuracy.calls:
        assert band[0] <= toy_cost(candidate) <= band[1]
        assert all(lo + pr <= 1 + 1e-9 for lo, pr in zip(*candidate))


def test_initial_candidates_come_first():
    space = RatioSearchSpace(3)
    initial = [space.uniform(0.3), space.uniform(0.5)]
    accuracy = Recorder(toy_accuracy)
    search_ratios(space, accuracy, toy_cost, pop_size=6, generations=1, initial=initial)
    assert accuracy.calls[:2] == initial
    assert len(accuracy.calls) == 6


def test_same_seed_same_search():
    space = RatioSearchSpace(3)
    band = (6.0, 7.5)
    runs = [
        as_records(
            search_ratios(
                space, toy_accuracy, toy_cost, band=band, pop_size=8, generations=5, seed=seed))
        for seed in (7, 7, 8)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_on_generation_reports_every_generation():
    space = RatioSearchSpace(2)
    reports = []
    result = search_ratios(
        space,
        toy_accuracy,
        toy_cost,
        pop_size=8,
        generations=4,
        on_generation=lambda g, n, partial: reports.append((g, n, len(partial.evaluations))))
    assert [(g, n) for g, n, _ in reports] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    counts = [count for _, _, count in reports]
    assert counts == sorted(counts) and counts[0] == 8
    assert counts[-1] == len(result.evaluations)


def test_interrupted_search_resumes_from_the_cache(tmp_path):
    """A search that dies part way resumes from its cache: the rerun evaluates
    only what is missing and ends exactly where an uninterrupted run ends; a
    third run evaluates nothing."""
    space = RatioSearchSpace(3, prune_choices=(0.0, 0.2))
    settings = dict(band=(6.0, 7.5), pop_size=8, generations=6, seed=5)

    def accuracy_drawing_global_random(candidate: Candidate) -> float:
        # Resuming skips calls: the search must not depend on global state
        # the objective touches.
        np.random.random()
        return toy_accuracy(candidate)

    full_accuracy = Recorder(accuracy_drawing_global_random)
    full = search_ratios(
        space, full_accuracy, toy_cost, cache_path=str(tmp_path / 'full.json'), **settings)
    total = len(full_accuracy.calls)
    assert total > 12

    stop_after = total // 2

    def failing(candidate: Candidate) -> float:
        if len(partial_calls) == stop_after:
            raise Interrupted
        partial_calls.append(candidate)
        return accuracy_drawing_global_random(candidate)

    partial_calls: List[Candidate] = []
    cache = tmp_path / 'cache.json'
    with pytest.raises(Interrupted):
        search_ratios(space, failing, toy_cost, cache_path=str(cache), **settings)
    saved = json.loads(cache.read_text())
    assert len([a for a, _ in saved['evaluations'].values() if a is not None]) == stop_after

    resumed_accuracy = Recorder(accuracy_drawing_global_random)
    resumed = search_ratios(space, resumed_accuracy, toy_cost, cache_path=str(cache), **settings)
    assert len(resumed_accuracy.calls) == total - stop_after
    assert not set(c.key() for c in resumed_accuracy.calls) & set(c.key() for c in partial_calls)
    assert as_records(resumed) == as_records(full)
    assert json.loads(cache.read_text()) == json.loads((tmp_path / 'full.json').read_text())

    replay_accuracy = Recorder(toy_accuracy)
    replay = search_ratios(space, replay_accuracy, toy_cost, cache_path=str(cache), **settings)
    assert replay_accuracy.calls == []
    assert as_records(replay) == as_records(full)
    assert [(e.candidate, e.accuracy) for e in replay.front()] == [(e.candidate, e.accuracy)
                                                                   for e in full.front()]


def test_cache_file_content(tmp_path):
    cache = tmp_path / 'sub' / 'search.json'
    space = RatioSearchSpace(2)
    result = search_ratios(
        space,
        toy_accuracy,
        toy_cost,
        band=(7.0, 8.0),
        pop_size=4,
        generations=2,
        seed=2,
        cache_path=str(cache),
        initial=[space.uniform(0.4)])
    content = json.loads(cache.read_text())
    assert content['space'] == space.to_dict()
    assert content['settings'] == {
        'pop_size': 4,
        'generations': 2,
        'seed': 2,
        'band': [7.0, 8.0],
        'initial': ['0.4,0.4|0,0']
    }
    assert list(content['evaluations']) == [e.candidate.key() for e in result.evaluations]
    for e in result.evaluations:
        accuracy, cost = content['evaluations'][e.candidate.key()]
        assert cost == e.cost
        assert accuracy == (e.accuracy if math.isfinite(e.accuracy) else None)
    assert [p.name for p in cache.parent.iterdir()] == ['search.json']


def test_band_the_repair_rarely_reaches(tmp_path):
    """One candidate (0, 0.6) costs 7.42, in the band; the repair gives up on
    most others, which stay unevaluated (nan, null in the cache) and never
    enter the front; a rerun from the cache replays them all."""
    space = RatioSearchSpace(2)
    band = (7.4, 7.45)
    in_band = [c for c in all_candidates(space) if band[0] <= toy_cost(c) <= band[1]]
    assert [c.key() for c in in_band] == ['0,0.6|0,0']
    cache = str(tmp_path / 'search.json')
    accuracy = Recorder(toy_accuracy)
    result = search_ratios(
        space, accuracy, toy_cost, band=band, pop_size=8, generations=3, cache_path=cache)
    assert accuracy.calls == in_band
    assert any(math.isnan(e.accuracy) for e in result.evaluations)
    assert [e.candidate for e in result.front()] == in_band
    assert result.best_in_band(band).candidate == in_band[0]
    saved = json.loads(open(cache).read())['evaluations']
    assert sum(a is None for a, _ in saved.values()) == len(saved) - 1

    rerun_accuracy = Recorder(toy_accuracy)
    rerun = search_ratios(
        space, rerun_accuracy, toy_cost, band=band, pop_size=8, generations=3, cache_path=cache)
    assert rerun_accuracy.calls == []
    assert as_records(rerun) == as_records(result)


@pytest.mark.parametrize('change, message', [
    (dict(seed=1), 'seed: cached 0, now 1'),
    (dict(generations=3), 'generations: cached 2, now 3'),
    (dict(band=(7.0, 9.0)), 'band'),
    (dict(space=RatioSearchSpace(3)), 'space'),
])
def test_cache_of_another_search_is_refused(tmp_path, change, message):
    cache = str(tmp_path / 'search.json')
    settings = dict(
        space=RatioSearchSpace(2),
        band=(7.0, 8.0),
        pop_size=4,
        generations=2,
        seed=0,
        cache_path=cache)
    search_ratios(accuracy_fn=toy_accuracy, cost_fn=toy_cost, **settings)
    settings.update(change)
    calls = Recorder(toy_accuracy)
    with pytest.raises(ValueError, match=message) as error:
        search_ratios(accuracy_fn=calls, cost_fn=toy_cost, **settings)
    assert 'delete it or use another cache_path' in str(error.value)
    assert cache in str(error.value)
    assert calls.calls == []


# -------------------------------------------------------------- bad inputs


def test_unreachable_band_names_band_and_range():
    calls = Recorder(toy_accuracy)
    with pytest.raises(ValueError) as error:
        search_ratios(RatioSearchSpace(2), calls, toy_cost, band=(1.0, 2.0))
    message = str(error.value)
    assert '[1, 2]' in message  # the band
    assert '[4.16, 10]' in message  # the reachable costs: 10 - 0.8 * 7.3
    assert calls.calls == []


@pytest.mark.parametrize('kwargs, message', [
    (dict(pop_size=2), 'pop_size must be an integer >= 4, got 2'),
    (dict(pop_size=8.0), 'pop_size must be an integer >= 4, got 8.0'),
    (dict(generations=0), 'generations must be an integer >= 1, got 0'),
    (dict(band=(8.0, 7.0)), r'0 < lo <= hi, got \(8.0, 7.0\)'),
    (dict(band=(0.0, 7.0)), r'0 < lo <= hi'),
    (dict(band=7.0), 'band must be a \\(lo, hi\\) pair'),
    (dict(initial=[Candidate((0.25, 0.0), (0.0, 0.0))]),
     'initial candidate 0 .* outside the search space.*0.25'),
    (dict(initial=[Candidate((0.2, 0.0, 0.1), (0.0, 0.0, 0.0))]),
     'initial candidate 0 .* 3 low-bit ratios'),
    (dict(initial=[RatioSearchSpace(2).uniform(0.1)] * 5,
          pop_size=4), '5 initial candidates do not fit'),
])
def test_search_rejects_bad_arguments(kwargs, message):
    calls = Recorder(toy_accuracy)
    with pytest.raises(ValueError, match=message):
        search_ratios(RatioSearchSpace(2), calls, toy_cost, **kwargs)
    assert calls.calls == []


def test_non_finite_accuracy_is_an_error():
    with pytest.raises(ValueError, match='accuracy_fn returned nan'):
        search_ratios(RatioSearchSpace(2), lambda c: math.nan, toy_cost, pop_size=4, generations=1)


# ------------------------------------------------------------- standalone


def test_runs_without_the_detection_stack():
    """The nsga package loaded by path, with torch, mmengine and mmdet blocked
    and mixaq_mmdet's __init__ (which registers the detection stack) not run,
    still searches; of mixaq_mmdet it needs only the ratios module."""
    code = f'''
import importlib.util, json, os, sys, types
for name in ('torch', 'mmdet', 'mmengine'):
    sys.modules[name] = None
package = types.ModuleType('mixaq_mmdet')
package.__path__ = [{PACKAGE_DIR!r}]
sys.modules['mixaq_mmdet'] = package
spec = importlib.util.spec_from_file_location(
    'standalone_nsga', os.path.join({NSGA_DIR!r}, '__init__.py'),
    submodule_search_locations=[{NSGA_DIR!r}])
nsga = importlib.util.module_from_spec(spec)
sys.modules['standalone_nsga'] = nsga
spec.loader.exec_module(nsga)
space = nsga.RatioSearchSpace(2, prune_choices=(0.0, 0.2))
cost = lambda c: 10 - sum(c.low_bit_ratios) - 2 * sum(c.prune_ratios)
accuracy = lambda c: 1 - sum(r * r for r in c.low_bit_ratios + c.prune_ratios)
result = nsga.search_ratios(space, accuracy, cost, band=(8.5, 9.5),
                            pop_size=6, generations=3, seed=0)
best = result.best_in_band((8.5, 9.5))
blocked = [n for n in ('torch', 'mmdet', 'mmengine')
           if sys.modules.get(n) is not None]
ours = sorted(n for n in sys.modules if n.startswith('mixaq_mmdet.'))
print(json.dumps(dict(evaluations=len(result.evaluations),
                      best=best.candidate.key(), cost=best.cost,
                      blocked=blocked, ours=ours)))
'''
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report['evaluations'] > 0
    assert 8.5 <= report['cost'] <= 9.5
    assert report['blocked'] == []
    assert report['ours'] == ['mixaq_mmdet.ratios']
