"""NSGA-II over the ratio genes, by pymoo's integer recipe: integer random
sampling, SBX and polynomial mutation on floats rounded back to integers,
duplicates eliminated, plus :class:`BandRepair`."""
import math
import os
from numbers import Integral, Real
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.callback import Callback
from pymoo.core.problem import Problem
from pymoo.core.sampling import Sampling
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.operators.sampling.rnd import IntegerRandomSampling
from pymoo.optimize import minimize

from .bounds import MemoizedCost, cost_range
from .cache import read_cache, write_cache
from .repair import BandRepair, band_distance, pair_excess
from .result import Band, Evaluation, SearchResult, in_band, validate_band
from .space import Candidate, Genes, RatioSearchSpace, candidate_from_key

GenerationCallback = Callable[[int, int, SearchResult], None]


class _Evaluations:
    """The memoized evaluations of one search, in order of first evaluation;
    accuracy only for feasible candidates inside the band."""

    def __init__(self, space: RatioSearchSpace, accuracy_fn: Callable[[Candidate], float],
                 cost: MemoizedCost, band: Optional[Band]) -> None:
        self.space = space
        self.accuracy_fn = accuracy_fn
        self.cost = cost
        self.band = band
        self.evaluated: Dict[Genes, Evaluation] = {}
        self.evaluations: List[Evaluation] = []

    def evaluate(self, genes: Genes) -> Evaluation:
        cost = self.cost(genes)
        needs_accuracy = self.space.feasible(genes) and in_band(cost, self.band)
        known = self.evaluated.get(genes)
        if known is not None and (math.isfinite(known.accuracy) or not needs_accuracy):
            return known
        candidate = self.space.decode(genes)
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
        excess = pair_excess(self.space, genes)
        return (1.0 + excess if excess > 0 else 0.0) + band_distance(cost, self.band)

    def load(self, cached: Dict[str, Any]) -> None:
        """Take the evaluations of a cache written by the same search."""
        for key, (accuracy, cost) in cached.items():
            genes = tuple(int(g) for g in self.space.encode(candidate_from_key(key)))
            evaluation = Evaluation(
                self.space.decode(genes), math.nan if accuracy is None else float(accuracy),
                float(cost))
            self.cost.remember(genes, evaluation.cost)
            self.evaluated[genes] = evaluation
            self.evaluations.append(evaluation)

    def result(self) -> SearchResult:
        return SearchResult(self.space, list(self.evaluations), self.band)


class _RatioProblem(Problem):
    """Objectives ``[-accuracy, cost]``, one constraint (feasibility and the
    band)."""

    def __init__(self, evaluations: _Evaluations) -> None:
        self.evaluations = evaluations
        space = evaluations.space
        super().__init__(
            n_var=space.num_genes,
            n_obj=2,
            n_ieq_constr=1,
            xl=0,
            xu=space.gene_upper_bounds(),
            vtype=int)

    def _evaluate(self, X, out, *args, **kwargs) -> None:
        objectives, constraints = [], []
        for row in np.asarray(X):
            genes = self.evaluations.space.gene_indices(np.rint(row))
            evaluation = self.evaluations.evaluate(genes)
            accuracy = evaluation.accuracy
            # Unevaluated candidates are infeasible; their objective is unused.
            objectives.append([-accuracy if math.isfinite(accuracy) else 0.0, evaluation.cost])
            constraints.append([self.evaluations.violation(genes, evaluation.cost)])
        out['F'] = np.array(objectives, dtype=float).reshape(-1, 2)
        out['G'] = np.array(constraints, dtype=float).reshape(-1, 1)


class _InitialThenRandom(Sampling):
    """The given gene rows first, the rest of the population sampled by
    ``IntegerRandomSampling``."""

    def __init__(self, initial_genes: np.ndarray) -> None:
        super().__init__()
        self.initial_genes = initial_genes

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        remaining = n_samples - len(self.initial_genes)
        rows = [self.initial_genes]
        if remaining > 0:
            random = IntegerRandomSampling()(problem, remaining, random_state=random_state)
            rows.append(random.get('X'))
        return np.vstack(rows).astype(np.int64)


class _AfterGeneration(Callback):
    """Writes the cache and reports progress after every generation."""

    def __init__(self, evaluations: _Evaluations, generations: int, save: Callable[[], None],
                 on_generation: Optional[GenerationCallback]) -> None:
        super().__init__()
        self.evaluations = evaluations
        self.generations = generations
        self.save = save
        self.on_generation = on_generation

    def notify(self, algorithm) -> None:
        self.save()
        if self.on_generation is not None:
            self.on_generation(algorithm.n_gen, self.generations, self.evaluations.result())


def _validate_count(name: str, value: Any, minimum: int) -> int:
    if (isinstance(value, bool) or not isinstance(value, Integral) or value < minimum):
        raise ValueError(f'{name} must be an integer >= {minimum}, got '
                         f'{value!r}')
    return int(value)


def _initial_genes(space: RatioSearchSpace, initial: Sequence[Candidate],
                   pop_size: int) -> List[np.ndarray]:
    """Gene rows of the ``initial`` candidates, checked to fit the space."""
    initial = list(initial)
    if len(initial) > pop_size:
        raise ValueError(f'{len(initial)} initial candidates do not fit in a '
                         f'population of pop_size={pop_size}')
    rows = []
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
        rows.append(genes)
    return rows


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
    on_generation: Optional[GenerationCallback] = None,
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
        band = validate_band(band)
        lowest, highest = cost_range(space, cost_fn)
        if band[1] < lowest or band[0] > highest:
            raise ValueError(f'band [{band[0]:.6g}, {band[1]:.6g}] cannot be reached: the '
                             f'costs of this space span [{lowest:.6g}, {highest:.6g}]')
    initial_rows = _initial_genes(space, initial, pop_size)

    cost = MemoizedCost(space, cost_fn)
    evaluations = _Evaluations(space, accuracy_fn, cost, band)
    space_dict = space.to_dict()
    settings = {
        'pop_size': pop_size,
        'generations': generations,
        'seed': seed,
        'band': None if band is None else list(band),
        'initial': [space.decode(row).key() for row in initial_rows],
    }
    if cache_path is not None and os.path.exists(cache_path):
        evaluations.load(read_cache(cache_path, space_dict, settings))

    def save() -> None:
        if cache_path is not None:
            write_cache(cache_path, space_dict, settings, evaluations.evaluations)

    if initial_rows:
        sampling = _InitialThenRandom(np.array(initial_rows, dtype=np.int64))
    else:
        sampling = IntegerRandomSampling()
    algorithm = NSGA2(
        pop_size=pop_size,
        sampling=sampling,
        crossover=SBX(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
        mutation=PM(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
        repair=BandRepair(space, cost, band, seed),
        eliminate_duplicates=True,
    )
    callback = _AfterGeneration(evaluations, generations, save, on_generation)
    try:
        # copy_algorithm=False: a deep copy would copy the callables' owners.
        minimize(
            _RatioProblem(evaluations),
            algorithm, ('n_gen', generations),
            seed=seed,
            verbose=False,
            callback=callback,
            copy_algorithm=False)
    except BaseException:
        # Keep what the interrupted generation evaluated, for the rerun; a
        # failure to write must not hide the interruption's own error.
        try:
            save()
        except Exception:
            pass
        raise
    return evaluations.result()


__all__ = ['search_ratios']
