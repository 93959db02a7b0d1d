"""The repair that makes every offspring feasible and steers its cost into the
band, so the expensive accuracy is only spent where it counts."""
from typing import Optional

import numpy as np
from pymoo.core.repair import Repair

from mixaq_mmdet.ratios import RATIO_TOLERANCE
from .bounds import MemoizedCost
from .result import Band
from .space import Genes, RatioSearchSpace


def band_distance(cost: float, band: Optional[Band]) -> float:
    """Relative distance of ``cost`` to the band (0 inside it, or without one)."""
    if band is None:
        return 0.0
    lo, hi = band
    if cost < lo:
        return (lo - cost) / lo
    if cost > hi:
        return (cost - hi) / hi
    return 0.0


def pair_excess(space: RatioSearchSpace, genes: Genes) -> float:
    """Sum over pairs of how far ``low + prune`` exceeds 1."""
    low, prune = space.decode(genes)
    return sum(max(0.0, lo + pr - 1.0 - RATIO_TOLERANCE) for lo, pr in zip(low, prune))


class BandRepair(Repair):
    """Rounds genes to valid indices, lowers the ratios of pairs whose
    ``low + prune`` exceeds 1, then moves the cost into the band by single-gene
    steps (random among those that help, from its own seeded generator)."""

    def __init__(self, space: RatioSearchSpace, cost: MemoizedCost, band: Optional[Band],
                 seed: int) -> None:
        super().__init__()
        self.space = space
        self.cost = cost
        self.band = band
        self.rng = np.random.default_rng(seed)

    def _do(self, problem, X, **kwargs):
        upper = self.space.gene_upper_bounds()
        repaired = np.clip(np.rint(np.asarray(X, dtype=float)), 0, upper).astype(np.int64)
        for row in repaired:
            self.make_feasible(row)
            if self.band is not None:
                row[:] = self.move_into_band(row)
        return repaired

    def make_feasible(self, genes: np.ndarray) -> None:
        """Lower the prune gene, then the low-bit gene, of every pair whose
        ratios sum over 1 (in place)."""
        space = self.space
        if not space.has_prune_genes:
            return
        for pair in range(space.num_pairs):
            low_pos, prune_pos = pair, space.num_pairs + pair
            while (space.low_choices[genes[low_pos]] + space.prune_choices[genes[prune_pos]]
                   > 1.0 + RATIO_TOLERANCE):
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
        distance = band_distance(self.cost(current), self.band)
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
            distance = band_distance(self.cost(current), self.band)
            if distance < closest_distance:
                closest, closest_distance = current, distance
        return np.array(closest, dtype=np.int64)


__all__ = ['BandRepair', 'band_distance', 'pair_excess']
