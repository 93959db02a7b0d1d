"""MixA-Q's uniform-sum sampling of per-pair ratios (SAQA)."""
import numpy as np
import pytest

from mixaq_mmdet.engine.ratio_sampling import sample_uniform_sum_ratios


def _draws(n, num_pairs=6, **kwargs):
    return np.array([sample_uniform_sum_ratios(num_pairs, 7, it, **kwargs) for it in range(n)])


def test_bounds_and_rejection():
    draws = _draws(3000)
    assert draws.shape == (3000, 6)
    assert draws.min() >= 0 and draws.max() <= 0.8  # nothing above max_ratio survives
    assert draws.max() > 0.75  # but ratios reach close to it
    assert (_draws(500, max_ratio=0.3) <= 0.3).all()


def test_the_sum_is_uniform_before_rejection():
    """With one pair nothing is ever rejected: the sum is uniform on [0, 0.8]."""
    sums = _draws(4000, num_pairs=1).sum(1)
    assert abs(sums.mean() - 0.4) < 0.02
    assert np.allclose(np.quantile(sums, [0.25, 0.5, 0.75]), [0.2, 0.4, 0.6], atol=0.03)
    # With six pairs large sums are rejected more often (some ratio exceeds 0.8),
    # so the mean accepted sum lies below the uniform mean 2.4.
    six = _draws(3000).sum(1)
    assert 1.0 < six.mean() < 2.4


def test_deterministic_in_seed_and_iteration():
    a = sample_uniform_sum_ratios(6, seed=3, iteration=41)
    assert a == sample_uniform_sum_ratios(6, seed=3, iteration=41)  # resume, other rank
    assert a != sample_uniform_sum_ratios(6, seed=3, iteration=42)
    assert a != sample_uniform_sum_ratios(6, seed=4, iteration=41)


@pytest.mark.parametrize('kwargs, match', [
    (dict(max_ratio=0.9), r'max_ratio must be in \(0, 0.8\], got 0.9'),
    (dict(max_ratio=0.0), r'max_ratio must be in \(0, 0.8\], got 0.0'),
    (dict(num_pairs=0), 'num_pairs must be a positive int, got 0'),
    (dict(iteration=-1), 'iteration must be a non-negative int, got -1'),
    (dict(concentration=0), 'concentration must be positive, got 0'),
])
def test_bad_settings_name_the_value(kwargs, match):
    args = dict(num_pairs=6, seed=0, iteration=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sample_uniform_sum_ratios(**args)
