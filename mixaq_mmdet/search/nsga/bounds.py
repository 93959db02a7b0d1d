"""The cost side of the search: checked, memoized costs and the range of
costs a space can reach (to refuse a band outside it before searching)."""
import math
from numbers import Real
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mixaq_mmdet.ratios import RATIO_TOLERANCE
from .space import Candidate, Genes, RatioSearchSpace


def checked_cost(cost_fn: Callable[[Candidate], float], candidate: Candidate) -> float:
    cost = cost_fn(candidate)
    if (isinstance(cost, bool) or not isinstance(cost, Real) or not math.isfinite(float(cost))):
        raise ValueError(f'cost_fn returned {cost!r} for candidate '
                         f'{candidate.key()}; it must return a finite number')
    return float(cost)


class MemoizedCost:
    """``cost_fn`` of gene tuples, each distinct candidate's cost computed once
    and checked to be a finite number."""

    def __init__(self, space: RatioSearchSpace, cost_fn: Callable[[Candidate], float]) -> None:
        self.space = space
        self.cost_fn = cost_fn
        self.costs: Dict[Genes, float] = {}

    def __call__(self, genes: Genes) -> float:
        if genes not in self.costs:
            self.costs[genes] = checked_cost(self.cost_fn, self.space.decode(genes))
        return self.costs[genes]

    def remember(self, genes: Genes, cost: float) -> None:
        """Take a cost computed before (read back from a search cache)."""
        self.costs[genes] = cost


def _maximal_pair_corners(space: RatioSearchSpace) -> List[Tuple[int, Optional[int]]]:
    """The (low index, prune index) settings of one pair that no feasible
    setting exceeds in both ratios; prune index None without prune genes."""
    if not space.has_prune_genes:
        return [(len(space.low_choices) - 1, None)]
    feasible = []
    for low_index, low in enumerate(space.low_choices):
        prune_indices = [
            i for i, prune in enumerate(space.prune_choices) if low + prune <= 1.0 + RATIO_TOLERANCE
        ]
        if prune_indices:
            feasible.append((low_index, max(prune_indices)))
    return [(low, prune) for low, prune in feasible
            if not any(ol >= low and op >= prune and (ol, op) != (low, prune)
                       for ol, op in feasible)]


def _genes_of_corners(space: RatioSearchSpace,
                      corners: Sequence[Tuple[int, Optional[int]]]) -> np.ndarray:
    low = [corner[0] for corner in corners]
    prune = [corner[1] for corner in corners] if space.has_prune_genes else []
    return np.array(low + prune, dtype=np.int64)


def cost_range(space: RatioSearchSpace, cost_fn: Callable[[Candidate],
                                                          float]) -> Tuple[float, float]:
    """``(lowest, highest)`` cost a candidate of ``space`` can have.

    Assumes the cost never increases when a ratio increases: the highest cost
    is every gene at its smallest choice, the lowest is every pair at a
    feasible corner that no feasible setting exceeds in both ratios. Without
    prune genes that corner is the largest low-bit ratio; with them, the few
    corners are tried for all pairs at once, then pair by pair until nothing
    gets cheaper (exact when the cost is a sum over pairs).
    """
    highest = checked_cost(cost_fn, space.decode(np.zeros(space.num_genes, dtype=np.int64)))
    corners = _maximal_pair_corners(space)

    def cost_of(pair_corners: Sequence[Tuple[int, Optional[int]]]) -> float:
        return checked_cost(cost_fn, space.decode(_genes_of_corners(space, pair_corners)))

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


__all__ = ['MemoizedCost', 'checked_cost', 'cost_range']
