"""TensorCache: tensors derived from parameters, reused across inference forwards.

A quantized model computes, on every forward, things that only change when its
weights or qparams do: fake-quantized weights, the relative position bias of a
window attention, the shift mask of a window size. In eager inference they are
computed once and reused; each entry is keyed on the storage and version counter
of the tensors it was derived from, so an optimizer step, ``load_state_dict``, an
in-place edit under ``torch.no_grad()`` or a move to another device makes it stale.
(Writes through ``tensor.data`` bypass the version counter: this package does
not make them, and :meth:`TensorCache.clear` drops everything.)

Nothing is cached where autograd must see the computation (grad mode and a
source that requires grad) or while ``torch.compile`` traces: a compiled graph
computes the values itself, and the Python-side cache would only add guards.
"""
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional, Sequence, Tuple

import torch
from torch import Tensor


def version_key(t: Tensor) -> Optional[Tuple[Any, ...]]:
    """Storage, version counter, device, dtype and shape of ``t``: what changes
    when ``t`` is written, replaced or moved (None for an inference tensor,
    which has no version counter)."""
    if t.is_inference():  # inference tensors carry no version counter
        return None
    return (t.data_ptr(), t._version, t.device, t.dtype, tuple(t.shape))


class TensorCache:
    """Named entries, each a value and the key of the tensors it came from.

    Args:
        max_entries: keep at most this many entries, dropping the least recently
            used (entries named per input shape would otherwise grow with every
            image size a test set has); None: no limit.
    """

    def __init__(self, max_entries: Optional[int] = None) -> None:
        if max_entries is not None and max_entries < 1:
            raise ValueError(f'max_entries must be a positive int or None, got {max_entries!r}')
        self.max_entries = max_entries
        self._entries: 'OrderedDict[Hashable, Tuple[Tuple[Any, ...], Any]]' = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self,
            name: Hashable,
            sources: Sequence[Tensor],
            compute: Callable[[], Any],
            extra: Tuple[Any, ...] = ()) -> Any:
        """``compute()``, reused while ``sources`` and ``extra`` are unchanged.

        Args:
            name: the entry.
            sources: the tensors the value is derived from.
            compute: computes the value.
            extra: other things the value depends on (shapes, flags), hashable.
        """
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(t.requires_grad
                                                                             for t in sources)):
            return compute()
        keys = [version_key(t) for t in sources]
        if any(k is None for k in keys):
            return compute()
        key = tuple(keys) + tuple(extra)
        hit = self._entries.get(name)
        if hit is not None and hit[0] == key:
            self._entries.move_to_end(name)
            return hit[1]
        value = compute()
        self._entries[name] = (key, value)
        self._entries.move_to_end(name)
        if self.max_entries is not None and len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()


__all__ = ['TensorCache', 'version_key']
