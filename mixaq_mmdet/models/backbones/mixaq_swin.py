"""MixAQSwinTransformer: mmdet's Swin with Two-Branch mixed-precision blocks."""
import copy
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmdet.models.backbones.swin import SwinTransformer
from mmdet.registry import MODELS
from torch import Tensor

from mixaq_mmdet.quantization import (DEFAULT_ACT_QUANTIZER, DEFAULT_WEIGHT_QUANTIZER, MAX_BITS,
                                      MIN_BITS, QuantConv2d, QuantizerBase, QuantLinear,
                                      disable_quantization, enable_fake_quant, numerics,
                                      quantizers_of)
from mixaq_mmdet.quantization.numerics import FusedKernels, check_fused_kernels
from mixaq_mmdet.quantization.recompute import recomputed_quantized_activations
from mixaq_mmdet.quantization.reparam import ReparamTarget
from mixaq_mmdet.quantization.uq_vit import normquant_target
from mixaq_mmdet.registry import QUANTIZERS
from mixaq_mmdet.utils.tensor_cache import TensorCache
from ..layers import QUANTIZER_POSITIONS, TwoBranchSwinBlock, WindowLayout, WindowPolicy
from ..layers.window_policy import WindowOrders, check_ratios, normalize_ratios, padded_shape

Ratios = Union[float, Sequence[float]]

#: RepQ-ViT's post-softmax quantizer: log-sqrt(2) levels below a top searched by
#: percentile candidates under MSE (a fixed top of 1 zeroes most probabilities at
#: 3 bits and below).
DEFAULT_SOFTMAX_QUANTIZER = dict(type='LogSqrt2Quantizer', calib='percentile_mse')


def _with_bits(cfg: Optional[Mapping], default: Mapping, bits: int, name: str) -> dict:
    """A quantizer config (``default`` if None) with the backbone's ``bits``."""
    if cfg is not None and 'bits' in cfg:
        raise ValueError(f'{name} must not set bits (got bits={cfg["bits"]}): '
                         'the backbone sets them from w_bits / a_bits')
    cfg = copy.deepcopy(dict(default if cfg is None else cfg))
    cfg['bits'] = bits
    return cfg


def _position_quantizers(
        act_quantizer: Optional[Mapping], softmax_quantizer: Optional[Mapping],
        branch_quantizers: Optional[Mapping[str,
                                            dict]]) -> Dict[str, Tuple[Optional[Mapping], str]]:
    """The quantizer config (None: the default activation quantizer) of every
    branch position, with the argument it came from: ``branch_quantizers``
    where given, else ``act_quantizer`` (``softmax_quantizer`` or log-sqrt(2)
    after the softmax)."""
    given = dict(branch_quantizers or {})
    unknown = sorted(set(given) - set(QUANTIZER_POSITIONS))
    if unknown:
        raise ValueError(f'branch_quantizers has unknown positions {unknown}; '
                         f'valid: {QUANTIZER_POSITIONS}')
    if softmax_quantizer is not None and 'softmax' in given:
        raise ValueError('set the post-softmax quantizer once: softmax_quantizer or '
                         "branch_quantizers['softmax'], not both")
    defaults = {p: (act_quantizer, 'act_quantizer') for p in QUANTIZER_POSITIONS}
    defaults['softmax'] = (DEFAULT_SOFTMAX_QUANTIZER
                           if softmax_quantizer is None else softmax_quantizer, 'softmax_quantizer')
    return {
        p: (given[p], f'branch_quantizers.{p}') if p in given else defaults[p]
        for p in QUANTIZER_POSITIONS
    }


def _check_position(cfg: Any, position: str, source: str) -> None:
    """Raise if the quantizer ``cfg`` names (from the argument ``source``) is
    made for other positions (its class's ``positions``; None: any), naming
    the quantizer, the position and the valid ones. An unknown type is left to
    the builder's error."""
    cls: Any = type(cfg) if isinstance(cfg, QuantizerBase) else None
    if isinstance(cfg, Mapping):
        cls = cfg.get('type')
        if isinstance(cls, str):
            try:
                cls = QUANTIZERS.get(cls)
            except RuntimeError:
                cls = None
    valid = getattr(cls, 'positions', None)
    if valid is not None and position not in valid:
        raise ValueError(f'{cls.__name__} ({source}) cannot quantize at position {position!r}: '
                         f'its valid positions are {tuple(valid)}; name it at one of them in '
                         'branch_quantizers')


def _check_bits(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or \
            not MIN_BITS <= value <= MAX_BITS:
        raise ValueError(f'{name} must be an int in [{MIN_BITS}, {MAX_BITS}], got {value!r}')
    return value


@MODELS.register_module()
class MixAQSwinTransformer(SwinTransformer):
    """Swin Transformer whose windows run at high or low activation precision.

    Takes every argument of mmdet 3.3.0's ``SwinTransformer`` (same modules, same
    checkpoint keys) and replaces each ``SwinBlock`` by a
    :class:`TwoBranchSwinBlock`. Each stage ranks its windows once from its input
    (:class:`WindowPolicy`); each pair of consecutive blocks (W-MSA + SW-MSA) runs
    the most important windows in the high-bit branch, a ``low_bit_ratios``
    fraction in the low-bit branch, and skips a ``prune_ratios`` fraction.

    Args:
        w_bits: weight bits of every quantized layer.
        a_bits: (high, low) activation bits; layers outside the Two-Branch blocks
            (patch embedding, patch merging) use the high bits.
        low_bit_ratios: fraction of windows computed at low bits, one float for
            all pairs or a list with one value per pair of consecutive blocks.
        prune_ratios: fraction of windows that skip the block (identity), same
            shape; ``low + prune <= 1`` for every pair.
        window_score: 'l2' (SparseViT's and the paper's) or 'contrast'.
        window_order: 'importance', 'random' (seeded) or 'reverse' (ablations).
        window_seed: seed of the 'random' order.
        quant: with True the backbone is built for quantized inference and
            raises, naming the quantizer, until it is calibrated (PTQ) or a
            calibrated checkpoint is loaded; it never runs silently in float.
            With False every quantizer is off and the backbone computes exactly
            what mmdet's SwinTransformer computes, whatever the low-bit ratios.
        weight_quantizer, act_quantizer, softmax_quantizer: quantizer configs
            without ``bits`` (set from ``w_bits`` / ``a_bits``). Defaults: the PTQ
            setting (RepQ-ViT): per-channel weights and per-tensor activations
            calibrated by percentile + MSE, log-sqrt(2) after the softmax with
            its top calibrated the same way.
        branch_quantizers: quantizer configs (without ``bits``) of single
            positions of the Two-Branch blocks' branches, keyed by
            :data:`QUANTIZER_POSITIONS` (e.g. ``fc2_in``, the post-GELU input of
            fc2); a position not named takes ``act_quantizer`` (``softmax``:
            ``softmax_quantizer``). Both branches take the same configs, at
            their own bits.
        fused_kernels: how the quantizers compute (numbers the same either
            way): True, fused kernels compiled by inductor, an error where they
            cannot compile; False, eager torch ops; 'auto', fused, falling back
            to eager with one warning naming the compiler's error (a machine
            without a C++ compiler or Triton).
        **kwargs: mmdet SwinTransformer's arguments.
    """

    def __init__(self,
                 *args,
                 w_bits: int = 4,
                 a_bits: Sequence[int] = (8, 4),
                 low_bit_ratios: Ratios = 0.0,
                 prune_ratios: Ratios = 0.0,
                 window_score: str = 'l2',
                 window_order: str = 'importance',
                 window_seed: int = 0,
                 quant: bool = True,
                 weight_quantizer: Optional[dict] = None,
                 act_quantizer: Optional[dict] = None,
                 softmax_quantizer: Optional[dict] = None,
                 branch_quantizers: Optional[Mapping[str, dict]] = None,
                 fused_kernels: FusedKernels = 'auto',
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fused_kernels = check_fused_kernels(fused_kernels, 'fused_kernels')
        self.w_bits = _check_bits(w_bits, 'w_bits')
        if not isinstance(a_bits, (list, tuple)) or len(a_bits) != 2:
            raise ValueError('a_bits must be a (high, low) pair of ints in '
                             f'[2, 8], got {a_bits!r}')
        high, low = (_check_bits(b, f'a_bits[{i}]') for i, b in enumerate(a_bits))
        if high < low:
            raise ValueError(f'a_bits must be (high, low) with high >= low, '
                             f'got {tuple(a_bits)}')
        self.a_bits = (high, low)
        self.window_size = self.stages[0].blocks[0].attn.window_size
        self.policy = WindowPolicy(self.window_size, window_score, window_order, window_seed)
        depths = [len(stage.blocks) for stage in self.stages]
        self.pair_index = [[sum((d + 1) // 2 for d in depths[:i]) + j // 2 for j in range(d)]
                           for i, d in enumerate(depths)]
        self.num_pairs = sum((d + 1) // 2 for d in depths)
        self.set_ratios(low_bit_ratios, prune_ratios)

        weight_cfg = _with_bits(weight_quantizer, DEFAULT_WEIGHT_QUANTIZER, w_bits,
                                'weight_quantizer')
        act_cfgs = {
            b: _with_bits(act_quantizer, DEFAULT_ACT_QUANTIZER, bits, 'act_quantizer')
            for b, bits in zip(('high', 'low'), self.a_bits)
        }
        positions = _position_quantizers(act_quantizer, softmax_quantizer, branch_quantizers)
        _check_position(weight_quantizer, 'weight', 'weight_quantizer')
        _check_position(act_quantizer, 'every activation', 'act_quantizer')
        for position, (cfg, source) in positions.items():
            _check_position(cfg, position, source)
        branch_cfgs = {
            b: {
                p: _with_bits(cfg, DEFAULT_ACT_QUANTIZER, bits, name)
                for p, (cfg, name) in positions.items()
            }
            for b, bits in zip(('high', 'low'), self.a_bits)
        }
        self.weight_quantizer_cfg = weight_cfg
        self.act_quantizer_cfgs = act_cfgs
        for stage in self.stages:
            for j, block in enumerate(stage.blocks):
                stage.blocks[j] = TwoBranchSwinBlock(block, weight_cfg, branch_cfgs)
            if stage.downsample is not None:
                stage.downsample.reduction = QuantLinear(stage.downsample.reduction, weight_cfg,
                                                         act_cfgs['high'])
        self.patch_embed.projection = QuantConv2d(self.patch_embed.projection, weight_cfg,
                                                  act_cfgs['high'])
        # token maps and shift masks per input shape: the last few shapes
        self._cache = TensorCache(max_entries=16 * len(self.stages))
        self.quant = quant
        if quant:
            enable_fake_quant(self)
        else:
            disable_quantization(self)

    def set_ratios(self, low_bit_ratios: Ratios, prune_ratios: Ratios) -> None:
        """Set the per-pair low-bit and prune ratios (validated as in __init__)."""
        low = normalize_ratios(low_bit_ratios, self.num_pairs, 'low_bit_ratios')
        prune = normalize_ratios(prune_ratios, self.num_pairs, 'prune_ratios')
        check_ratios(low, prune)
        self.low_bit_ratios: List[float] = low
        self.prune_ratios: List[float] = prune

    def quant_setting(self) -> Dict[str, Any]:
        """Bits, ratios and window policy: what a calibrated checkpoint records."""
        return dict(
            w_bits=self.w_bits,
            a_bits=list(self.a_bits),
            low_bit_ratios=list(self.low_bit_ratios),
            prune_ratios=list(self.prune_ratios),
            window_score=self.policy.score,
            window_order=self.policy.order,
            window_seed=self.policy.seed)

    def train(self, mode: bool = True) -> 'MixAQSwinTransformer':
        """mmdet's train() (frozen stages), returning self as torch's does."""
        super().train(mode)
        return self

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        if torch.compiler.is_compiling():  # compiled, the quantizers' formulas fuse into the graph
            return self._forward_saving_memory(x)
        with numerics.fused_kernels(self.fused_kernels):
            return self._forward_saving_memory(x)

    def _forward_saving_memory(self, x: Tensor) -> Tuple[Tensor, ...]:
        if not torch.is_grad_enabled():
            return self._forward(x)
        # the fused quantizers' outputs are recomputed in the backward, not kept
        with recomputed_quantized_activations():
            return self._forward(x)

    def _forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        x, hw_shape = self.patch_embed(x)
        if self.use_abs_pos_embed:
            x = x + self.absolute_pos_embed
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            layouts = self._window_layouts(i, x, hw_shape)
            for j, block in enumerate(stage.blocks):
                pair = self.pair_index[i][j]
                x = block(x, hw_shape, layouts.get(block.shift_size), self.low_bit_ratios[pair],
                          self.prune_ratios[pair])
            out, out_hw_shape = x, hw_shape
            if stage.downsample is not None:
                x, hw_shape = stage.downsample(x, hw_shape)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(out)
                out = out.view(-1, *out_hw_shape, self.num_features[i]) \
                    .permute(0, 3, 1, 2).contiguous()
                outs.append(out)
        return tuple(outs)

    @contextmanager
    def whole_windows(self) -> Iterator[None]:
        """Within the context every block runs the Two-Branch path on whole
        windows, padding tokens included, never mmdet's dense path nor the FFN
        on real tokens only: what hooks on the block's layers observe for
        calibration (RepQ-ViT's channel statistics) stays what it always was."""
        blocks = [b for b in self.modules() if isinstance(b, TwoBranchSwinBlock)]
        saved = [b.whole_windows for b in blocks]
        for block in blocks:
            block.whole_windows = True
        try:
            yield
        finally:
            for block, value in zip(blocks, saved):
                block.whole_windows = value

    def _window_layouts(self, stage: int, x: Tensor,
                        hw_shape: Tuple[int, int]) -> Dict[int, WindowLayout]:
        """The window layout per shift size of the stage's blocks that need one
        (none when every block runs mmdet's dense path), from one ranking of the
        stage input ``x``."""
        blocks = self.stages[stage].blocks
        shifts = sorted({
            block.shift_size
            for j, block in enumerate(blocks)
            if not block.runs_dense(self.low_bit_ratios[self.pair_index[stage][j]],
                                    self.prune_ratios[self.pair_index[stage][j]])
        })
        if not shifts:
            return {}
        pairs = {self.pair_index[stage][j] for j in range(len(blocks))}
        if all(self.low_bit_ratios[p] == 0 and self.prune_ratios[p] == 0 for p in pairs):
            # one group of every window: any order computes the same, so no ranking
            hp, wp = padded_shape(hw_shape, self.window_size)
            num_windows = (hp // self.window_size) * (wp // self.window_size)
            order = torch.arange(num_windows, device=x.device).expand(x.shape[0], -1)
            orders = WindowOrders(order, order if max(shifts) > 0 else None)
        else:
            orders = self.policy.rank(x, hw_shape, max(shifts))
        return {
            s: WindowLayout(orders.select(s > 0), hw_shape, self.window_size, s, self._cache)
            for s in shifts
        }

    def reparam_targets(self) -> List[ReparamTarget]:
        """The post-LayerNorm activations RepQ-ViT reparameterizes: the inputs
        of qkv and fc1 (both branches' LayerNorm copies feed the shared layer;
        ranges searched at the lower of the branches' bits) and of each patch
        merging's reduction."""
        targets = []
        for stage in self.stages:
            for block in stage.blocks:
                branches = block.branches.values()
                targets.append(
                    ReparamTarget([block.norm1, block.norm1_low],
                                  block.attn.w_msa.qkv,
                                  min(b.qkv_in.bits for b in branches),
                                  pad_owner=block))
                targets.append(
                    ReparamTarget([block.norm2, block.norm2_low], block.ffn.layers[0][0],
                                  min(b.fc1_in.bits for b in branches)))
            merging = stage.downsample
            if merging is not None and merging.norm is not None:
                targets.append(
                    ReparamTarget([merging.norm], merging.reduction,
                                  merging.reduction.input_quantizer.bits))
        return targets

    def normquant_targets(self) -> List[ReparamTarget]:
        """UQ-ViT's NormQuant maps to fold: per block whose fc2 input is
        quantized by NormQuantizers, both branches' maps and the shared fc2
        (one map for both, from their windows together; searched at the lower
        of the branches' bits). Empty without NormQuantizers."""
        targets = []
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage.blocks):
                target = normquant_target([b.fc2_in for b in block.branches.values()],
                                          block.ffn.layers[1], f'stages.{i}.blocks.{j}')
                if target is not None:
                    targets.append(target)
        return targets

    def quantizer_summary(self) -> Dict[str, int]:
        """Number of quantizers per class, for logs and tests."""
        counts: Dict[str, int] = {}
        for q in quantizers_of(self):
            counts[type(q).__name__] = counts.get(type(q).__name__, 0) + 1
        return counts


__all__ = ['MixAQSwinTransformer', 'DEFAULT_SOFTMAX_QUANTIZER']
