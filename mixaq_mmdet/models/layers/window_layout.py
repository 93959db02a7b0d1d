"""WindowLayout: the windows of one Swin partition, sorted by importance, as
one gather of the tokens and one scatter back.

mmdet's ``ShiftWindowMSA`` pads the (B, H, W, C) token grid to window multiples,
rolls it by ``-shift_size`` and cuts it into windows (three copies), and undoes
all three afterwards. A Two-Branch block also needs the windows sorted by each
image's window order, so that its high-bit, low-bit and pruned groups are
contiguous slices. :class:`WindowLayout` folds padding, roll, partition and sort
into one index: ``index_select`` of the token rows gives the windows as a
(nW, B, N, C) tensor, window-major in the order's ranks, so the group of ranks
``[a, b)`` is the view ``windows[a:b]``; one ``index_select`` with the inverse
index puts every real token back (padding dropped). A stage ranks its windows
once, so its blocks of one partition share one layout (indices, shift masks
and padding flags gathered once per stage, not per block).

Shapes only decide the token map and the shift mask: they are cached per
(H, W, window, shift, device) in the :class:`~mixaq_mmdet.utils.TensorCache`
passed in.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from mixaq_mmdet.utils.tensor_cache import TensorCache


def padded_shape(hw_shape: Tuple[int, int], window_size: int) -> Tuple[int, int]:
    """(H, W) rounded up to window multiples, as mmdet pads."""
    h, w = hw_shape
    ws = window_size
    return h + (ws - h % ws) % ws, w + (ws - w % ws) % ws


def shift_mask(hw_pad: Tuple[int, int], window_size: int, shift_size: int,
               device: torch.device) -> Tensor:
    """(nW, N, N) attention mask of the shifted partition of a padded grid,
    exactly as mmdet's ``ShiftWindowMSA`` builds it (0 within a region, -100
    across regions), windows in mmdet's row-major order."""
    ws, s = window_size, shift_size
    hp, wp = hw_pad
    img_mask = torch.zeros((1, hp, wp, 1), device=device)
    slices = (slice(0, -ws), slice(-ws, -s), slice(-s, None))
    for cnt, (h, w) in enumerate((h, w) for h in slices for w in slices):
        img_mask[:, h, w, :] = cnt
    mask_windows = img_mask.view(1, hp // ws, ws, wp // ws, ws, 1).permute(0, 1, 3, 2, 4,
                                                                           5).reshape(-1, ws * ws)
    diff = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def token_map(hw_shape: Tuple[int, int], window_size: int, shift_size: int,
              device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
    """Where the tokens of a partition sit, in mmdet's geometry.

    Returns:
        ``(source, window, slot)``: ``source`` (nW, N), the token (``i * W + j``)
        at each slot of each window, -1 for padding; ``window`` and ``slot``
        (H*W,), the window and slot of each token.
    """
    h, w = hw_shape
    ws, s = window_size, shift_size
    hp, wp = padded_shape(hw_shape, ws)
    # slot (r, c) of the rolled grid holds the padded grid's (r + s, c + s)
    rows = (torch.arange(hp, device=device) + s) % hp
    cols = (torch.arange(wp, device=device) + s) % wp
    source = torch.where((rows < h)[:, None] & (cols < w)[None, :],
                         rows[:, None] * w + cols[None, :], -1)
    source = source.view(hp // ws, ws, wp // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    r = (torch.arange(h, device=device) - s) % hp
    c = (torch.arange(w, device=device) - s) % wp
    window = ((r // ws)[:, None] * (wp // ws) + (c // ws)[None, :]).reshape(-1)
    slot = ((r % ws)[:, None] * ws + (c % ws)[None, :]).reshape(-1)
    return source, window, slot


@torch.library.custom_op('mixaq::token_map', mutates_args=())
def _token_map_op(h: int, w: int, window_size: int, shift_size: int,
                  device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`token_map` as an op: inside ``torch.compile`` its indices are
    computed once per forward instead of inside every kernel that reads them
    (inductor would fuse the index arithmetic into each gather)."""
    return token_map((h, w), window_size, shift_size, device)


@_token_map_op.register_fake
def _(h, w, window_size, shift_size, device):
    hp, wp = padded_shape((h, w), window_size)
    windows = (hp // window_size) * (wp // window_size)
    return (torch.empty((windows, window_size * window_size), dtype=torch.long,
                        device=device), torch.empty(h * w, dtype=torch.long, device=device),
            torch.empty(h * w, dtype=torch.long, device=device))


@torch.library.custom_op('mixaq::shift_mask', mutates_args=())
def _shift_mask_op(hp: int, wp: int, window_size: int, shift_size: int,
                   device: torch.device) -> Tensor:
    """:func:`shift_mask` as an op (see :func:`_token_map_op`)."""
    return shift_mask((hp, wp), window_size, shift_size, device)


@_shift_mask_op.register_fake
def _(hp, wp, window_size, shift_size, device):
    n = window_size * window_size
    return torch.empty(((hp // window_size) * (wp // window_size), n, n), device=device)


class WindowLayout:
    """The windows of one partition of (B, H*W, C) tokens, sorted per image.

    Args:
        order: (B, nW) window order, most important first (a permutation of
            each image's windows in mmdet's row-major window order).
        hw_shape: (H, W) of the token grid.
        window_size: window side.
        shift_size: 0 for the regular partition, else the shifted one.
        cache: where the shape-only tensors are kept (a fresh one if None).

    Attributes:
        order: the order it was built from.
        num_windows, window_tokens: nW and N = ws * ws.
        gather_index: (nW * B * N,) rows of the token matrix (B*H*W rows, plus
            a zero row at the end when the grid is padded) for each slot of the
            (nW, B, N) layout; rank-major.
        scatter_index: (B * H * W,) position of each token in the layout.
        padded: whether the grid needs padding to window multiples.
        valid: (nW, B, N, 1) bool, which slots hold real tokens; None if not
            padded.
        mask: (nW, B, N, N) shift mask of each sorted window; None if
            ``shift_size`` is 0.
    """

    def __init__(self,
                 order: Tensor,
                 hw_shape: Tuple[int, int],
                 window_size: int,
                 shift_size: int,
                 cache: Optional[TensorCache] = None) -> None:
        cache = TensorCache() if cache is None else cache
        b, num_windows = order.shape
        h, w = hw_shape
        device = order.device
        key = (h, w, window_size, shift_size, device)
        source, window, slot = cache.get(
            ('token_map', ) + key, (),
            lambda: _token_map_op(h, w, window_size, shift_size, device),
            extra=key)
        if source.shape[0] != num_windows:
            raise ValueError(f'window order of shape {tuple(order.shape)} does not match '
                             f'the {source.shape[0]} windows of a {h}x{w} grid with '
                             f'window size {window_size}')
        n = window_size * window_size
        self.order = order
        self.num_windows, self.window_tokens = num_windows, n
        self.hw_shape, self.batch_size = (h, w), b
        length = h * w
        self.padded = padded_shape(hw_shape, window_size) != (h, w)
        order_t = order.t()  # (nW, B): rank-major
        images = torch.arange(b, device=device)
        sorted_source = source[order_t]  # (nW, B, N)
        index = sorted_source + (images * length)[None, :, None]
        if self.padded:
            index = torch.where(sorted_source >= 0, index, b * length)
            self.valid: Optional[Tensor] = (sorted_source >= 0).unsqueeze(-1)
        else:
            self.valid = None
        self.gather_index = index.reshape(-1)
        rank = torch.empty_like(order).scatter_(
            1, order,
            torch.arange(num_windows, device=device).expand(b, -1))
        position = (rank[:, window] * b + images[:, None]) * n + slot[None, :]
        self.scatter_index = position.reshape(-1)
        self._real_rows: Optional[Tuple[Tensor, Tensor, List[int]]] = None
        self.mask: Optional[Tensor] = None
        if shift_size > 0:
            mask = cache.get(
                ('shift_mask', ) + key, (),
                lambda: _shift_mask_op(*padded_shape(hw_shape, window_size), window_size,
                                       shift_size, device),
                extra=key)
            self.mask = mask[order_t]

    def real_rows(self) -> Tuple[Tensor, Tensor, List[int]]:
        """The real (non-padding) slots of a padded layout, for work that is per
        token (LayerNorm, FFN) and need not touch padding: ``(slots, scatter,
        starts)``: ``slots`` (B*H*W,) the layout rows of the real tokens in rank
        order, ``scatter`` (B*H*W,) each token's row in that list, and ``starts``
        (nW + 1 ints) where each rank's tokens begin in it. Host-side sizes: for
        eager CPU inference only."""
        if self._real_rows is None:
            if self.valid is None:
                raise ValueError('real_rows() is for padded layouts')
            valid = self.valid.reshape(-1)
            slots = valid.nonzero().squeeze(1)
            row = torch.cumsum(valid, 0) - 1
            per_rank = self.valid.reshape(self.num_windows, -1).sum(1)
            starts = [0] + torch.cumsum(per_rank, 0).tolist()
            self._real_rows = (slots, row[self.scatter_index], starts)
        return self._real_rows

    def gather(self, x: Tensor) -> Tensor:
        """(B, H*W, C) tokens -> (nW, B, N, C) windows, a new tensor."""
        b, length, c = x.shape
        if (b, length) != (self.batch_size, self.hw_shape[0] * self.hw_shape[1]):
            raise ValueError(f'tokens of shape {tuple(x.shape)} do not match a layout '
                             f'of {self.batch_size} images of {self.hw_shape}')
        rows = x.reshape(b * length, c)
        if self.padded:
            rows = torch.cat([rows, rows.new_zeros(1, c)])
        return rows.index_select(0, self.gather_index).view(self.num_windows, b, self.window_tokens,
                                                            c)

    def scatter(self, windows: Tensor) -> Tensor:
        """(nW, B, N, C) windows -> (B, H*W, C) tokens, padding dropped."""
        c = windows.shape[-1]
        return windows.reshape(-1, c).index_select(0,
                                                   self.scatter_index).view(self.batch_size, -1, c)


__all__ = ['WindowLayout', 'shift_mask', 'token_map', 'padded_shape']
