"""The Two-Branch block as first written: each group gathered per image with
advanced indexing, run, and scattered back out of place, every mask and bias
rebuilt per forward. Slow and plain; the tests hold the optimized block to it
bit for bit (same qparams after calibration, same outputs)."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mixaq_mmdet.models.layers.window_layout import padded_shape, shift_mask
from mixaq_mmdet.models.layers.window_policy import split_groups


def _partition(x: Tensor, ws: int) -> Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def _reverse(windows: Tensor, h: int, w: int) -> Tensor:
    ws = windows.shape[1]
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


def _keep(drop_path, windows: Tensor) -> Optional[Tensor]:
    p = float(getattr(drop_path, 'drop_prob', 0.0))
    if not drop_path.training or p == 0.0:
        return None
    draw = torch.rand((windows.shape[0], 1, 1, 1), dtype=windows.dtype, device=windows.device)
    return (1.0 - p + draw).floor_().div_(1.0 - p)


def _scaled(x: Tensor, keep: Optional[Tensor]) -> Tensor:
    return x if keep is None else x * keep


def _branch(block, windows: Tensor, valid: Tensor, mask: Optional[Tensor], branch: str,
            keep: Tuple[Optional[Tensor], Optional[Tensor]]) -> Tensor:
    b, k, n, c = windows.shape
    norm1, norm2 = block.branch_norms(branch)
    quant = block.branches[branch]
    w_msa = block.attn.w_msa
    x = windows.reshape(b * k, n, c)
    y = torch.where(valid.reshape(b * k, n, 1) > 0, norm1(x), block.reparam_pad)
    m = b * k
    qkv = w_msa.qkv(quant.qkv_in(y)).reshape(m, n, 3, w_msa.num_heads, c // w_msa.num_heads)
    q, kk, v = qkv.permute(2, 0, 3, 1, 4)
    attn = quant.qk(q * w_msa.scale, kk.transpose(-2, -1))
    table, index = w_msa.relative_position_bias_table, w_msa.relative_position_index
    bias = table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()
    attn = attn + bias.unsqueeze(0)
    if mask is not None:
        attn = attn + mask.flatten(0, 1).unsqueeze(1)
    attn = w_msa.attn_drop(attn.softmax(dim=-1))
    y = quant.av(attn, v).transpose(1, 2).reshape(m, n, c)
    y = w_msa.proj_drop(w_msa.proj(quant.proj_in(y)))
    x = x + _scaled(y.view(b, k, n, c), keep[0]).flatten(0, 1)
    layers = block.ffn.layers
    fc1, act, drop = layers[0]
    h = drop(act(fc1(quant.fc1_in(norm2(x)))))
    y = block.ffn.gamma2(layers[2](layers[1](quant.fc2_in(h))))
    x = x + _scaled(y.view(b, k, n, c), keep[1]).flatten(0, 1)
    return x.view(b, k, n, c)


def reference_forward(block, x: Tensor, hw_shape: Tuple[int, int], order: Tensor, low_ratio: float,
                      prune_ratio: float) -> Tensor:
    """What ``block(x, hw_shape, order, low_ratio, prune_ratio)`` must compute."""
    b, _, c = x.shape
    h, w = hw_shape
    ws, s = block.window_size, block.shift_size
    hw_pad = padded_shape(hw_shape, ws)
    pad_b, pad_r = hw_pad[0] - h, hw_pad[1] - w
    x = F.pad(x.view(b, h, w, c), (0, 0, 0, pad_r, 0, pad_b))
    valid = F.pad(x.new_ones(1, h, w, 1), (0, 0, 0, pad_r, 0, pad_b))
    if s > 0:
        x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        valid = torch.roll(valid, shifts=(-s, -s), dims=(1, 2))
    windows = _partition(x, ws).reshape(b, -1, ws * ws, c)
    valid = _partition(valid, ws).reshape(1, -1, ws * ws).expand(b, -1, -1)
    mask = None if s == 0 else shift_mask(hw_pad, ws, s, x.device).expand(b, -1, -1, -1)
    keep = (_keep(block.attn.drop, windows), _keep(block.ffn.dropout_layer, windows))
    run_empty = block.training and torch.is_grad_enabled()
    rows = torch.arange(b).unsqueeze(1)
    out = windows
    for branch, idx in zip(('high', 'low'), split_groups(order, low_ratio, prune_ratio)):
        if idx.shape[1] == 0 and not run_empty:
            continue
        result = _branch(block, windows[rows, idx], valid[rows, idx],
                         None if mask is None else mask[rows, idx], branch, keep)
        out = out.index_put((rows, idx), result)
    x = _reverse(out.view(-1, ws, ws, c), *hw_pad)
    if s > 0:
        x = torch.roll(x, shifts=(s, s), dims=(1, 2))
    return x[:, :h, :w, :].reshape(b, h * w, c)
