"""The Two-Branch Swin block: one set of weights, two activation precisions.

The block takes the windows of its partition (regular or shifted), computes the
high-bit group and the low-bit group with the block's shared weights (qkv, proj,
relative position bias, fc1, fc2) but each branch's own LayerNorm copies and
activation quantizers, passes the pruned group through unchanged, and scatters
the results back into place.

Everything is computed window by window, LayerNorms and FFN included. That is
exactly what mmdet's ``SwinBlock`` computes for the real tokens: LayerNorm and FFN
act per token, and the padding tokens that mmdet zeroes after ``norm1`` are zeroed
here after each branch's ``norm1`` (the padding is dropped at the end either way).
"""
import copy
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmdet.models.backbones.swin import SwinBlock
from torch import Tensor

from mixaq_mmdet.quantization import QuantLinear, QuantMatMul, build_quantizer
from .window_policy import gather_windows, scatter_windows, split_groups

BRANCHES = ('high', 'low')


class BranchQuantizers(nn.Module):
    """The activation quantizers of one branch of a Two-Branch block.

    Each quantizer sits where an activation enters a multiplication: the inputs of
    qkv, proj, fc1 and fc2, and both operands of the two attention products
    (``q @ k^T`` and ``softmax @ v``; the softmax with its own quantizer).
    """

    def __init__(self, act_cfg: dict, softmax_cfg: dict) -> None:
        super().__init__()
        self.qkv_in = build_quantizer(act_cfg)
        self.qk = QuantMatMul(build_quantizer(act_cfg), build_quantizer(act_cfg))
        self.av = QuantMatMul(build_quantizer(softmax_cfg),
                              build_quantizer(act_cfg))
        self.proj_in = build_quantizer(act_cfg)
        self.fc1_in = build_quantizer(act_cfg)
        self.fc2_in = build_quantizer(act_cfg)


class TwoBranchSwinBlock(nn.Module):
    """A Swin block whose windows run in a high-bit, a low-bit or a pruned group.

    Built from an mmdet ``SwinBlock`` whose modules it takes over, so parameter
    names stay mmdet's (``norm1``, ``attn.w_msa.qkv``, ``attn.w_msa.proj``,
    ``attn.w_msa.relative_position_bias_table``, ``norm2``, ``ffn.layers.0.0``,
    ``ffn.layers.1``). ``norm1``/``norm2`` serve the high branch; ``norm1_low`` and
    ``norm2_low`` are the low branch's copies, filled from ``norm1``/``norm2`` when a
    checkpoint without them (mmdet's layout) is loaded. ``reparam_pad`` is the
    value of padding tokens after ``norm1`` (0, as in mmdet, until a scale
    reparameterization is folded in).

    Args:
        block: the mmdet block to take over.
        window_size: its window size.
        shift_size: its shift (0 for W-MSA blocks).
        weight_cfg: weight quantizer config, one per linear layer (shared by both
            branches, as the weights are).
        act_cfgs: activation quantizer config per branch, ``{'high': ..., 'low': ...}``.
        softmax_cfgs: post-softmax quantizer config per branch.
    """

    def __init__(self, block: SwinBlock, window_size: int, shift_size: int,
                 weight_cfg: dict, act_cfgs: Dict[str, dict],
                 softmax_cfgs: Dict[str, dict]) -> None:
        super().__init__()
        w_msa = block.attn.w_msa
        self.window_size = window_size
        self.shift_size = shift_size
        self.num_heads = w_msa.num_heads
        self.scale = w_msa.scale
        self.with_cp = block.with_cp
        self.norm1 = block.norm1
        self.norm2 = block.norm2
        self.norm1_low = copy.deepcopy(block.norm1)
        self.norm2_low = copy.deepcopy(block.norm2)
        # What a zero (padding) token becomes after norm1: 0, or the image of 0
        # under a folded scale reparameterization (see quantization/reparam.py).
        self.register_buffer('reparam_pad',
                             torch.zeros(block.norm1.normalized_shape))
        self.attn = nn.Module()
        self.attn.w_msa = nn.Module()
        self.attn.w_msa.relative_position_bias_table = (
            w_msa.relative_position_bias_table)
        self.attn.w_msa.register_buffer('relative_position_index',
                                        w_msa.relative_position_index)
        self.attn.w_msa.qkv = QuantLinear(w_msa.qkv, weight_cfg, None)
        self.attn.w_msa.proj = QuantLinear(w_msa.proj, weight_cfg, None)
        self.attn_drop = w_msa.attn_drop
        self.proj_drop = w_msa.proj_drop
        self.attn_drop_path = block.attn.drop
        ffn = block.ffn
        self.ffn = nn.Module()
        self.ffn.layers = nn.Sequential(
            nn.Sequential(QuantLinear(ffn.layers[0][0], weight_cfg, None),
                          ffn.layers[0][1], ffn.layers[0][2]),
            QuantLinear(ffn.layers[1], weight_cfg, None), ffn.layers[2])
        self.ffn_drop_path = ffn.dropout_layer
        self.ffn_gamma = ffn.gamma2
        self.branches = nn.ModuleDict({
            b: BranchQuantizers(act_cfgs[b], softmax_cfgs[b])
            for b in BRANCHES
        })

    def branch_norms(self, branch: str) -> Tuple[nn.Module, nn.Module]:
        """(norm1, norm2) of ``branch``."""
        if branch == 'high':
            return self.norm1, self.norm2
        return self.norm1_low, self.norm2_low

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ('norm1', 'norm2'):
            for key in ('weight', 'bias'):
                src, dst = f'{prefix}{name}.{key}', f'{prefix}{name}_low.{key}'
                if src in state_dict and dst not in state_dict:
                    state_dict[dst] = state_dict[src].clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def relative_position_bias(self) -> Tensor:
        """(heads, N, N) bias of mmdet's WindowMSA."""
        w_msa = self.attn.w_msa
        n = self.window_size**2
        bias = w_msa.relative_position_bias_table[
            w_msa.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1).contiguous()

    def shift_mask(self, hw_pad: Tuple[int, int], device) -> Optional[Tensor]:
        """(nW, N, N) attention mask of the shifted partition, as mmdet's
        ShiftWindowMSA builds it (None for regular windows)."""
        if self.shift_size == 0:
            return None
        ws, s = self.window_size, self.shift_size
        img_mask = torch.zeros((1, *hw_pad, 1), device=device)
        slices = (slice(0, -ws), slice(-ws, -s), slice(-s, None))
        for cnt, (h, w) in enumerate((h, w) for h in slices for w in slices):
            img_mask[:, h, w, :] = cnt
        mask_windows = partition_windows(img_mask, ws).view(-1, ws * ws)
        diff = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
        return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)

    def _attention(self, x: Tensor, mask: Optional[Tensor],
                   quant: BranchQuantizers) -> Tensor:
        """Window attention of (M, N, C) windows with (M, N, N) masks."""
        w_msa = self.attn.w_msa
        m, n, c = x.shape
        qkv = w_msa.qkv(quant.qkv_in(x)).reshape(m, n, 3, self.num_heads,
                                                 c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = quant.qk(q * self.scale, k.transpose(-2, -1))
        attn = attn + self.relative_position_bias().unsqueeze(0)
        if mask is not None:
            attn = attn + mask.unsqueeze(1)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = quant.av(attn, v).transpose(1, 2).reshape(m, n, c)
        return self.proj_drop(w_msa.proj(quant.proj_in(x)))

    def _ffn(self, x: Tensor, quant: BranchQuantizers) -> Tensor:
        layers = self.ffn.layers
        fc1, act, drop = layers[0]
        h = drop(act(fc1(quant.fc1_in(x))))
        return layers[2](layers[1](quant.fc2_in(h)))

    def _branch(self, windows: Tensor, valid: Tensor, mask: Optional[Tensor],
                branch: str, keep: Tuple[Optional[Tensor], Optional[Tensor]]) -> Tensor:
        """One group through the block: (B, k, N, C) -> (B, k, N, C).

        ``keep`` holds the per-image DropPath scales of the attention and FFN
        residuals (None: identity), shared by the branches.
        """
        b, k, n, c = windows.shape
        norm1, norm2 = self.branch_norms(branch)
        quant = self.branches[branch]
        x = windows.reshape(b * k, n, c)
        y = torch.where(valid.reshape(b * k, n, 1) > 0, norm1(x), self.reparam_pad)
        y = self._attention(y, None if mask is None else mask.flatten(0, 1),
                            quant)
        x = x + _scaled(y.view(b, k, n, c), keep[0]).flatten(0, 1)
        y = self.ffn_gamma(self._ffn(norm2(x), quant))
        x = x + _scaled(y.view(b, k, n, c), keep[1]).flatten(0, 1)
        return x.view(b, k, n, c)

    def forward(self, x: Tensor, hw_shape: Tuple[int, int], order: Tensor,
                low_ratio: float, prune_ratio: float) -> Tensor:
        """Run the block on (B, H*W, C) tokens.

        Args:
            order: (B, nW) window order of this block's partition, most important
                first (from :class:`WindowPolicy`).
            low_ratio: fraction of windows computed by the low-bit branch.
            prune_ratio: fraction of windows that skip the block.
        """
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, hw_shape, order, low_ratio,
                                 prune_ratio, use_reentrant=False)
        return self._forward(x, hw_shape, order, low_ratio, prune_ratio)

    def _forward(self, x: Tensor, hw_shape: Tuple[int, int], order: Tensor,
                 low_ratio: float, prune_ratio: float) -> Tensor:
        b, length, c = x.shape
        h, w = hw_shape
        if length != h * w:
            raise ValueError(f'{length} tokens do not match hw_shape {hw_shape}')
        ws, s = self.window_size, self.shift_size
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, pad_r, 0, pad_b))
        valid = F.pad(x.new_ones(1, h, w, 1), (0, 0, 0, pad_r, 0, pad_b))
        hw_pad = (h + pad_b, w + pad_r)
        if s > 0:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
            valid = torch.roll(valid, shifts=(-s, -s), dims=(1, 2))
        windows = partition_windows(x, ws).reshape(b, -1, ws * ws, c)
        valid = partition_windows(valid, ws).reshape(1, -1, ws * ws)
        mask = self.shift_mask(hw_pad, x.device)
        num_windows = windows.shape[1]
        if order.shape != (b, num_windows):
            raise ValueError(f'window order of shape {tuple(order.shape)} does '
                             f'not match {num_windows} windows of {b} images')
        groups = dict(zip(BRANCHES, split_groups(order, low_ratio, prune_ratio)))
        keep = (drop_path_keep(self.attn_drop_path, windows),
                drop_path_keep(self.ffn_drop_path, windows))
        # In training every branch runs, an empty one on zero windows, so all its
        # parameters get (zero) gradients: DDP's find_unused_parameters=False
        # holds whatever the ratios of the iteration.
        run_empty = self.training and torch.is_grad_enabled()
        out = windows
        for branch, idx in groups.items():
            if idx.shape[1] == 0 and not run_empty:
                continue
            if idx.shape[1] == num_windows:
                # the whole partition in one branch: window order is irrelevant
                out = self._branch(windows, valid.expand(b, -1, -1),
                                   None if mask is None else
                                   mask.expand(b, -1, -1, -1), branch, keep)
                continue
            sel_valid = gather_windows(valid.expand(b, -1, -1), idx)
            sel_mask = None if mask is None else gather_windows(
                mask.expand(b, -1, -1, -1), idx)
            result = self._branch(gather_windows(windows, idx), sel_valid,
                                  sel_mask, branch, keep)
            out = scatter_windows(out, idx, result)
        x = reverse_windows(out.view(-1, ws, ws, c), *hw_pad)
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        return x[:, :h, :w, :].reshape(b, h * w, c)


def drop_path_keep(drop_path: nn.Module, windows: Tensor) -> Optional[Tensor]:
    """One DropPath draw per image for (B, nW, N, C) windows: a (B, 1, 1, 1)
    scale, 0 or ``1 / keep_prob``, as mmdet's ``DropPath`` draws per image of
    (B, L, C) tokens; None where it is the identity (eval, or probability 0).
    One draw serves every branch of the block, so the windows of one image are
    kept or dropped together."""
    p = float(getattr(drop_path, 'drop_prob', 0.0))
    if not drop_path.training or p == 0.0:
        return None
    keep_prob = 1.0 - p
    draw = torch.rand((windows.shape[0], 1, 1, 1), dtype=windows.dtype,
                      device=windows.device)
    return (keep_prob + draw).floor_().div_(keep_prob)


def _scaled(x: Tensor, keep: Optional[Tensor]) -> Tensor:
    return x if keep is None else x * keep


def partition_windows(x: Tensor, window_size: int) -> Tensor:
    """(B, H, W, C) -> (B * nW, ws, ws, C) in mmdet's window order."""
    b, h, w, c = x.shape
    ws = window_size
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def reverse_windows(windows: Tensor, h: int, w: int) -> Tensor:
    """(B * nW, ws, ws, C) -> (B, H, W, C), the inverse of partition_windows."""
    ws = windows.shape[1]
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)
