"""NSGA-II search of MixA-Q's per-pair low-bit (and prune) ratios.

A MixA-Q Swin backbone runs the windows of each pair of consecutive blocks at
high or low activation bits, and may skip some of them. A configuration gives
every pair a low-bit ratio (fraction of its windows at low bits) and a prune
ratio (fraction skipped), with ``low + prune <= 1`` per pair. This module
searches those ratios with pymoo's NSGA-II for the trade-off between accuracy
(maximised; expensive, a detector evaluation) and cost (minimised; cheap, an
analytic BitOPs count), usually inside a target cost band.

Genes are integer indices into the ratio choices: the ``num_pairs`` low-bit
genes first, then (when the space has prune choices) the ``num_pairs`` prune
genes. The search follows pymoo's integer recipe (integer random sampling, SBX
and polynomial mutation on floats rounded back to integers, duplicates
eliminated) plus a repair that makes every candidate feasible and steers its
cost into the band, so the expensive accuracy is only spent where it counts.
Every evaluation can be cached in a JSON file, so an interrupted search resumes
where it stopped and a finished one replays without evaluating anything.

Only the standard library, numpy and pymoo are imported, so the search can run
(and be tested) without the detection stack.
"""
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import (Any, Callable, Dict, List, NamedTuple, Optional, Sequence,
                    Tuple)

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.callback import Callback
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.operators.sampling.rnd import IntegerRandomSampling
from pymoo.optimize import minimize

__all__ = [
    'RATIO_GRID', 'Candidate', 'RatioSearchSpace', 'Evaluation',
    'SearchResult', 'cost_range', 'search_ratios'
]

RATIO_GRID: Tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(9))
"""The paper's ratio choices: 0, 0.1, ..., 0.8."""

RATIO_TOLERANCE = 1e-9
"""Tolerance for matching a ratio to a choice and for ``low + prune <= 1``."""

CACHE_FORMAT = 'mixaq_mmdet.search.nsga/1'

Band = Tuple[float, float]
Genes = Tuple[int, ...]


def _format_ratio(ratio: float) -> str:
    """Short, stable text of a ratio (``0`` for 0.0, ``0.3`` for 0.3)."""
    return format(float(ratio), '.12g')


class Candidate(NamedTuple):
    """Per-pair ratios of one configuration (pair order of the backbone)."""
    low_bit_ratios: Tuple[float, ...]
    prune_ratios: Tuple[float, ...]

    def key(self) -> str:
        """Stable text of the candidate, e.g. ``"0.5,0.3|0,0"``; the cache's
        key, read back by :func:`_candidate_from_key`."""
        return (','.join(_format_ratio(r) for r in self.low_bit_ratios) +
                '|' + ','.join(_format_ratio(r) for r in self.prune_ratios))


def _candidate_from_key(key: str) -> Candidate:
    """The candidate that :meth:`Candidate.key` wrote as ``key``."""
    low_text, separator, prune_text = key.partition('|')
    if not separator:
        raise ValueError(f'candidate key {key!r} has no "|" between the low-bit '
                         'ratios and the prune ratios')

    def ratios(text: str) -> Tuple[float, ...]:
        return tuple(float(part) for part in text.split(',')) if text else ()

    try:
        return Candidate(ratios(low_text), ratios(prune_text))
    except ValueError:
        raise ValueError(f'candidate key {key!r} is not comma-separated '
                         'numbers around a "|"') from None


def _validate_choices(name: str, choices: Any, allow_empty: bool
                      ) -> Tuple[float, ...]:
    """``choices`` as a tuple of floats, checked to be in [0, 1] and strictly
    increasing (so a gene index orders its ratios)."""
    try:
        values = tuple(choices)
    except TypeError:
        raise ValueError(f'{name} must be a sequence of ratios, got '
                         f'{choices!r}') from None
    if not values and not allow_empty:
        raise ValueError(f'{name} must hold at least one ratio, got {choices!r}')
    for value in values:
        if (isinstance(value, bool) or not isinstance(value, Real)
                or not 0.0 <= float(value) <= 1.0):
            raise ValueError(f'{name} must be ratios in [0, 1], got {value!r} '
                             f'in {choices!r}')
    values = tuple(float(value) for value in values)
    for previous, value in zip(values, values[1:]):
        if value <= previous:
            raise ValueError(f'{name} must be strictly increasing, got '
                             f'{value!r} after {previous!r} in {choices!r}')
    return values


def _index_of(ratio: Any, choices: Tuple[float, ...], what: str) -> int:
    """Index of the choice within :data:`RATIO_TOLERANCE` of ``ratio``."""
    if (not isinstance(ratio, bool) and isinstance(ratio, Real)
            and math.isfinite(float(ratio))):
        for index, choice in enumerate(choices):
            if abs(float(ratio) - choice) <= RATIO_TOLERANCE:
                return index
    raise ValueError(f'{what} {ratio!r} is not one of the choices {choices}')


@dataclass(frozen=True)
class RatioSearchSpace:
    """The ratios a search may give each pair of blocks.

    ``prune_choices`` empty means no prune genes (nothing pruned anywhere);
    otherwise every pair gets a prune gene too, and a candidate is feasible
    when ``low + prune <= 1`` in every pair.
    """
    num_pairs: int
    low_choices: Tuple[float, ...] = RATIO_GRID
    prune_choices: Tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if (isinstance(self.num_pairs, bool)
                or not isinstance(self.num_pairs, Integral)
                or self.num_pairs < 1):
            raise ValueError('num_pairs must be a positive integer, got '
                             f'{self.num_pairs!r}')
        object.__setattr__(self, 'num_pairs', int(self.num_pairs))
        low = _validate_choices('low_choices', self.low_choices, False)
        prune = _validate_choices('prune_choices', self.prune_choices, True)
        if prune and low[0] + prune[0] > 1.0 + RATIO_TOLERANCE:
            raise ValueError(
                f'no feasible candidate: the smallest low-bit ratio {low[0]} '
                f'plus the smallest prune ratio {prune[0]} exceeds 1')
        object.__setattr__(self, 'low_choices', low)
        object.__setattr__(self, 'prune_choices', prune)

    @property
    def has_prune_genes(self) -> bool:
        """Whether candidates carry a prune gene per pair."""
        return bool(self.prune_choices)

    @property
    def num_genes(self) -> int:
        """Genes per candidate: one low-bit gene per pair, plus one prune gene
        per pair when the space has prune choices."""
        return self.num_pairs * (2 if self.has_prune_genes else 1)

    def gene_upper_bounds(self) -> np.ndarray:
        """Largest index of every gene (the lowest is 0)."""
        bounds = [len(self.low_choices) - 1] * self.num_pairs
        if self.has_prune_genes:
            bounds += [len(self.prune_choices) - 1] * self.num_pairs
        return np.array(bounds, dtype=np.int64)

    def _gene_indices(self, genes: Any) -> Genes:
        """``genes`` as a tuple of ints, checked for length, integrality and
        range."""
        values = np.asarray(genes).reshape(-1)
        if values.size != self.num_genes:
            layout = ('a low-bit and a prune gene per pair'
                      if self.has_prune_genes else 'a low-bit gene per pair')
            raise ValueError(f'expected {self.num_genes} genes ({layout}, '
                             f'{self.num_pairs} pairs), got {values.size}: '
                             f'{values.tolist()}')
        upper = self.gene_upper_bounds()
        indices = []
        for position, value in enumerate(values):
            if not (np.issubdtype(type(value), np.number)
                    and not isinstance(value, (bool, np.bool_))
                    and math.isfinite(float(value))
                    and float(value) == math.floor(float(value))):
                raise ValueError(f'gene {position} must be an integer index, '
                                 f'got {value.item()!r}')
            index = int(value)
            if not 0 <= index <= upper[position]:
                raise ValueError(f'gene {position} is {index}, outside the '
                                 f'valid indices 0..{upper[position]}')
            indices.append(index)
        return tuple(indices)

    def decode(self, genes: Any) -> Candidate:
        """The candidate of integer gene indices (prune 0 everywhere when the
        space has no prune genes)."""
        indices = self._gene_indices(genes)
        low = tuple(self.low_choices[i] for i in indices[:self.num_pairs])
        if self.has_prune_genes:
            prune = tuple(self.prune_choices[i] for i in indices[self.num_pairs:])
        else:
            prune = (0.0, ) * self.num_pairs
        return Candidate(low, prune)

    def encode(self, candidate: Candidate) -> np.ndarray:
        """Gene indices of ``candidate``, whose ratios must be choices of this
        space (an empty ``prune_ratios`` means nothing pruned)."""
        low, prune = candidate
        low, prune = tuple(low), tuple(prune)
        if len(low) != self.num_pairs:
            raise ValueError(f'candidate {candidate!r} has {len(low)} low-bit '
                             f'ratios, the space has {self.num_pairs} pairs')
        if not prune:
            prune = (0.0, ) * self.num_pairs
        if len(prune) != self.num_pairs:
            raise ValueError(f'candidate {candidate!r} has {len(prune)} prune '
                             f'ratios, the space has {self.num_pairs} pairs')
        genes = [
            _index_of(ratio, self.low_choices, f'low-bit ratio of pair {pair}')
            for pair, ratio in enumerate(low)
        ]
        if self.has_prune_genes:
            genes += [
                _index_of(ratio, self.prune_choices,
                          f'prune ratio of pair {pair}')
                for pair, ratio in enumerate(prune)
            ]
        else:
            for pair, ratio in enumerate(prune):
                _index_of(ratio, (0.0, ),
                          f'prune ratio of pair {pair} (the space has no '
                          'prune genes)')
        return np.array(genes, dtype=np.int64)

    def feasible(self, genes: Any) -> bool:
        """Whether ``low + prune <= 1`` in every pair."""
        low, prune = self.decode(genes)
        return all(l + p <= 1.0 + RATIO_TOLERANCE for l, p in zip(low, prune))

    def uniform(self, low: float, prune: float = 0.0) -> Candidate:
        """The feasible candidate with the same ratios in every pair."""
        if low + prune > 1.0 + RATIO_TOLERANCE:
            raise ValueError(f'uniform low-bit ratio {low!r} plus prune ratio '
                             f'{prune!r} exceeds 1')
        return self.decode(
            self.encode(
                Candidate((low, ) * self.num_pairs,
                          (prune, ) * self.num_pairs)))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready description (for the cache file)."""
        return {
            'num_pairs': self.num_pairs,
            'low_choices': list(self.low_choices),
            'prune_choices': list(self.prune_choices),
        }

    @classmethod
    def from_dict(cls, description: Dict[str, Any]) -> 'RatioSearchSpace':
        """The space that :meth:`to_dict` described."""
        return cls(description['num_pairs'],
                   tuple(description['low_choices']),
                   tuple(description['prune_choices']))


class Evaluation(NamedTuple):
    """One evaluated candidate; ``accuracy`` is nan when it was not evaluated
    (infeasible, or its cost outside the band)."""
    candidate: Candidate
    accuracy: float
    cost: float


def _dominates(a: Evaluation, b: Evaluation) -> bool:
    """Whether ``a`` is at least as accurate and as cheap as ``b``, and
    strictly better in one of the two."""
    return (a.accuracy >= b.accuracy and a.cost <= b.cost
            and (a.accuracy > b.accuracy or a.cost < b.cost))


def _in_band(cost: float, band: Optional[Band]) -> bool:
    return band is None or band[0] <= cost <= band[1]


@dataclass
class SearchResult:
    """Everything a search evaluated (in order of first evaluation)."""
    space: RatioSearchSpace
    evaluations: List[Evaluation] = field(default_factory=list)
    band: Optional[Band] = None

    def front(self) -> List[Evaluation]:
        """The non-dominated evaluations (max accuracy, min cost) among those
        with a finite accuracy, cheapest first."""
        scored = [e for e in self.evaluations if math.isfinite(e.accuracy)]
        front = [
            e for e in scored if not any(_dominates(other, e) for other in scored)
        ]
        return sorted(front,
                      key=lambda e: (e.cost, -e.accuracy, e.candidate.key()))

    def best_in_band(self, band: Tuple[float, float]) -> Evaluation:
        """The most accurate evaluation with ``lo <= cost <= hi`` (the cheaper
        one on a tie)."""
        lo, hi = _validate_band(band)
        inside = [
            e for e in self.evaluations
            if math.isfinite(e.accuracy) and lo <= e.cost <= hi
        ]
        if not inside:
            scored = [e.cost for e in self.evaluations
                      if math.isfinite(e.accuracy)]
            seen = (f'evaluated costs span [{min(scored):.6g}, {max(scored):.6g}]'
                    if scored else 'no candidate has an accuracy')
            raise ValueError(f'no evaluated candidate has its cost in the band '
                             f'[{lo:.6g}, {hi:.6g}]; {seen}')
        return max(inside, key=lambda e: (e.accuracy, -e.cost))


def _validate_band(band: Any) -> Band:
    """``band`` as ``(lo, hi)`` floats with ``0 < lo <= hi``."""
    try:
        lo, hi = band
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError('band must be a (lo, hi) pair of costs, got '
                         f'{band!r}') from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ValueError('band must be finite costs with 0 < lo <= hi, got '
                         f'{band!r}')
    return lo, hi


def _checked_cost(cost_fn: Callable[[Candidate], float],
                  candidate: Candidate) -> float:
    cost = cost_fn(candidate)
    if (isinstance(cost, bool) or not isinstance(cost, Real)
            or not math.isfinite(float(cost))):
        raise ValueError(f'cost_fn returned {cost!r} for candidate '
                         f'{candidate.key()}; it must return a finite number')
    return float(cost)


def _maximal_pair_corners(space: RatioSearchSpace
                          ) -> List[Tuple[int, Optional[int]]]:
    """The (low index, prune index) settings of one pair that no feasible
    setting exceeds in both ratios; prune index None without prune genes."""
    if not space.has_prune_genes:
        return [(len(space.low_choices) - 1, None)]
    feasible = []
    for low_index, low in enumerate(space.low_choices):
        prune_indices = [
            i for i, prune in enumerate(space.prune_choices)
            if low + prune <= 1.0 + RATIO_TOLERANCE
        ]
        if prune_indices:
            feasible.append((low_index, max(prune_indices)))
    return [(l, p) for l, p in feasible
            if not any(ol >= l and op >= p and (ol, op) != (l, p)
                       for ol, op in feasible)]


def _genes_of_corners(space: RatioSearchSpace,
                      corners: Sequence[Tuple[int, Optional[int]]]
                      ) -> np.ndarray:
    low = [corner[0] for corner in corners]
    prune = [corner[1] for corner in corners] if space.has_prune_genes else []
    return np.array(low + prune, dtype=np.int64)


def cost_range(space: RatioSearchSpace,
               cost_fn: Callable[[Candidate], float]) -> Tuple[float, float]:
    """``(lowest, highest)`` cost a candidate of ``space`` can have.

    Assumes the cost never increases when a ratio increases: the highest cost
    is every gene at its smallest choice, the lowest is every pair at a
    feasible corner that no feasible setting exceeds in both ratios. Without
    prune genes that corner is the largest low-bit ratio; with them, the few
    corners are tried for all pairs at once, then pair by pair until nothing
    gets cheaper (exact when the cost is a sum over pairs).
    """
    highest = _checked_cost(
        cost_fn, space.decode(np.zeros(space.num_genes, dtype=np.int64)))
    corners = _maximal_pair_corners(space)

    def cost_of(pair_corners: Sequence[Tuple[int, Optional[int]]]) -> float:
        return _checked_cost(cost_fn,
                             space.decode(_genes_of_corners(space, pair_corners)))

    best_corners = [corners[0]] * space.num_pairs
    lowest = cost_of(best_corners)
    for corner in corners[1:]:
        cost = cost_of([corner] * space.num_pairs)
        if cost < lowest:
            lowest, best_corners = cost, [corner] * space.num_pairs
    improved = len(corners) > 1
    while improved:
        improved = False
        for pair in range(space.num_pairs):
            for corner in corners:
                if corner == best_corners[pair]:
                    continue
                trial = best_corners[:pair] + [corner] + best_corners[pair + 1:]
                cost = cost_of(trial)
                if cost < lowest:
                    lowest, best_corners, improved = cost, trial, True
    return min(lowest, highest), max(lowest, highest)


class _Search:
    """State shared by the problem, the repair and the generation callback of
    one :func:`search_ratios` call: memoized costs and evaluations, the band
    and the repair's random generator."""

    def __init__(self, space: RatioSearchSpace,
                 accuracy_fn: Callable[[Candidate], float],
                 cost_fn: Callable[[Candidate], float],
                 band: Optional[Band], seed: int) -> None:
        self.space = space
        self.accuracy_fn = accuracy_fn
        self.cost_fn = cost_fn
        self.band = band
        self.rng = np.random.default_rng(seed)
        self.costs: Dict[Genes, float] = {}
        self.evaluated: Dict[Genes, Evaluation] = {}
        self.evaluations: List[Evaluation] = []

    def cost(self, genes: Genes) -> float:
        if genes not in self.costs:
            self.costs[genes] = _checked_cost(self.cost_fn,
                                              self.space.decode(genes))
        return self.costs[genes]

    def band_distance(self, cost: float) -> float:
        """Relative distance of ``cost`` to the band (0 inside it)."""
        if self.band is None:
            return 0.0
        lo, hi = self.band
        if cost < lo:
            return (lo - cost) / lo
        if cost > hi:
            return (cost - hi) / hi
        return 0.0

    def pair_excess(self, genes: Genes) -> float:
        """Sum over pairs of how far ``low + prune`` exceeds 1."""
        low, prune = self.space.decode(genes)
        return sum(max(0.0, l + p - 1.0 - RATIO_TOLERANCE)
                   for l, p in zip(low, prune))

    def make_feasible(self, genes: np.ndarray) -> None:
        """Lower the prune gene, then the low-bit gene, of every pair whose
        ratios sum over 1 (in place)."""
        num_pairs = self.space.num_pairs
        if not self.space.has_prune_genes:
            return
        for pair in range(num_pairs):
            low_pos, prune_pos = pair, num_pairs + pair
            while (self.space.low_choices[genes[low_pos]] +
                   self.space.prune_choices[genes[prune_pos]] >
                   1.0 + RATIO_TOLERANCE):
                if genes[prune_pos] > 0:
                    genes[prune_pos] -= 1
                else:
                    genes[low_pos] -= 1

    def move_into_band(self, genes: np.ndarray) -> np.ndarray:
        """Step random genes one choice up (cost too high) or down (too low)
        until the cost is in the band; when no step gets closer, give up and
        return the closest candidate seen (the constraint rejects it)."""
        upper = self.space.gene_upper_bounds()
        current = tuple(int(g) for g in genes)
        distance = self.band_distance(self.cost(current))
        closest, closest_distance = current, distance
        seen = {current}
        while distance > 0:
            cost = self.cost(current)
            step = 1 if cost > self.band[1] else -1
            moves = []
            for position in range(self.space.num_genes):
                index = current[position] + step
                if not 0 <= index <= upper[position]:
                    continue
                trial = current[:position] + (index, ) + current[position + 1:]
                if trial in seen or not self.space.feasible(trial):
                    continue
                trial_cost = self.cost(trial)
                if trial_cost < cost if step > 0 else trial_cost > cost:
                    moves.append(trial)
            if not moves:
                break
            current = moves[int(self.rng.integers(len(moves)))]
            seen.add(current)
            distance = self.band_distance(self.cost(current))
            if distance < closest_distance:
                closest, closest_distance = current, distance
        return np.array(closest, dtype=np.int64)

    def repair(self, X: np.ndarray) -> np.ndarray:
        upper = self.space.gene_upper_bounds()
        repaired = np.clip(np.rint(np.asarray(X, dtype=float)), 0,
                           upper).astype(np.int64)
        for row in repaired:
            self.make_feasible(row)
            if self.band is not None:
                row[:] = self.move_into_band(row)
        return repaired

    def evaluate(self, genes: Genes) -> Evaluation:
        """The memoized evaluation of ``genes``; accuracy only when feasible
        and inside the band."""
        needs_accuracy = (self.space.feasible(genes)
                          and _in_band(self.cost(genes), self.band))
        known = self.evaluated.get(genes)
        if known is not None and (math.isfinite(known.accuracy)
                                  or not needs_accuracy):
            return known
        candidate = self.space.decode(genes)
        cost = self.cost(genes)
        accuracy = math.nan
        if needs_accuracy:
            value = self.accuracy_fn(candidate)
            if (isinstance(value, bool) or not isinstance(value, Real)
                    or not math.isfinite(float(value))):
                raise ValueError(f'accuracy_fn returned {value!r} for candidate '
                                 f'{candidate.key()}; it must return a finite '
                                 'number')
            accuracy = float(value)
        evaluation = Evaluation(candidate, accuracy, cost)
        if known is None:
            self.evaluations.append(evaluation)
        else:
            self.evaluations[self.evaluations.index(known)] = evaluation
        self.evaluated[genes] = evaluation
        return evaluation

    def violation(self, genes: Genes, cost: float) -> float:
        """Constraint value (pymoo's ``G <= 0`` is satisfied): the pairs'
        excess over ``low + prune = 1`` plus the relative distance to the
        band."""
        excess = self.pair_excess(genes)
        return (1.0 + excess if excess > 0 else 0.0) + self.band_distance(cost)

    def result(self) -> SearchResult:
        return SearchResult(self.space, list(self.evaluations), self.band)

    def load(self, evaluations: Dict[str, Any]) -> None:
        for key, (accuracy, cost) in evaluations.items():
            genes = tuple(int(g) for g in
                          self.space.encode(_candidate_from_key(key)))
            evaluation = Evaluation(
                self.space.decode(genes),
                math.nan if accuracy is None else float(accuracy), float(cost))
            self.costs[genes] = evaluation.cost
            self.evaluated[genes] = evaluation
            self.evaluations.append(evaluation)


class _RatioProblem(Problem):
    """Objectives ``[-accuracy, cost]``, one constraint (feasibility and the
    band)."""

    def __init__(self, search: _Search) -> None:
        self.search = search
        super().__init__(n_var=search.space.num_genes, n_obj=2,
                         n_ieq_constr=1, xl=0,
                         xu=search.space.gene_upper_bounds(), vtype=int)

    def _evaluate(self, X, out, *args, **kwargs) -> None:
        objectives, constraints = [], []
        for row in np.asarray(X):
            genes = self.search.space._gene_indices(np.rint(row))
            evaluation = self.search.evaluate(genes)
            accuracy = evaluation.accuracy
            # Unevaluated candidates are infeasible; their objective is unused.
            objectives.append(
                [-accuracy if math.isfinite(accuracy) else 0.0,
                 evaluation.cost])
            constraints.append([self.search.violation(genes, evaluation.cost)])
        out['F'] = np.array(objectives, dtype=float).reshape(-1, 2)
        out['G'] = np.array(constraints, dtype=float).reshape(-1, 1)


class _BandRepair(Repair):
    """Makes candidates feasible, then moves their cost into the band."""

    def __init__(self, search: _Search) -> None:
        super().__init__()
        self.search = search

    def _do(self, problem, X, **kwargs):
        return self.search.repair(X)


class _InitialThenRandom(Sampling):
    """The given gene rows first, the rest of the population sampled like
    ``IntegerRandomSampling``."""

    def __init__(self, initial_genes: np.ndarray) -> None:
        super().__init__()
        self.initial_genes = initial_genes

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        remaining = n_samples - len(self.initial_genes)
        rows = [self.initial_genes]
        if remaining > 0:
            rows.append(IntegerRandomSampling()._do(
                problem, remaining, random_state=random_state))
        return np.vstack(rows).astype(np.int64)


class _AfterGeneration(Callback):
    """Writes the cache and reports progress after every generation."""

    def __init__(self, search: _Search, generations: int,
                 write_cache: Callable[[], None],
                 on_generation: Optional[Callable[[int, int, SearchResult],
                                                  None]]) -> None:
        super().__init__()
        self.search = search
        self.generations = generations
        self.write_cache = write_cache
        self.on_generation = on_generation

    def notify(self, algorithm) -> None:
        self.write_cache()
        if self.on_generation is not None:
            self.on_generation(algorithm.n_gen, self.generations,
                               self.search.result())


def _write_json_atomically(path: str, content: Dict[str, Any]) -> None:
    """Write ``content`` to a temporary file beside ``path``, then rename it
    over ``path``, so a crash never leaves a half-written cache."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(
        dir=directory, prefix=os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(handle, 'w') as tmp:
            json.dump(content, tmp, indent=1, allow_nan=False)
            tmp.write('\n')
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def _read_cache(path: str, space_dict: Dict[str, Any],
                settings: Dict[str, Any]) -> Dict[str, Any]:
    """The evaluations of the cache at ``path``, after checking it was written
    by the same search."""
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f'cannot read the search cache {path}: {error}; delete '
                         'it or use another cache_path') from None
    if not isinstance(cache, dict) or cache.get('format') != CACHE_FORMAT:
        raise ValueError(f'{path} is not a ratio search cache (format '
                         f'{CACHE_FORMAT!r}); delete it or use another '
                         'cache_path')
    differences = []
    if cache.get('space') != space_dict:
        differences.append(f'space: cached {cache.get("space")}, '
                           f'now {space_dict}')
    cached_settings = cache.get('settings') or {}
    for name, value in settings.items():
        if cached_settings.get(name) != value:
            differences.append(f'{name}: cached {cached_settings.get(name)!r}, '
                               f'now {value!r}')
    if differences:
        raise ValueError(f'the search cache {path} was written by a different '
                         f'search ({"; ".join(differences)}); delete it or use '
                         'another cache_path')
    return cache.get('evaluations') or {}


def _validate_count(name: str, value: Any, minimum: int) -> int:
    if (isinstance(value, bool) or not isinstance(value, Integral)
            or value < minimum):
        raise ValueError(f'{name} must be an integer >= {minimum}, got '
                         f'{value!r}')
    return int(value)


def search_ratios(
        space: RatioSearchSpace,
        accuracy_fn: Callable[[Candidate], float],
        cost_fn: Callable[[Candidate], float],
        *,
        band: Optional[Tuple[float, float]] = None,
        pop_size: int = 16,
        generations: int = 8,
        seed: int = 0,
        cache_path: Optional[str] = None,
        initial: Sequence[Candidate] = (),
        on_generation: Optional[Callable[[int, int, SearchResult], None]] = None,
) -> SearchResult:
    """Search per-pair ratios with NSGA-II: maximise ``accuracy_fn``, minimise
    ``cost_fn`` (optionally only inside ``band = (lo, hi)`` of cost).

    ``accuracy_fn`` is expensive, so it is called only for feasible candidates
    inside the band, at most once per distinct candidate (memoized in the run
    and through ``cache_path``). ``cost_fn`` is cheap and is called freely; it
    must be deterministic and never increase when a ratio increases. The
    ``initial`` candidates open the first population (the rest is random).

    With ``cache_path``, every evaluation is written there after every
    generation (and when the search is interrupted by an exception); rerunning
    the same call loads it and replays the same search, evaluating only what
    is missing. ``on_generation(generation, generations, partial_result)`` is
    called after every generation, counting from 1.
    """
    if not isinstance(space, RatioSearchSpace):
        raise ValueError(f'space must be a RatioSearchSpace, got {space!r}')
    for name, fn in (('accuracy_fn', accuracy_fn), ('cost_fn', cost_fn)):
        if not callable(fn):
            raise ValueError(f'{name} must be callable, got {fn!r}')
    pop_size = _validate_count('pop_size', pop_size, 4)
    generations = _validate_count('generations', generations, 1)
    seed = _validate_count('seed', seed, 0)
    if band is not None:
        band = _validate_band(band)
        lowest, highest = cost_range(space, cost_fn)
        if band[1] < lowest or band[0] > highest:
            raise ValueError(
                f'band [{band[0]:.6g}, {band[1]:.6g}] cannot be reached: the '
                f'costs of this space span [{lowest:.6g}, {highest:.6g}]')
    initial = list(initial)
    if len(initial) > pop_size:
        raise ValueError(f'{len(initial)} initial candidates do not fit in a '
                         f'population of pop_size={pop_size}')
    initial_rows = []
    for number, candidate in enumerate(initial):
        try:
            genes = space.encode(Candidate(*candidate))
        except (TypeError, ValueError) as error:
            raise ValueError(f'initial candidate {number} ({candidate!r}) is '
                             f'outside the search space: {error}') from None
        if not space.feasible(genes):
            raise ValueError(f'initial candidate {number} '
                             f'({Candidate(*candidate).key()}) is infeasible: '
                             'low + prune exceeds 1 in a pair')
        initial_rows.append(genes)

    search = _Search(space, accuracy_fn, cost_fn, band, seed)
    space_dict = space.to_dict()
    settings = {
        'pop_size': pop_size,
        'generations': generations,
        'seed': seed,
        'band': None if band is None else list(band),
        'initial': [space.decode(row).key() for row in initial_rows],
    }
    if cache_path is not None and os.path.exists(cache_path):
        search.load(_read_cache(cache_path, space_dict, settings))

    def write_cache() -> None:
        if cache_path is None:
            return
        _write_json_atomically(
            cache_path, {
                'format': CACHE_FORMAT,
                'space': space_dict,
                'settings': settings,
                'evaluations': {
                    e.candidate.key():
                    [e.accuracy if math.isfinite(e.accuracy) else None, e.cost]
                    for e in search.evaluations
                },
            })

    if initial_rows:
        sampling = _InitialThenRandom(np.array(initial_rows, dtype=np.int64))
    else:
        sampling = IntegerRandomSampling()
    algorithm = NSGA2(
        pop_size=pop_size,
        sampling=sampling,
        crossover=SBX(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
        mutation=PM(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
        repair=_BandRepair(search),
        eliminate_duplicates=True,
    )
    callback = _AfterGeneration(search, generations, write_cache, on_generation)
    try:
        # copy_algorithm=False: a deep copy would copy the callables' owners.
        minimize(_RatioProblem(search), algorithm, ('n_gen', generations),
                 seed=seed, verbose=False, callback=callback,
                 copy_algorithm=False)
    except BaseException:
        # Keep what the interrupted generation evaluated, for the rerun; a
        # failure to write must not hide the interruption's own error.
        try:
            write_cache()
        except Exception:
            pass
        raise
    return search.result()
