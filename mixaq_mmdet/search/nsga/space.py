"""The search space: per-pair ratio choices and their integer genes."""
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Dict, NamedTuple, Tuple

import numpy as np

from mixaq_mmdet.ratios import RATIO_GRID, RATIO_TOLERANCE

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
        key, read back by :func:`candidate_from_key`."""
        return (','.join(_format_ratio(r) for r in self.low_bit_ratios) + '|' +
                ','.join(_format_ratio(r) for r in self.prune_ratios))


def candidate_from_key(key: str) -> Candidate:
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


def _validate_choices(name: str, choices: Any, allow_empty: bool) -> Tuple[float, ...]:
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
    if (not isinstance(ratio, bool) and isinstance(ratio, Real) and math.isfinite(float(ratio))):
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
        if (isinstance(self.num_pairs, bool) or not isinstance(self.num_pairs, Integral)
                or self.num_pairs < 1):
            raise ValueError('num_pairs must be a positive integer, got '
                             f'{self.num_pairs!r}')
        object.__setattr__(self, 'num_pairs', int(self.num_pairs))
        low = _validate_choices('low_choices', self.low_choices, False)
        prune = _validate_choices('prune_choices', self.prune_choices, True)
        if prune and low[0] + prune[0] > 1.0 + RATIO_TOLERANCE:
            raise ValueError(f'no feasible candidate: the smallest low-bit ratio {low[0]} '
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

    def gene_indices(self, genes: Any) -> Genes:
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
                    and not isinstance(value, (bool, np.bool_)) and math.isfinite(float(value))
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
        indices = self.gene_indices(genes)
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
                _index_of(ratio, self.prune_choices, f'prune ratio of pair {pair}')
                for pair, ratio in enumerate(prune)
            ]
        else:
            for pair, ratio in enumerate(prune):
                _index_of(ratio, (0.0, ), f'prune ratio of pair {pair} (the space has no '
                          'prune genes)')
        return np.array(genes, dtype=np.int64)

    def feasible(self, genes: Any) -> bool:
        """Whether ``low + prune <= 1`` in every pair."""
        low, prune = self.decode(genes)
        return all(lo + pr <= 1.0 + RATIO_TOLERANCE for lo, pr in zip(low, prune))

    def uniform(self, low: float, prune: float = 0.0) -> Candidate:
        """The feasible candidate with the same ratios in every pair."""
        if low + prune > 1.0 + RATIO_TOLERANCE:
            raise ValueError(f'uniform low-bit ratio {low!r} plus prune ratio '
                             f'{prune!r} exceeds 1')
        return self.decode(
            self.encode(Candidate((low, ) * self.num_pairs, (prune, ) * self.num_pairs)))

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
        return cls(description['num_pairs'], tuple(description['low_choices']),
                   tuple(description['prune_choices']))


__all__ = ['Candidate', 'Genes', 'RatioSearchSpace', 'candidate_from_key']
