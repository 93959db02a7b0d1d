"""Random per-pair window ratios for sparsity-aware quantization adaptation (SAQA).

SAQA fine-tunes a quantized model while the low-bit (and prune) ratios of every
pair of blocks change at every iteration, so that every branch learns to serve
any ratio a later search may pick. The draw is a plain function of a seed and
the iteration number: every rank draws the same ratios, and a resumed run draws
what the uninterrupted run drew, without any hidden random state.
"""
from numbers import Integral, Real
from typing import List

import numpy as np

from mixaq_mmdet.ratios import MAX_RATIO


def sample_uniform_sum_ratios(num_pairs: int,
                              seed: int,
                              iteration: int,
                              max_ratio: float = MAX_RATIO,
                              concentration: float = 1.0,
                              stream: int = 0,
                              max_tries: int = 10000) -> List[float]:
    """Per-pair ratios by MixA-Q's "uniform-sum" sampling.

    A target sum ``S`` is drawn uniformly from ``[0, num_pairs * max_ratio]`` and
    split over the pairs by a symmetric Dirichlet draw (``concentration``); a
    sample with any ratio above ``max_ratio`` is rejected and drawn anew (sum
    included). Deterministic in ``(seed, iteration, stream)``; ``stream``
    separates independent draws of one iteration (low-bit and prune ratios).

    Raises:
        ValueError: for settings out of range, naming the value.
        RuntimeError: if ``max_tries`` samples were all rejected.
    """
    if isinstance(num_pairs, bool) or not isinstance(num_pairs, Integral) or num_pairs < 1:
        raise ValueError(f'num_pairs must be a positive int, got {num_pairs!r}')
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, Real) or \
            not 0.0 < max_ratio <= MAX_RATIO:
        raise ValueError(f'max_ratio must be in (0, {MAX_RATIO}], got {max_ratio!r}')
    if not isinstance(concentration, Real) or not concentration > 0:
        raise ValueError(f'concentration must be positive, got {concentration!r}')
    for name, value in (('seed', seed), ('iteration', iteration), ('stream', stream)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
            raise ValueError(f'{name} must be a non-negative int, got {value!r}')
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(iteration), int(stream)]))
    for _ in range(max_tries):
        total = rng.uniform(0.0, num_pairs * max_ratio)
        ratios = total * rng.dirichlet([concentration] * num_pairs)
        if ratios.max() <= max_ratio:
            return [float(r) for r in ratios]
    raise RuntimeError(f'{max_tries} uniform-sum samples of {num_pairs} ratios were all '
                       f'above max_ratio={max_ratio}')


__all__ = ['MAX_RATIO', 'sample_uniform_sum_ratios']
