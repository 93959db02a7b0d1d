"""Fake-quantized activations recomputed in the backward instead of saved.

A layer that reads a fake-quantized activation saves it for its backward (a
linear its input, a matmul both operands), and the quantizer saves the float
activation it quantized: two tensors where the float model saves one. Within
:func:`recomputed_quantized_activations` a quantizer output registered with
:func:`register_recomputable` is saved as its recipe instead (the quantizer's
input, which the quantizer keeps for its own backward, and the qparams) and
computed again, bit for bit, when the backward needs it. A fake-quantized
model then saves what the float model saves, at the cost of one more fused
pass over each quantized activation in the backward.

It is selective activation recomputation through autograd's
``saved_tensors_hooks``: nothing about the layers changes, and a tensor that
is no registered output (or a copy of one) is saved as it is.
"""
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, NamedTuple, Tuple, Union

import torch
from torch import Tensor

#: Outputs smaller than this are saved as they are: recomputing them costs more
#: in call overhead than their memory is worth.
MIN_ELEMENTS = 1 << 18

_Registry = Dict[int, Tuple[Tensor, Callable[[], Tensor]]]
#: The registries of the open contexts, innermost last.
_ACTIVE: List[_Registry] = []


class _Recipe(NamedTuple):
    """A saved view of a registered output: how to compute the output, and the
    view's geometry on it."""
    compute: Callable[[], Tensor]
    size: torch.Size
    stride: Tuple[int, ...]
    offset: int


def register_recomputable(output: Tensor, compute: Callable[[], Tensor]) -> None:
    """Record that ``compute()`` gives ``output`` bit for bit (same dtype, shape
    and storage layout): inside :func:`recomputed_quantized_activations` the
    first layer that saves ``output`` (or a view of it) for its backward saves
    ``compute`` instead. The registry holds ``output`` until then (or until the
    context ends), so no other tensor can take its memory and be mistaken for
    it. Outside the context, and for outputs of fewer than
    :data:`MIN_ELEMENTS` elements, it does nothing."""
    if _ACTIVE and output.numel() >= MIN_ELEMENTS:
        _ACTIVE[-1][output.untyped_storage().data_ptr()] = (output, compute)


class RecomputeStats:
    """What a :func:`recomputed_quantized_activations` context saved as recipes:
    the distinct storages of registered outputs (their bytes by address)."""

    def __init__(self) -> None:
        self.storages: Dict[int, int] = {}

    @property
    def bytes(self) -> int:
        """Bytes autograd did not keep."""
        return sum(self.storages.values())


@contextmanager
def recomputed_quantized_activations() -> Iterator[RecomputeStats]:
    """Within the context, registered quantizer outputs that autograd saves are
    recomputed in the backward instead of kept (see the module docstring).
    Yields the context's :class:`RecomputeStats`."""
    registry: _Registry = {}
    stats = RecomputeStats()

    def pack(t: Tensor) -> Union[Tensor, _Recipe]:
        storage = t.untyped_storage()
        entry = registry.get(storage.data_ptr()) if t.numel() > 0 else None
        # the registry holds the output: t is the output or a view of it
        if entry is None or entry[0].dtype != t.dtype or entry[0].device != t.device:
            return t
        del registry[storage.data_ptr()]
        stats.storages[storage.data_ptr()] = storage.nbytes()
        return _Recipe(entry[1], t.size(), t.stride(), t.storage_offset())

    def unpack(saved: Union[Tensor, _Recipe]) -> Tensor:
        if isinstance(saved, _Recipe):
            return saved.compute().as_strided(saved.size, saved.stride, saved.offset)
        return saved

    _ACTIVE.append(registry)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield stats
    finally:
        _ACTIVE.remove(registry)
