"""Window importance for MixA-Q: scores, orders and group sizes.

A Swin stage ranks its attention windows once, from the residual stream entering
its first block; every block of the stage then splits that order into a high-bit
group, a low-bit group and (optionally) a pruned group. The window geometry
matches mmdet's ``ShiftWindowMSA``: zero padding at the bottom/right to a multiple
of the window size, a roll by ``-shift_size`` for shifted blocks, then
``window_partition``'s row-major window order.

This module is pure torch and knows nothing about quantizers.
"""
import math
from dataclasses import dataclass
from numbers import Real
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from mixaq_mmdet.ratios import RATIO_TOLERANCE
from .window_layout import padded_shape

WINDOW_SCORES = ('l2', 'contrast')
WINDOW_ORDERS = ('importance', 'random', 'reverse')


def _check_choice(value: str, choices: Sequence[str], name: str) -> None:
    if value not in choices:
        valid = ', '.join(repr(c) for c in choices)
        raise ValueError(f'unknown {name} {value!r}; expected one of {valid}')


def _check_unit_interval(value: object, name: str, hint: str = '') -> float:
    """Return ``value`` as a float in [0, 1], or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f'{name} must be a number in [0, 1], got {value!r} '
                        f'({type(value).__name__}){hint}')
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f'{name} = {value!r} is outside [0, 1]{hint}')
    return float(value)


def normalize_ratios(value: Union[float, Sequence[float]], num_pairs: int,
                     name: str) -> List[float]:
    """Validate per-pair ratios and return one float per pair of blocks.

    Args:
        value: a number (broadcast to every pair) or a list/tuple with exactly
            ``num_pairs`` numbers, each in [0, 1].
        num_pairs: number of pairs of consecutive blocks (W-MSA + SW-MSA).
        name: the argument's name for error messages, e.g. ``'low_bit_ratios'``.
    """
    expected = (f'; expected a float or a list of {num_pairs} values '
                '(one per pair of consecutive blocks), each in [0, 1]')
    if isinstance(value, (list, tuple)):
        if len(value) != num_pairs:
            raise ValueError(f'{name} has {len(value)} values {list(value)!r}'
                             f'{expected}')
        return [_check_unit_interval(v, f'{name}[{i}]', expected) for i, v in enumerate(value)]
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f'{name} = {value!r} ({type(value).__name__}) is not '
                        f'valid{expected}')
    return [_check_unit_interval(value, name, expected)] * num_pairs


def check_ratios(low: Sequence[float], prune: Sequence[float]) -> None:
    """Raise if a pair would send more than all its windows to low bits/pruning.

    ``low`` and ``prune`` are the outputs of :func:`normalize_ratios` for
    ``low_bit_ratios`` and ``prune_ratios``.
    """
    if len(low) != len(prune):
        raise ValueError(f'low_bit_ratios has {len(low)} values but '
                         f'prune_ratios has {len(prune)}; expected one value '
                         'per pair of consecutive blocks in both')
    for i, (low_i, prune_i) in enumerate(zip(low, prune)):
        if low_i + prune_i > 1.0 + RATIO_TOLERANCE:
            raise ValueError(f'low_bit_ratios[{i}] + prune_ratios[{i}] = {low_i} + '
                             f'{prune_i} = {low_i + prune_i:g} > 1 for pair {i}; the '
                             'low-bit and pruned shares of a pair must sum to at most 1')


def token_scores(x: Tensor, hw_shape: Tuple[int, int], score: str = 'l2') -> Tensor:
    """Score every token of a stage input.

    Args:
        x: residual stream of shape (B, H*W, C).
        hw_shape: (H, W).
        score: ``'l2'`` - mean over channels of ``|x|`` (SparseViT, the paper);
            ``'contrast'`` - L2 distance of each token from its image's mean
            token, which survives the LayerNorm that flattens magnitudes at
            the patch embedding and patch merging outputs.

    Returns:
        Float32 score map of shape (B, H, W).
    """
    _check_choice(score, WINDOW_SCORES, 'score')
    H, W = hw_shape
    if x.dim() != 3 or x.shape[1] != H * W:
        raise ValueError(f'x must have shape (B, H*W, C) with hw_shape={hw_shape}'
                         f', got {tuple(x.shape)}')
    if score == 'l2':
        scores = x.abs().mean(dim=-1, dtype=torch.float32)
    else:
        centered = x - x.mean(dim=1, keepdim=True)
        scores = torch.linalg.vector_norm(centered, dim=-1, dtype=torch.float32)
    return scores.view(x.shape[0], H, W)


def _partition(maps: Tensor, window_size: int) -> Tensor:
    """(B, Hp, Wp) -> (B, nW, ws*ws), windows in mmdet's row-major order."""
    B, Hp, Wp = maps.shape
    ws = window_size
    windows = maps.view(B, Hp // ws, ws, Wp // ws, ws).permute(0, 1, 3, 2, 4)
    return windows.reshape(B, -1, ws * ws)


def window_scores(score_map: Tensor,
                  window_size: int,
                  shift_size: int = 0) -> Tuple[Tensor, Tensor]:
    """Partition a token score map into windows as mmdet's ``ShiftWindowMSA``.

    The map is zero-padded at the bottom/right to multiples of ``window_size``
    and, for ``shift_size > 0``, rolled by ``-shift_size`` over (H, W).

    Args:
        score_map: (B, H, W) token scores.
        window_size: side of a square window.
        shift_size: 0 for the regular partition, else the shifted one.

    Returns:
        ``(scores, has_tokens)``, both (B, nW): the L2 norm of each window's
        token scores, and whether the window holds any real (non-padding) token.
    """
    if not 0 <= shift_size < window_size:
        raise ValueError(f'shift_size must be in [0, window_size={window_size})'
                         f', got {shift_size}')
    B, H, W = score_map.shape
    hp, wp = padded_shape((H, W), window_size)
    pad_b, pad_r = hp - H, wp - W
    valid = score_map.new_ones((B, H, W), dtype=torch.bool)
    score_map = F.pad(score_map, (0, pad_r, 0, pad_b))
    valid = F.pad(valid, (0, pad_r, 0, pad_b))
    if shift_size > 0:
        shifts = (-shift_size, -shift_size)
        score_map = torch.roll(score_map, shifts=shifts, dims=(1, 2))
        valid = torch.roll(valid, shifts=shifts, dims=(1, 2))
    scores = torch.linalg.vector_norm(_partition(score_map, window_size), dim=-1)
    has_tokens = _partition(valid, window_size).any(dim=-1)
    return scores, has_tokens


def order_windows(scores: Tensor,
                  has_tokens: Tensor,
                  order: str = 'importance',
                  generator: Optional[torch.Generator] = None) -> Tensor:
    """Order the windows of each image.

    Args:
        scores: (B, nW) window scores.
        has_tokens: (B, nW) False for windows made only of padding.
        order: ``'importance'`` (descending score), ``'reverse'`` (ascending,
            an ablation) or ``'random'`` (a permutation per image drawn from
            ``generator``, a CPU generator).
        generator: random source for ``'random'``.

    Returns:
        (B, nW) long window indices. Padding-only windows always come last
        (mmdet's geometry never makes one, as padding is narrower than a
        window; the rule guards other callers). Ties keep ascending window
        index, so the result is deterministic.
    """
    _check_choice(order, WINDOW_ORDERS, 'order')
    if order == 'random':
        keys = torch.rand(scores.shape, generator=generator)
        perm = keys.argsort(dim=1).to(scores.device)
    else:
        perm = torch.sort(scores, dim=1, descending=order == 'importance', stable=True).indices
    padding_only = (~has_tokens).gather(1, perm).to(torch.uint8)
    padding_last = torch.sort(padding_only, dim=1, stable=True).indices
    return perm.gather(1, padding_last)


@dataclass
class WindowOrders:
    """Window orders of one stage, most important first for ``'importance'``.

    Attributes:
        regular: (B, nW) order for the regular partition (W-MSA blocks).
        shifted: (B, nW) order for the shifted partition (SW-MSA blocks), or
            None when the stage has no shifted blocks.
    """
    regular: Tensor
    shifted: Optional[Tensor] = None

    @property
    def num_windows(self) -> int:
        return self.regular.shape[1]

    def select(self, shifted: bool) -> Tensor:
        """The order a block uses, by whether its windows are shifted."""
        if not shifted:
            return self.regular
        if self.shifted is None:
            raise ValueError('no shifted order: rank() was called with '
                             'shift_size=0')
        return self.shifted


class WindowPolicy:
    """Rank the windows of a Swin stage from its input.

    Args:
        window_size: Swin window size.
        score: token score, one of :data:`WINDOW_SCORES` (see
            :func:`token_scores`).
        order: one of :data:`WINDOW_ORDERS` (see :func:`order_windows`).
        seed: seed of the ``'random'`` order; the generator is reseeded at
            every :meth:`rank` call, so evaluation is reproducible and
            independent of call history.
    """

    def __init__(self,
                 window_size: int,
                 score: str = 'l2',
                 order: str = 'importance',
                 seed: int = 0) -> None:
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f'window_size must be a positive int, got {window_size!r}')
        _check_choice(score, WINDOW_SCORES, 'score')
        _check_choice(order, WINDOW_ORDERS, 'order')
        self.window_size = window_size
        self.score = score
        self.order = order
        self.seed = seed

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(window_size={self.window_size}, '
                f'score={self.score!r}, order={self.order!r}, '
                f'seed={self.seed})')

    @torch.no_grad()
    def rank(self, x: Tensor, hw_shape: Tuple[int, int], shift_size: int = 0) -> WindowOrders:
        """Order the windows of the regular and, if ``shift_size > 0``, the
        shifted partition of ``x`` (B, H*W, C), the stage input before norm1.

        ``shift_size`` must be in [0, window_size).
        """
        score_map = token_scores(x, hw_shape, self.score)
        generator = None
        if self.order == 'random':
            generator = torch.Generator().manual_seed(self.seed)
        regular = self._order(score_map, 0, generator)
        shifted = None
        if shift_size != 0:
            shifted = self._order(score_map, shift_size, generator)
        return WindowOrders(regular, shifted)

    def _order(self, score_map: Tensor, shift_size: int,
               generator: Optional[torch.Generator]) -> Tensor:
        scores, has_tokens = window_scores(score_map, self.window_size, shift_size)
        return order_windows(scores, has_tokens, self.order, generator)


def group_sizes(num_windows: int, low_ratio: float, prune_ratio: float) -> Tuple[int, int, int]:
    """Return ``(n_high, n_low, n_prune)`` for ``num_windows`` windows.

    Rounding rule: ``n_prune = floor(prune_ratio * nW)`` and
    ``n_low = floor(low_ratio * nW)``; the high-bit group takes the rest. A
    group never gets more windows than its ratio asks, so the important
    windows never get fewer (with nW = 1 the window stays high-bit unless a
    ratio is 1.0).
    """
    low = _check_unit_interval(low_ratio, 'low_ratio')
    prune = _check_unit_interval(prune_ratio, 'prune_ratio')
    if low + prune > 1.0 + RATIO_TOLERANCE:
        raise ValueError(f'low_ratio + prune_ratio = {low} + {prune} = '
                         f'{low + prune:g} > 1; they must sum to at most 1')
    n_prune = math.floor(prune * num_windows + RATIO_TOLERANCE)
    n_low = math.floor(low * num_windows + RATIO_TOLERANCE)
    return num_windows - n_low - n_prune, n_low, n_prune


def split_groups(order: Tensor, low_ratio: float,
                 prune_ratio: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Split a (B, nW) window order into high-bit, low-bit and pruned groups.

    The high group is the first ``n_high`` windows of the order, the low group
    the next ``n_low``, the pruned group the last ``n_prune`` (least
    important); sizes follow :func:`group_sizes` and are the same for every
    image of the batch.

    Returns:
        ``(high_idx, low_idx, prune_idx)`` of shapes (B, n_high), (B, n_low),
        (B, n_prune).
    """
    n_high, n_low, _ = group_sizes(order.shape[1], low_ratio, prune_ratio)
    return (order[:, :n_high], order[:, n_high:n_high + n_low], order[:, n_high + n_low:])
