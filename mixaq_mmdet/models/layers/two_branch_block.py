"""The Two-Branch Swin block: one set of weights, two activation precisions.

The block takes the windows of its partition (regular or shifted) sorted by the
stage's window order (:class:`WindowLayout`), computes the high-bit group and the
low-bit group with the block's shared weights (qkv, proj, relative position bias,
fc1, fc2) but each branch's own LayerNorm copies and activation quantizers,
passes the pruned group through unchanged, and puts every token back.

Everything is computed window by window, LayerNorms and FFN included. That is
exactly what mmdet's ``SwinBlock`` computes for the real tokens: LayerNorm and FFN
act per token, and the padding tokens that mmdet zeroes after ``norm1`` are zeroed
here after each branch's ``norm1`` (the padding is dropped at the end either way).
Where both groups would compute mmdet's function anyway (no fake quantization or
observing in the branches, equal LayerNorm copies, nothing pruned) the block runs
mmdet's own ``SwinBlock.forward`` on the modules it took over.
"""
import copy
from typing import Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmdet.models.backbones.swin import SwinBlock
from torch import Tensor

from mixaq_mmdet.quantization import (QuantizerBase, QuantLinear, QuantMatMul, UniformQuantizer,
                                      build_quantizer, reused_quantized_weights)
from mixaq_mmdet.quantization.base import autocast_enabled
from mixaq_mmdet.quantization.numerics import run_kernel
from mixaq_mmdet.utils.tensor_cache import TensorCache
from .window_layout import WindowLayout
from .window_policy import group_sizes

BRANCHES = ('high', 'low')
#: Fewest tokens of a group whose FFN runs on real tokens only. MKL's sgemm takes
#: other kernels for a handful of rows (up to 11 measured) whose results differ
#: in the last bit; a window group always has 49+ rows, so the FFN of a smaller
#: group runs on its whole windows and the numbers stay those of the reference.
MIN_FFN_ROWS = 16

#: Where a branch quantizes an activation, in the order of the computation: the
#: inputs of qkv, both operands of ``q @ k^T``, the post-softmax probabilities
#: and ``v`` of ``softmax @ v``, the inputs of proj and fc1, and the post-GELU
#: input of fc2. Each position has its own quantizer config.
QUANTIZER_POSITIONS = ('qkv_in', 'q', 'k', 'softmax', 'v', 'proj_in', 'fc1_in', 'fc2_in')


class BranchQuantizers(nn.Module):
    """The activation quantizers of one branch of a Two-Branch block, one per
    :data:`QUANTIZER_POSITIONS` entry, each built from its own config.

    Module names (and so checkpoint keys) are ``qkv_in``, ``qk.quantizer_a`` (q),
    ``qk.quantizer_b`` (k), ``av.quantizer_a`` (softmax), ``av.quantizer_b`` (v),
    ``proj_in``, ``fc1_in`` and ``fc2_in``.
    """

    def __init__(self, cfgs: Mapping[str, dict]) -> None:
        super().__init__()
        missing = [p for p in QUANTIZER_POSITIONS if p not in cfgs]
        unknown = [p for p in cfgs if p not in QUANTIZER_POSITIONS]
        if missing or unknown:
            raise ValueError(f'branch quantizer configs must have exactly the positions '
                             f'{QUANTIZER_POSITIONS}; missing {missing}, unknown {unknown}')
        self.qkv_in = build_quantizer(cfgs['qkv_in'])
        self.qk = QuantMatMul(build_quantizer(cfgs['q']), build_quantizer(cfgs['k']))
        self.av = QuantMatMul(build_quantizer(cfgs['softmax']), build_quantizer(cfgs['v']))
        self.proj_in = build_quantizer(cfgs['proj_in'])
        self.fc1_in = build_quantizer(cfgs['fc1_in'])
        self.fc2_in = build_quantizer(cfgs['fc2_in'])


class TwoBranchSwinBlock(nn.Module):
    """A Swin block whose windows run in a high-bit, a low-bit or a pruned group.

    Built from an mmdet ``SwinBlock`` whose modules it takes over (``norm1``,
    ``attn``: the ``ShiftWindowMSA``, ``norm2``, ``ffn``), with the four linear
    layers swapped for :class:`QuantLinear`, so parameter names stay mmdet's
    (``attn.w_msa.qkv``, ``attn.w_msa.proj``,
    ``attn.w_msa.relative_position_bias_table``, ``ffn.layers.0.0``,
    ``ffn.layers.1``). ``norm1``/``norm2`` serve the high branch; ``norm1_low``
    and ``norm2_low`` are the low branch's copies, filled from ``norm1``/``norm2``
    when a checkpoint without them (mmdet's layout) is loaded. ``reparam_pad`` is
    the value of padding tokens after ``norm1`` (0, as in mmdet, until a scale
    reparameterization is folded in).

    Args:
        block: the mmdet block to take over.
        weight_cfg: weight quantizer config, one per linear layer (shared by both
            branches, as the weights are).
        branch_cfgs: per branch (``'high'``, ``'low'``), the quantizer config of
            every :data:`QUANTIZER_POSITIONS` entry.
    """

    def __init__(self, block: SwinBlock, weight_cfg: dict,
                 branch_cfgs: Mapping[str, Mapping[str, dict]]) -> None:
        super().__init__()
        self.window_size = block.attn.window_size
        self.shift_size = block.attn.shift_size
        self.with_cp = block.with_cp
        self.norm1 = block.norm1
        self.norm2 = block.norm2
        self.norm1_low = copy.deepcopy(block.norm1)
        self.norm2_low = copy.deepcopy(block.norm2)
        # What a zero (padding) token becomes after norm1: 0, or the image of 0
        # under a folded scale reparameterization (see quantization/reparam.py).
        self.register_buffer('reparam_pad', torch.zeros(block.norm1.normalized_shape))
        self.attn = block.attn
        w_msa = self.attn.w_msa
        w_msa.qkv = QuantLinear(w_msa.qkv, weight_cfg, None)
        w_msa.proj = QuantLinear(w_msa.proj, weight_cfg, None)
        self.ffn = block.ffn
        fc1, fc2 = self.ffn.layers[0][0], self.ffn.layers[1]
        self.ffn.layers[0][0] = QuantLinear(fc1, weight_cfg, None)
        self.ffn.layers[1] = QuantLinear(fc2, weight_cfg, None)
        self.branches = nn.ModuleDict({b: BranchQuantizers(branch_cfgs[b]) for b in BRANCHES})
        #: Always the Two-Branch path on whole windows (see
        #: MixAQSwinTransformer.whole_windows).
        self.whole_windows = False
        self._branch_quantizers = tuple(q for q in self.branches.modules()
                                        if isinstance(q, QuantizerBase))
        self._cache = TensorCache()

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

    def _linears(self) -> Tuple[QuantLinear, ...]:
        w_msa, layers = self.attn.w_msa, self.ffn.layers
        return w_msa.qkv, w_msa.proj, layers[0][0], layers[1]

    def _unused_parameters_anchor(self, running: List[str]) -> Tensor:
        """A zero that carries a (zero) gradient to every parameter no group of a
        training forward reaches: the LayerNorm copies and quantizers of an empty
        branch, and the shared weights too if every window is pruned. DDP's
        ``find_unused_parameters=False`` needs every parameter in the graph,
        whatever the ratios of the iteration."""
        specific = {b: {id(p) for p in self.branch_parameters(b)} for b in BRANCHES}
        reached = set().union(*(specific[b] for b in running))
        candidates = set().union(
            *specific.values()) if running else {id(p)
                                                 for p in self.parameters()}
        unused = [p for p in self.parameters() if p.requires_grad and id(p) in candidates - reached]
        return sum((p.reshape(-1)[:0].sum() for p in unused), self.reparam_pad.new_zeros(()))

    def branch_parameters(self, branch: str) -> List[nn.Parameter]:
        """The parameters of ``branch`` alone: its LayerNorm copies and quantizers."""
        norm1, norm2 = self.branch_norms(branch)
        return [*norm1.parameters(), *norm2.parameters(), *self.branches[branch].parameters()]

    def relative_position_bias(self) -> Tensor:
        """(heads, N, N) bias of mmdet's WindowMSA (computed once per table in
        inference)."""
        w_msa = self.attn.w_msa
        table, index = w_msa.relative_position_bias_table, w_msa.relative_position_index

        def bias() -> Tensor:
            n = self.window_size**2
            return table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()

        return self._cache.get('relative_position_bias', (table, index), bias)

    def runs_dense(self, low_ratio: float, prune_ratio: float) -> bool:
        """Whether a forward at these ratios is mmdet's ``SwinBlock.forward``:
        nothing pruned, branches neither fake-quantizing nor observing, and every
        window in the high branch or LayerNorm copies equal to the high ones (no
        folded reparameterization). Never while training with gradients, where
        every parameter of both branches must get a gradient (DDP). Under
        ``torch.compile`` the LayerNorm copies are not compared (a data-dependent
        branch): a low-bit group then runs the Two-Branch path. Nor where a
        quantizer maps its input even when off (UQ-ViT's NormQuantizer, whose
        inverse map is folded into fc2)."""
        if (prune_ratio > 0 or self.whole_windows or (self.training and torch.is_grad_enabled())):
            return False
        if any(
                q.fake_quant_enabled or q.observer_enabled or _maps_input(q)
                for q in self._branch_quantizers):
            return False
        if low_ratio == 0:
            return True
        return not torch.compiler.is_compiling() and self._branches_equal()

    def _branches_equal(self) -> bool:
        pairs = [(self.norm1.weight, self.norm1_low.weight), (self.norm1.bias, self.norm1_low.bias),
                 (self.norm2.weight, self.norm2_low.weight), (self.norm2.bias, self.norm2_low.bias)]
        sources = tuple(t for pair in pairs for t in pair) + (self.reparam_pad, )
        return self._cache.get(
            'branches_equal', sources,
            lambda: all(torch.equal(a, b) for a, b in pairs) and not bool(self.reparam_pad.any()))

    def integer_inputs(self) -> Iterator[Tuple[QuantLinear, QuantizerBase]]:
        """The shared linear layers with each branch's quantizer of their input:
        what :func:`~mixaq_mmdet.quantization.to_integer` converts."""
        w_msa, layers = self.attn.w_msa, self.ffn.layers
        for quant in self.branches.values():
            yield from ((w_msa.qkv, quant.qkv_in), (w_msa.proj, quant.proj_in),
                        (layers[0][0], quant.fc1_in), (layers[1], quant.fc2_in))

    def _window_attention(self, x: Tensor, mask: Optional[Tensor], quant: BranchQuantizers,
                          bias: Tensor) -> Tensor:
        """Window attention of (M, N, C) windows with (M, N, N) masks and the
        (heads, N, N) relative position bias, up to the input of proj."""
        w_msa = self.attn.w_msa
        m, n, c = x.shape
        heads = w_msa.num_heads
        qkv = w_msa.qkv(x, quant.qkv_in).reshape(m, n, 3, heads, c // heads)
        quantized = self._fake_quantized_qkv(qkv, quant)
        if quantized is not None:
            q, k_t, v = quantized
            attn = torch.matmul(q, k_t).add_(bias.unsqueeze(0))
            if mask is not None:
                attn.add_(mask.unsqueeze(1))
            attn = quant.av.quantizer_a(attn.softmax(dim=-1))
            return torch.matmul(attn, v).transpose(1, 2).reshape(m, n, c)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = quant.qk(q * w_msa.scale, k.transpose(-2, -1))
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            attn = attn + mask.unsqueeze(1)
        attn = w_msa.attn_drop(attn.softmax(dim=-1))
        return quant.av(attn, v).transpose(1, 2).reshape(m, n, c)

    def _fake_quantized_qkv(self, qkv: Tensor,
                            quant: BranchQuantizers) -> Optional[Tuple[Tensor, Tensor, Tensor]]:
        """``(q * scale, k^T, v)`` fake-quantized by the branch's quantizers,
        each laid out for its product, in one fused pass over the (M, N, 3,
        heads, head dims) output of qkv instead of a scaling, three strided
        copies and three quantizer passes; the same values. In inference with
        uniform per-tensor quantizers that quantize (not observing); None
        otherwise (the quantizers then run one by one)."""
        quantizers = (quant.qk.quantizer_a, quant.qk.quantizer_b, quant.av.quantizer_b)
        if (self.training or (torch.is_grad_enabled() and qkv.requires_grad)
                or qkv.dtype != torch.float32 or autocast_enabled(qkv.device.type) or not all(
                    isinstance(q, UniformQuantizer) and not q.per_channel and q.fake_quant_enabled
                    and not q.observer_enabled and q.is_calibrated for q in quantizers)):
            return None
        scale = self._cache.get(
            'qk_scale', (), lambda: qkv.new_tensor(self.attn.w_msa.scale), extra=(qkv.device, ))
        params = [p for q in quantizers for p in q.value_params()]
        values = run_kernel(_split_fake_quantized, (qkv, scale, *params))
        return tuple(q.record_values(v) for q, v in zip(quantizers, values))

    def _attention(self, x: Tensor, mask: Optional[Tensor], quant: BranchQuantizers,
                   bias: Tensor) -> Tensor:
        """Window attention of (M, N, C) windows, proj included."""
        w_msa = self.attn.w_msa
        return w_msa.proj_drop(
            w_msa.proj(self._window_attention(x, mask, quant, bias), quant.proj_in))

    def _ffn(self, x: Tensor, quant: BranchQuantizers) -> Tensor:
        layers = self.ffn.layers
        fc1, act, drop = layers[0]
        h = drop(act(fc1(x, quant.fc1_in)))
        return self.ffn.gamma2(layers[2](layers[1](h, quant.fc2_in)))

    def _attention_residual(self, x: Tensor, valid: Optional[Tensor], mask: Optional[Tensor],
                            bias: Tensor, branch: str, keep: Optional[Tensor],
                            inplace: bool) -> Tensor:
        """``x + attention(norm1(x))`` of one group's (P, Q, N, C) windows
        (rank-major), ``valid`` and ``mask`` laid out alike.

        ``keep`` is the DropPath scale of the residual, broadcast to ``x``
        (None: identity); ``inplace`` adds into ``x`` (inference: ``x`` is a
        slice of the gathered windows)."""
        p, q, n, c = x.shape
        y = self.branch_norms(branch)[0](x.reshape(p * q, n, c))
        if valid is not None:
            y = torch.where(valid.reshape(p * q, n, 1), y, self.reparam_pad)
        mask = None if mask is None else mask.reshape(p * q, n, n)
        quant, proj = self.branches[branch], self.attn.w_msa.proj
        if inplace and keep is None and proj.runs_integer(quant.proj_in):
            # the residual add fused into the integer product, in place
            proj.integer_linear(
                self._window_attention(y, mask, quant, bias), quant.proj_in, residual=x)
            return x
        y = self._attention(y, mask, quant, bias)
        return _residual(x, y.view(p, q, n, c), keep, inplace)

    def _ffn_residual(self, x: Tensor, branch: str, keep: Optional[Tensor],
                      inplace: bool) -> Tensor:
        """``x + ffn(norm2(x))`` of one group's tokens (any leading shape)."""
        quant = self.branches[branch]
        fc1, act, _ = self.ffn.layers[0]
        fc2 = self.ffn.layers[1]
        if (inplace and keep is None and isinstance(self.ffn.gamma2, nn.Identity)
                and fc1.runs_integer(quant.fc1_in) and fc2.runs_integer(quant.fc2_in)
                and not _maps_input(quant.fc2_in)):
            # integer products end in the GELU and fc2's codes (fc1) and in the
            # residual add, in place (fc2)
            h = fc1.integer_linear(
                self.branch_norms(branch)[1](x),
                quant.fc1_in,
                activation=act,
                output_quantizer=quant.fc2_in)
            fc2.integer_linear(h, quant.fc2_in, residual=x)
            return x
        y = self._ffn(self.branch_norms(branch)[1](x), quant)
        return _residual(x, y, keep, inplace)

    def forward(self, x: Tensor, hw_shape: Tuple[int, int], windows: Union[WindowLayout, Tensor,
                                                                           None], low_ratio: float,
                prune_ratio: float) -> Tensor:
        """Run the block on (B, H*W, C) tokens.

        Args:
            windows: this block's partition sorted by the stage's window order
                (:class:`WindowLayout`), or the (B, nW) order itself (most
                important first, from :class:`WindowPolicy`); None only where
                :meth:`runs_dense` holds.
            low_ratio: fraction of windows computed by the low-bit branch.
            prune_ratio: fraction of windows that skip the block.
        """
        if self.runs_dense(low_ratio, prune_ratio):
            return SwinBlock.forward(self, x, hw_shape)
        if windows is None:
            raise ValueError('the Two-Branch path needs the window order of the '
                             f'partition (low_ratio={low_ratio}, prune_ratio={prune_ratio})')
        if isinstance(windows, Tensor):
            windows = WindowLayout(windows, hw_shape, self.window_size, self.shift_size,
                                   self._cache)
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(
                self._forward, x, hw_shape, windows, low_ratio, prune_ratio, use_reentrant=False)
        return self._forward(x, hw_shape, windows, low_ratio, prune_ratio)

    def _forward(self, x: Tensor, hw_shape: Tuple[int, int], layout: WindowLayout, low_ratio: float,
                 prune_ratio: float) -> Tensor:
        b, length, c = x.shape
        if length != hw_shape[0] * hw_shape[1]:
            raise ValueError(f'{length} tokens do not match hw_shape {hw_shape}')
        windows = layout.gather(x)
        n_high, n_low, _ = group_sizes(layout.num_windows, low_ratio, prune_ratio)
        keep = (drop_path_keep(self.attn.drop,
                               windows), drop_path_keep(self.ffn.dropout_layer, windows))
        groups = []
        start = 0
        for branch, size in zip(BRANCHES, (n_high, n_low)):
            if size > 0:
                groups.append((branch, slice(start, start + size)))
            start += size
        valid, mask = layout.valid, layout.mask
        bias = self.relative_position_bias()  # once for both branches
        if torch.is_grad_enabled():
            # out of place (autograd keeps the inputs of every group), each group
            # one batch of all images' windows, as in inference; each weight
            # quantized once for both groups
            anchor = self._unused_parameters_anchor([b for b, _ in groups])
            bias = bias + anchor
            outs = []
            with reused_quantized_weights(self._linears()):
                for branch, group in groups:
                    y = self._attention_residual(windows[group], _take(valid, group),
                                                 _take(mask, group), bias, branch, keep[0], False)
                    outs.append(self._ffn_residual(y, branch, keep[1], False))
            out = layout.scatter(torch.cat(outs + [windows[start:]]))
            return out if groups else out + anchor
        for branch, group in groups:
            self._attention_residual(windows[group], _take(valid, group), _take(mask, group), bias,
                                     branch, keep[0], True)
        if not self._ffn_on_real_tokens(layout, groups, x):
            for branch, group in groups:
                self._ffn_residual(windows[group], branch, keep[1], True)
            return layout.scatter(windows)
        slots, scatter, starts = layout.real_rows()
        rows = windows.view(-1, c).index_select(0, slots)
        for branch, group in groups:
            self._ffn_residual(rows[starts[group.start]:starts[group.stop]], branch, keep[1], True)
        return rows.index_select(0, scatter).view(b, length, c)

    def _ffn_on_real_tokens(self, layout: WindowLayout, groups: List[Tuple[str, slice]],
                            x: Tensor) -> bool:
        """Whether the FFN may skip the padding tokens of a padded layout: in
        eager CPU inference, where the group sizes in real tokens can be read on
        the host, and not while calibrating (the FFN's quantizers have always
        observed the padding tokens too; they stay with what they saw). Every
        group must keep at least :data:`MIN_FFN_ROWS` tokens: CPU BLAS computes
        a few rows with other kernels, whose last bits differ."""
        if not (layout.padded and x.device.type == 'cpu' and not self.whole_windows and
                not torch.compiler.is_compiling() and not any(q.observer_enabled
                                                              for q in self._branch_quantizers)):
            return False
        starts = layout.real_rows()[2]
        return all(starts[g.stop] - starts[g.start] >= MIN_FFN_ROWS for _, g in groups)


def _split_fake_quantized(qkv: Tensor, scale: Tensor, *params: Tensor) -> Tuple[Tensor, ...]:
    """``q * scale`` (M, heads, N, d), ``k^T`` (M, heads, d, N) and ``v`` (M,
    heads, N, d) of (M, N, 3, heads, d) ``qkv``, each through the fake
    quantization of its ``(1 / scale, scale, low, high)`` (four of ``params``
    each), contiguous."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    parts = (q * scale, k.transpose(-2, -1), v)
    return tuple(
        (torch.clamp(torch.round(t * params[4 * i]), params[4 * i + 2], params[4 * i + 3]) *
         params[4 * i + 1]).contiguous() for i, t in enumerate(parts))


def _maps_input(quantizer: QuantizerBase) -> bool:
    """Whether ``quantizer`` transforms its input before quantizing it, also
    with quantization off (a folded per-channel map, UQ-ViT's NormQuantizer):
    mmdet's dense path and fc1's fused requantization would skip the map (the
    map then runs in fc2's input quantization, one integer product still)."""
    return bool(getattr(quantizer, 'maps_input', False))


def _take(t: Optional[Tensor], group: slice) -> Optional[Tensor]:
    """The ranks ``group`` of a rank-major (nW, ...) tensor; None stays None."""
    return None if t is None else t[group]


def _residual(x: Tensor, y: Tensor, keep: Optional[Tensor], inplace: bool) -> Tensor:
    if keep is not None:
        y = y * keep
    return x.add_(y) if inplace else x + y


def drop_path_keep(drop_path: nn.Module, windows: Tensor) -> Optional[Tensor]:
    """One DropPath draw per image for (nW, B, N, C) windows: a (1, B, 1, 1)
    scale, 0 or ``1 / keep_prob``, as mmdet's ``DropPath`` draws per image of
    (B, L, C) tokens; None where it is the identity (eval, or probability 0).
    One draw serves every branch of the block, so the windows of one image are
    kept or dropped together."""
    p = float(getattr(drop_path, 'drop_prob', 0.0))
    if not drop_path.training or p == 0.0:
        return None
    keep_prob = 1.0 - p
    draw = torch.rand((windows.shape[1], 1, 1, 1), dtype=windows.dtype, device=windows.device)
    return (keep_prob + draw).floor_().div_(keep_prob).view(1, -1, 1, 1)
