"""TensorCache: reused while its sources are unchanged, never where autograd
or torch.compile must see the computation."""
import pytest
import torch

from mixaq_mmdet.utils import TensorCache


def _counting():
    calls = []

    def compute():
        calls.append(1)
        return torch.ones(1) * len(calls)

    return calls, compute


def test_reused_until_a_source_changes():
    cache = TensorCache()
    weight = torch.nn.Parameter(torch.randn(3))
    calls, compute = _counting()
    with torch.no_grad():
        first = cache.get('w', (weight, ), compute)
        assert cache.get('w', (weight, ), compute) is first and len(calls) == 1
        weight.mul_(2)  # in place: the version counter moves
        assert cache.get('w', (weight, ), compute) is not first and len(calls) == 2
        weight.data = torch.randn(4)  # new storage and shape
        cache.get('w', (weight, ), compute)
        assert len(calls) == 3
        cache.get('w', (weight, ), compute, extra=(torch.float16, ))  # other extra
        assert len(calls) == 4


def test_nothing_cached_for_autograd_or_inference_tensors():
    cache = TensorCache()
    weight = torch.nn.Parameter(torch.randn(3))
    calls, compute = _counting()
    cache.get('w', (weight, ), compute)
    cache.get('w', (weight, ), compute)
    assert len(calls) == 2 and len(cache) == 0  # grad mode, source requires grad
    with torch.inference_mode():
        frozen = torch.randn(3)
    with torch.no_grad():
        cache.get('f', (frozen, ), compute)
    assert len(calls) == 3 and len(cache) == 0


def test_least_recently_used_entries_go_first():
    cache = TensorCache(max_entries=2)
    calls, compute = _counting()
    for name in ('a', 'b', 'a', 'c'):  # 'b' is the least recently used at 'c'
        cache.get(name, (), compute)
    assert len(cache) == 2 and len(calls) == 3
    cache.get('a', (), compute)
    assert len(calls) == 3
    cache.get('b', (), compute)
    assert len(calls) == 4
    with pytest.raises(ValueError, match='max_entries must be a positive int or None, got 0'):
        TensorCache(max_entries=0)
