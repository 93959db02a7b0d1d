"""Per-window views of a Swin backbone: stage inputs, object labels, groups.

These functions let the analysis tools look at a backbone's windows with the
same geometry it computes with (mmdet's ``ShiftWindowMSA``, reproduced by
:mod:`mixaq_mmdet.models.layers.window_policy`): zero padding at the bottom/right
to multiples of the window size, a roll by ``-shift_size`` for shifted blocks,
row-major window order. Scores and labels therefore refer to exactly the windows
the :class:`WindowPolicy` ranks.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.backbones.swin import SwinTransformer
from torch import Tensor

from mixaq_mmdet.models.backbones import MixAQSwinTransformer
from mixaq_mmdet.models.layers.window_policy import WindowPolicy, split_groups, window_scores

ArrayLike = Union[np.ndarray, Tensor, Sequence]
StageInput = Tuple[Tensor, Tuple[int, int]]
GroupMaps = List[Dict[str, np.ndarray]]

PARTITIONS = ('regular', 'shifted')
GROUP_HIGH, GROUP_LOW, GROUP_PRUNED = 0, 1, 2
GROUP_NAMES = ('high', 'low', 'pruned')
# RGBA tint per group over a grey image: high-bit windows stay untinted.
GROUP_COLORS = ((0.0, 0.0, 0.0, 0.0), (0.1, 0.45, 1.0, 0.5), (0.0, 0.0, 0.0, 0.65))


def check_swin(backbone: nn.Module) -> SwinTransformer:
    """Return ``backbone`` if it is mmdet's SwinTransformer (or a subclass)."""
    if not isinstance(backbone, SwinTransformer):
        raise TypeError('window analysis needs a Swin backbone (mmdet '
                        'SwinTransformer or MixAQSwinTransformer), got '
                        f'{type(backbone).__name__}')
    return backbone


def block_geometry(block: nn.Module) -> Tuple[int, int]:
    """``(window_size, shift_size)`` of an mmdet ``SwinBlock`` or a
    ``TwoBranchSwinBlock``."""
    holder = block if hasattr(block, 'shift_size') else block.attn
    return holder.window_size, holder.shift_size


def stage_strides(backbone: nn.Module) -> List[int]:
    """Input pixels per token side at each stage (4, 8, 16, 32 for Swin-T)."""
    stride = check_swin(backbone).patch_embed.projection.stride[0]
    strides = []
    for stage in backbone.stages:
        strides.append(stride)
        if stage.downsample is not None:
            stride *= stage.downsample.sampler.stride[0]
    return strides


@torch.no_grad()
def stage_inputs(backbone: nn.Module, img: Tensor) -> List[StageInput]:
    """Run ``backbone`` on ``img`` (B, 3, H, W) and return, per stage, the
    residual stream entering its first block: ``(x (B, H*W, C), (H, W))``.

    This is what :class:`WindowPolicy` ranks (captured by a forward pre-hook on
    ``stages[i].blocks[0]``, so it works for either Swin type).
    """
    check_swin(backbone)
    captured: Dict[int, StageInput] = {}

    def capture(index: int):

        def hook(module: nn.Module, args: tuple) -> None:
            x, hw_shape = args[:2]
            captured[index] = (x.detach(), tuple(hw_shape))

        return hook

    handles = [
        stage.blocks[0].register_forward_pre_hook(capture(i))
        for i, stage in enumerate(backbone.stages)
    ]
    try:
        backbone(img)
    finally:
        for handle in handles:
            handle.remove()
    return [captured[i] for i in range(len(backbone.stages))]


def window_object_labels(gt_masks: ArrayLike,
                         hw_shape: Tuple[int, int],
                         stride: int,
                         window_size: int,
                         shift_size: int = 0) -> Tensor:
    """Whether each window of a stage partition holds an annotated object.

    Token ``(r, c)`` covers input pixels ``[r*s, (r+1)*s) x [c*s, (c+1)*s)``;
    a token is an object token if any of its pixels belongs to any mask, and a
    window is an object window if any of its tokens is. Pixels beyond the masks
    (batch padding) are background.

    Args:
        gt_masks: (N, H_img, W_img) bool instance masks in network-input
            coordinates (after the resize, before batch padding); N may be 0.
        hw_shape: (H, W) tokens of the stage.
        stride: input pixels per token side at the stage.
        window_size: Swin window size.
        shift_size: 0 for the regular partition, else the shifted one.

    Returns:
        (nW,) bool, windows in the backbone's order.
    """
    masks = (
        gt_masks.bool() if isinstance(gt_masks, Tensor) else torch.from_numpy(
            np.asarray(gt_masks, dtype=bool)))
    if masks.dim() != 3:
        raise ValueError('gt_masks must have shape (N, H_img, W_img), got '
                         f'{tuple(masks.shape)}')
    h, w = hw_shape
    img_h, img_w = masks.shape[1:]
    if img_h > h * stride or img_w > w * stride:
        raise ValueError(f'masks of {img_h}x{img_w} px exceed the {h}x{w} '
                         f'token grid at stride {stride} ({h * stride}x'
                         f'{w * stride} px): wrong stride or hw_shape?')
    union = masks.any(dim=0).float()
    union = F.pad(union, (0, w * stride - img_w, 0, h * stride - img_h))
    tokens = union.view(h, stride, w, stride).amax(dim=(1, 3))
    scores, _ = window_scores(tokens.unsqueeze(0), window_size, shift_size)
    return scores[0] > 0


def _numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` separating ``labels`` (bool).

    The Mann-Whitney statistic: the probability that a random positive scores
    above a random negative, ties counting one half (average ranks).
    """
    scores = _numpy(scores).astype(np.float64).ravel()
    labels = _numpy(labels).astype(bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f'{scores.size} scores but {labels.size} labels')
    if not np.isfinite(scores).all():
        raise ValueError('scores must be finite')
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError('ROC-AUC needs positive and negative samples, got '
                         f'{n_pos} positives and {n_neg} negatives')
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0
    pos_rank_sum = mean_rank[inverse.ravel()][labels].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _stage_ratios(backbone: SwinTransformer, stage: int, block: int, low_ratio: Optional[float],
                  prune_ratio: Optional[float]) -> Tuple[float, float]:
    """The (low, prune) ratios block ``block`` of ``stage`` runs with."""
    if isinstance(backbone, MixAQSwinTransformer):
        pair = backbone.pair_index[stage][block]
        low = backbone.low_bit_ratios[pair] if low_ratio is None else low_ratio
        prune = (backbone.prune_ratios[pair] if prune_ratio is None else prune_ratio)
        return low, prune
    return low_ratio, 0.0 if prune_ratio is None else prune_ratio


def _group_map(order: Tensor, hw_shape: Tuple[int, int], window_size: int, low_ratio: float,
               prune_ratio: float) -> np.ndarray:
    """(Hw, Ww) group ids of one image's (nW,) window order."""
    _, low_idx, prune_idx = split_groups(order.unsqueeze(0), low_ratio, prune_ratio)
    groups = np.full(order.numel(), GROUP_HIGH, dtype=np.int64)
    groups[low_idx[0].cpu().numpy()] = GROUP_LOW
    groups[prune_idx[0].cpu().numpy()] = GROUP_PRUNED
    return groups.reshape(
        math.ceil(hw_shape[0] / window_size), math.ceil(hw_shape[1] / window_size))


def window_group_maps(backbone: nn.Module,
                      img: Tensor,
                      policy: Optional[WindowPolicy] = None,
                      low_ratio: Optional[float] = None,
                      prune_ratio: Optional[float] = None) -> GroupMaps:
    """The window groups of every stage for one image.

    A :class:`MixAQSwinTransformer` uses its own policy and the ratios of the
    pair each block belongs to; ``policy``, ``low_ratio`` and ``prune_ratio``
    override them (one ratio for every stage). A plain mmdet SwinTransformer
    needs ``policy`` and ``low_ratio`` (``prune_ratio`` defaults to 0). The
    stage inputs always come from the backbone's own forward; overrides only
    change how they are grouped.

    Args:
        backbone: the Swin backbone, in the mode to analyse (usually eval).
        img: (1, 3, H, W) network input.

    Returns:
        Per stage a dict ``{'regular': map, 'shifted': map}`` (``'shifted'``
        only for stages with a second block) of (Hw, Ww) int64 group ids:
        :data:`GROUP_HIGH`, :data:`GROUP_LOW` or :data:`GROUP_PRUNED`. The
        regular partition is block 0's, the shifted one block 1's.
    """
    check_swin(backbone)
    if img.dim() != 4 or img.shape[0] != 1:
        raise ValueError('img must be one image of shape (1, 3, H, W), got '
                         f'{tuple(img.shape)}')
    if not isinstance(backbone, MixAQSwinTransformer) and (policy is None or low_ratio is None):
        raise ValueError('a plain SwinTransformer has no window policy or '
                         'ratios: pass policy and low_ratio (and prune_ratio)')
    policy = backbone.policy if policy is None else policy
    window_size = block_geometry(backbone.stages[0].blocks[0])[0]
    if policy.window_size != window_size:
        raise ValueError(f'policy window_size {policy.window_size} does not '
                         f'match the backbone window_size {window_size}')
    maps = []
    for i, (x, hw_shape) in enumerate(stage_inputs(backbone, img)):
        blocks = list(backbone.stages[i].blocks)[:len(PARTITIONS)]
        shifts = [block_geometry(block)[1] for block in blocks]
        orders = policy.rank(x, hw_shape, max(shifts))
        stage_maps = {}
        for j, (name, shift) in enumerate(zip(PARTITIONS, shifts)):
            low, prune = _stage_ratios(backbone, i, j, low_ratio, prune_ratio)
            order = orders.select(shift > 0)[0]
            stage_maps[name] = _group_map(order, hw_shape, window_size, low, prune)
        maps.append(stage_maps)
    return maps


def window_map_to_tokens(window_map: np.ndarray,
                         window_size: int,
                         shift_size: int = 0) -> np.ndarray:
    """Spread a (Hw, Ww) per-window map over the padded token grid
    (Hw*ws, Ww*ws), undoing the shifted partition's roll."""
    tokens = np.repeat(np.repeat(window_map, window_size, axis=0), window_size, axis=1)
    if shift_size:
        tokens = np.roll(tokens, (shift_size, shift_size), axis=(0, 1))
    return tokens


def _window_edges(num_windows: int, window_size: int, shift_size: int, stride: int,
                  limit: int) -> List[int]:
    """Pixel positions of the window boundaries inside ``(0, limit)``."""
    edges = ((k * window_size + shift_size) * stride for k in range(num_windows))
    return [e for e in edges if 0 < e < limit]


def draw_window_groups(image: np.ndarray,
                       maps: GroupMaps,
                       window_size: int,
                       strides: Sequence[int],
                       out_file: str,
                       shift_size: Optional[int] = None,
                       panel_size: float = 4.0,
                       dpi: int = 100) -> None:
    """Draw the window groups of every stage over the image and save a PNG.

    One row per stage, one column per partition (regular, shifted). The image
    is shown in grey so the tints read on any picture: high-bit windows stay
    untinted, low-bit ones are blue, pruned ones dark, under the window grid.
    The figure is ``2 * panel_size * dpi`` pixels wide and
    ``len(maps) * panel_size * dpi`` high.

    Args:
        image: (H, W, 3) uint8 RGB network input (after the resize, before
            batch padding), the image ``maps`` were computed on.
        maps: output of :func:`window_group_maps`.
        window_size: Swin window size.
        strides: input pixels per token side of each stage
            (:func:`stage_strides`).
        out_file: PNG path.
        shift_size: shift of the shifted partition (mmdet: ``window_size // 2``).
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError('image must be an (H, W, 3) uint8 RGB array, got '
                         f'{image.dtype} of shape {image.shape}')
    if len(strides) != len(maps):
        raise ValueError(f'{len(strides)} strides for {len(maps)} stages')
    shift_size = window_size // 2 if shift_size is None else shift_size
    img_h, img_w = image.shape[:2]
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    cmap = ListedColormap(GROUP_COLORS)
    fig = Figure(figsize=(2 * panel_size, len(maps) * panel_size), dpi=dpi)
    axes = fig.subplots(len(maps), len(PARTITIONS), squeeze=False)
    for i, (stage_maps, stride) in enumerate(zip(maps, strides)):
        for j, name in enumerate(PARTITIONS):
            ax = axes[i, j]
            ax.set_axis_off()
            if name not in stage_maps:
                ax.set_title(f'stage {i}: no {name} blocks', fontsize=8)
                continue
            window_map = stage_maps[name]
            shift = shift_size if name == 'shifted' else 0
            tokens = window_map_to_tokens(window_map, window_size, shift)
            pixels = np.repeat(np.repeat(tokens, stride, axis=0), stride, axis=1)
            if pixels.shape[0] < img_h or pixels.shape[1] < img_w:
                raise ValueError(f'stage {i} windows cover {pixels.shape[0]}x'
                                 f'{pixels.shape[1]} px, less than the {img_h}x{img_w} '
                                 'image: maps, strides and image do not belong together')
            ax.imshow(grey, cmap='gray', vmin=0, vmax=255)
            ax.imshow(
                pixels[:img_h, :img_w],
                cmap=cmap,
                vmin=-0.5,
                vmax=len(GROUP_NAMES) - 0.5,
                interpolation='nearest')
            for y in _window_edges(window_map.shape[0], window_size, shift, stride, img_h):
                ax.axhline(y - 0.5, color='white', linewidth=0.6)
            for x in _window_edges(window_map.shape[1], window_size, shift, stride, img_w):
                ax.axvline(x - 0.5, color='white', linewidth=0.6)
            counts = np.bincount(window_map.ravel(), minlength=3)
            ax.set_title(
                f'stage {i} (stride {stride}) {name}: '
                f'{counts[0]} high / {counts[1]} low / '
                f'{counts[2]} pruned',
                fontsize=8)
    handles = [Patch(facecolor=(1, 1, 1, 0), edgecolor='black', label='high bits')]
    handles += [
        Patch(
            facecolor=GROUP_COLORS[g], label=GROUP_NAMES[g] + (' bits' if g == GROUP_LOW else ''))
        for g in (GROUP_LOW, GROUP_PRUNED)
    ]
    fig.legend(handles=handles, loc='lower center', ncol=3, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.96, bottom=0.05, hspace=0.2, wspace=0.05)
    fig.savefig(out_file, dpi=dpi)
