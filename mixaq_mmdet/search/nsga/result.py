"""What a search returns: its evaluations, their front and the best in a band."""
import math
from dataclasses import dataclass, field
from typing import Any, List, NamedTuple, Optional, Tuple

import numpy as np
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from .space import Candidate, RatioSearchSpace

Band = Tuple[float, float]


class Evaluation(NamedTuple):
    """One evaluated candidate; ``accuracy`` is nan when it was not evaluated
    (infeasible, or its cost outside the band)."""
    candidate: Candidate
    accuracy: float
    cost: float


def validate_band(band: Any) -> Band:
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


def in_band(cost: float, band: Optional[Band]) -> bool:
    """Whether ``cost`` is inside ``band`` (always, without a band)."""
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
        if not scored:
            return []
        objectives = np.array([[-e.accuracy, e.cost] for e in scored])
        indices = NonDominatedSorting().do(objectives, only_non_dominated_front=True)
        front = [scored[i] for i in indices]
        return sorted(front, key=lambda e: (e.cost, -e.accuracy, e.candidate.key()))

    def best_in_band(self, band: Tuple[float, float]) -> Evaluation:
        """The most accurate evaluation with ``lo <= cost <= hi`` (the cheaper
        one on a tie)."""
        lo, hi = validate_band(band)
        inside = [e for e in self.evaluations if math.isfinite(e.accuracy) and lo <= e.cost <= hi]
        if not inside:
            scored = [e.cost for e in self.evaluations if math.isfinite(e.accuracy)]
            seen = (f'evaluated costs span [{min(scored):.6g}, {max(scored):.6g}]'
                    if scored else 'no candidate has an accuracy')
            raise ValueError(f'no evaluated candidate has its cost in the band '
                             f'[{lo:.6g}, {hi:.6g}]; {seen}')
        return max(inside, key=lambda e: (e.accuracy, -e.cost))


__all__ = ['Band', 'Evaluation', 'SearchResult', 'in_band', 'validate_band']
