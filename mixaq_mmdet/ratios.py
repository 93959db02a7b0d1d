"""The window ratios MixA-Q works with, defined once for the window policy,
SAQA's ratio sampling and the ratio search.

A pair of blocks runs a ``low`` fraction of its windows at low bits and skips a
``prune`` fraction, with ``low + prune <= 1``. This module imports nothing, so
the search can use it without the detection stack.
"""
from typing import Tuple

RATIO_GRID: Tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(9))
"""The paper's per-pair ratio choices: 0, 0.1, ..., 0.8."""

MAX_RATIO: float = RATIO_GRID[-1]
"""The largest ratio the search can give a pair, so the largest SAQA trains."""

RATIO_TOLERANCE = 1e-9
"""Slack for float ratios: matching a ratio to a choice, ``low + prune <= 1``,
and ``ratio * num_windows`` landing just below an integer (0.29 * 100)."""

__all__ = ['RATIO_GRID', 'MAX_RATIO', 'RATIO_TOLERANCE']
