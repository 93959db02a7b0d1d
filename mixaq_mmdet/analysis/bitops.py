"""BitOPs of a Swin backbone (MixA-Q or float), and of the detector around it.

BitOPs are the MixA-Q paper's efficiency metric, counted per image:

- a linear or conv layer costs MACs x weight bits x input bits, where a
  layer's bits are its quantizer's bits when that quantizer's fake quant is on,
  else 32 (weights and activations independently; a float layer is 32 x 32);
- an activation x activation matmul (``q @ k^T``, ``softmax @ v``) costs
  MACs x bits of one operand x bits of the other;
- LayerNorm, softmax, GELU, additions and the window scores are not counted.

The Swin backbone is counted analytically, block by block, with the geometry
mmdet computes with: ``PatchEmbed`` pads the image up to its kernel grid,
``PatchMerging`` pads odd sizes and halves with ceil, and each block pads its
input to multiples of the window size, so its nW windows of ws^2 tokens include
the padding tokens, which are computed. A MixA-Q block computes its high-bit
windows at the high branch's bits and its low-bit windows at the low branch's,
and skips its pruned windows; the group sizes come from
:func:`~mixaq_mmdet.models.layers.window_policy.group_sizes`, the rounding the
model uses. The patch embedding and the patch merging layers are counted at
their own bits (the high activation bits in a MixA-Q backbone).

The speedup of a configuration is ``bitops_uniform / bitops``, where
``bitops_uniform`` counts the same model with every window high-bit and
nothing pruned.
"""
import contextlib
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from numbers import Integral
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmdet.models.backbones.swin import SwinTransformer
from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
from torch.nn.modules.utils import _pair

from mixaq_mmdet.models import QUANT_SCOPES, MixAQSwinTransformer, quant_scope
from mixaq_mmdet.models.layers import TwoBranchSwinBlock, group_sizes
from mixaq_mmdet.quantization import QuantizerBase, quantization_disabled
from .window_maps import block_geometry

FLOAT_BITS = 32
DENSE_HEADS = ('rpn_head', 'bbox_head')

Shape = Tuple[int, int]


def quantizer_bits(quantizer: Optional[QuantizerBase]) -> int:
    """Bits a quantizer computes at: its ``bits`` when its fake quant is on,
    else :data:`FLOAT_BITS` (also for a missing quantizer)."""
    if quantizer is None or not quantizer.fake_quant_enabled:
        return FLOAT_BITS
    return quantizer.bits


def layer_bits(layer: nn.Module) -> Tuple[int, int]:
    """``(weight bits, input bits)`` of a linear or conv layer, float or
    :class:`~mixaq_mmdet.quantization.QuantLinear` /
    :class:`~mixaq_mmdet.quantization.QuantConv2d`."""
    return (quantizer_bits(getattr(layer, 'weight_quantizer',
                                   None)), quantizer_bits(getattr(layer, 'input_quantizer', None)))


@dataclass
class _Cost:
    """MACs, BitOPs and MACs x activation bits of some computation."""
    macs: float = 0.0
    bitops: float = 0.0
    act_bit_macs: float = 0.0

    def add(self, macs: float, w_bits: int, a_bits: int) -> None:
        """Add ``macs`` products of a ``w_bits`` weight and an ``a_bits`` input."""
        self.macs += macs
        self.bitops += macs * w_bits * a_bits
        self.act_bit_macs += macs * a_bits

    def add_matmul(self, macs: float, bits_a: int, bits_b: int) -> None:
        """Add ``macs`` products of two activations; their activation bits
        are the mean of the operands'."""
        self.macs += macs
        self.bitops += macs * bits_a * bits_b
        self.act_bit_macs += macs * (bits_a + bits_b) / 2

    def __iadd__(self, other: '_Cost') -> '_Cost':
        self.macs += other.macs
        self.bitops += other.bitops
        self.act_bit_macs += other.act_bit_macs
        return self

    def __mul__(self, count: int) -> '_Cost':
        return _Cost(self.macs * count, self.bitops * count, self.act_bit_macs * count)


@dataclass
class BitOpsReport:
    """BitOPs of one model configuration at one input size (one image).

    Attributes:
        img_shape: (H, W) of the network input.
        scope: 'backbone' or 'detector' (see :func:`count_bitops`).
        bitops: BitOPs of the configuration.
        bitops_uniform: BitOPs of the same model with every window high-bit and
            nothing pruned.
        macs: MACs of the configuration (pruned windows excluded).
        act_bits: effective activation bits, the MAC-weighted mean of the
            activation bit widths over the counted MACs of the configuration
            (linear and conv: input bits; matmul: mean of the two operands'
            bits; pruned windows have no MACs).
        per_stage: one dict per backbone stage: ``stage``, ``resolution`` (H, W)
            tokens, ``windows`` per block, ``groups`` (n_high, n_low, n_pruned)
            per block, ``bitops``, ``bitops_uniform``. The patch embedding is in
            stage 0, a stage's patch merging in that stage.
        parts: BitOPs per counted part ('backbone', and with the detector
            scope 'neck', 'rpn_head' / 'bbox_head').
    """
    img_shape: Shape
    scope: str
    bitops: float
    bitops_uniform: float
    macs: float
    act_bits: float
    per_stage: List[dict] = field(default_factory=list)
    parts: Dict[str, float] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """``bitops_uniform / bitops``: the saving of the window groups."""
        return self.bitops_uniform / self.bitops

    def relative_to(self, baseline: 'BitOpsReport') -> float:
        """Speedup of this configuration over ``baseline`` (e.g. the uniform
        W4A8 model): ``baseline.bitops / self.bitops``, at the same input size
        and scope."""
        if (baseline.img_shape, baseline.scope) != (self.img_shape, self.scope):
            raise ValueError(f'cannot compare BitOPs at {baseline.img_shape} '
                             f'({baseline.scope}) with BitOPs at {self.img_shape} '
                             f'({self.scope}): count both at the same shape and scope')
        return baseline.bitops / self.bitops

    def as_dict(self) -> dict:
        """Plain dict of the report, speedup included (for logs and JSON)."""
        return dict(asdict(self), speedup=self.speedup)


class SpeedupStats(NamedTuple):
    """Speedup over a set of input sizes (see :func:`average_speedup`)."""
    mean: float
    pooled: float
    num_images: int


def _check_img_shape(img_shape: Sequence[int]) -> Shape:
    if not isinstance(img_shape, Sequence) or len(img_shape) != 2 or any(
            isinstance(s, bool) or not isinstance(s, Integral) or s < 1 for s in img_shape):
        raise ValueError('img_shape must be (H, W), two positive ints, got '
                         f'{img_shape!r}')
    return int(img_shape[0]), int(img_shape[1])


def _split_model(model: nn.Module, scope: str) -> Tuple[SwinTransformer, Optional[nn.Module]]:
    """``(backbone, detector)``; the detector is None for a bare backbone."""
    if scope not in QUANT_SCOPES:
        raise ValueError(f'scope must be one of {QUANT_SCOPES}, got {scope!r}')
    if isinstance(model, SwinTransformer):
        detector = None
        backbone = model
    else:
        detector = model
        backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, SwinTransformer):
        found = type(model if backbone is None else backbone).__name__
        raise TypeError('BitOPs are counted for a Swin backbone (mmdet '
                        'SwinTransformer or MixAQSwinTransformer) or a detector '
                        f'with one as .backbone, got {found}')
    if scope == 'detector' and detector is None:
        raise ValueError("scope 'detector' needs a detector, got a bare "
                         f'{type(model).__name__}; use scope "backbone"')
    return backbone, detector


def _padded_out(hw: Shape, padder: Optional[nn.Module], kernel, stride, padding, dilation) -> Shape:
    """Output size of a conv/unfold after mmdet's optional AdaptivePadding."""
    if padder is not None:
        pad_h, pad_w = padder.get_pad_shape(hw)
        hw = (hw[0] + pad_h, hw[1] + pad_w)
    k, s, p, d = (_pair(v) for v in (kernel, stride, padding, dilation))
    return tuple((hw[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2))


def _patch_embed(backbone: SwinTransformer, hw: Shape) -> Tuple[Shape, _Cost]:
    """Token grid and cost of mmdet's PatchEmbed on an (H, W) image."""
    embed = backbone.patch_embed
    conv = embed.projection
    out = _padded_out(hw, embed.adap_padding, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation)
    cost = _Cost()
    cost.add(
        out[0] * out[1] * conv.out_channels * conv.in_channels // conv.groups *
        math.prod(conv.kernel_size), *layer_bits(conv))
    return out, cost


def _patch_merging(merging: nn.Module, hw: Shape) -> Tuple[Shape, _Cost]:
    """Token grid and cost of mmdet's PatchMerging on an (H, W) token grid."""
    sampler = merging.sampler
    out = _padded_out(hw, merging.adap_padding, sampler.kernel_size, sampler.stride,
                      sampler.padding, sampler.dilation)
    reduction = merging.reduction
    cost = _Cost()
    cost.add(out[0] * out[1] * reduction.in_features * reduction.out_features,
             *layer_bits(reduction))
    return out, cost


def _branch_window_cost(block: nn.Module, branch: str) -> _Cost:
    """Cost of one window of ``block`` computed by ``branch`` ('high' or
    'low'; an mmdet SwinBlock has one branch, counted as 'high')."""
    w_msa = block.attn.w_msa
    linears = (w_msa.qkv, w_msa.proj, block.ffn.layers[0][0], block.ffn.layers[1])
    if isinstance(block, TwoBranchSwinBlock):
        quant = block.branches[branch]
        act_bits = [
            quantizer_bits(q) for q in (quant.qkv_in, quant.proj_in, quant.fc1_in, quant.fc2_in)
        ]
        matmul_bits = [(quantizer_bits(mm.quantizer_a), quantizer_bits(mm.quantizer_b))
                       for mm in (quant.qk, quant.av)]
    else:
        act_bits = [layer_bits(layer)[1] for layer in linears]
        matmul_bits = [(FLOAT_BITS, FLOAT_BITS)] * 2
    tokens = block_geometry(block)[0]**2
    cost = _Cost()
    for layer, bits in zip(linears, act_bits):
        cost.add(tokens * layer.in_features * layer.out_features, layer_bits(layer)[0], bits)
    # q @ k^T and softmax @ v: tokens x tokens x head dim per head each.
    for bits in matmul_bits:
        cost.add_matmul(tokens * tokens * w_msa.proj.in_features, *bits)
    return cost


def _block_groups(backbone: SwinTransformer, stage: int, index: int,
                  num_windows: int) -> Tuple[int, int, int]:
    """(n_high, n_low, n_pruned) windows of a block, as the model splits."""
    if not isinstance(backbone, MixAQSwinTransformer):
        return num_windows, 0, 0
    pair = backbone.pair_index[stage][index]
    return group_sizes(num_windows, backbone.low_bit_ratios[pair], backbone.prune_ratios[pair])


def _backbone_costs(backbone: SwinTransformer,
                    img_shape: Shape) -> Tuple[List[dict], _Cost, _Cost, List[Shape]]:
    """Per-stage records, total costs (config, uniform) and the token grid
    of every stage."""
    hw, embed = _patch_embed(backbone, img_shape)
    total, uniform = _Cost(), _Cost()
    stages, grids = [], []
    for i, stage in enumerate(backbone.stages):
        stage_cost, stage_uniform = _Cost(), _Cost()
        if i == 0:
            stage_cost += embed
            stage_uniform += embed
        groups = []
        for j, block in enumerate(stage.blocks):
            ws = block_geometry(block)[0]
            num_windows = math.ceil(hw[0] / ws) * math.ceil(hw[1] / ws)
            high, low, pruned = _block_groups(backbone, i, j, num_windows)
            groups.append((high, low, pruned))
            high_cost = _branch_window_cost(block, 'high')
            stage_cost += high_cost * high
            if low:
                stage_cost += _branch_window_cost(block, 'low') * low
            stage_uniform += high_cost * num_windows
        grids.append(hw)
        record = dict(stage=i, resolution=hw, windows=num_windows, groups=groups)
        if stage.downsample is not None:
            hw, merge = _patch_merging(stage.downsample, hw)
            stage_cost += merge
            stage_uniform += merge
        total += stage_cost
        uniform += stage_uniform
        record.update(bitops=stage_cost.bitops, bitops_uniform=stage_uniform.bitops)
        stages.append(record)
    return stages, total, uniform, grids


@torch.no_grad()
def _head_costs(detector: nn.Module, backbone: SwinTransformer,
                grids: List[Shape]) -> Dict[str, _Cost]:
    """Cost of the neck and the dense heads, by forward hooks on their Conv2d
    and Linear layers, fed zero features of the backbone's output shapes."""
    param = next(detector.parameters())
    feats = tuple(
        param.new_zeros(1, backbone.num_features[i], *grids[i]) for i in backbone.out_indices)
    neck = detector.neck if getattr(detector, 'with_neck', False) else None
    heads = {
        name: getattr(detector, name)
        for name in DENSE_HEADS if isinstance(getattr(detector, name, None), BaseDenseHead)
    }
    parts = dict(heads) if neck is None else dict(neck=neck, **heads)
    costs = {name: _Cost() for name in parts}

    layers = {
        layer: name
        for name, part in parts.items()
        for layer in part.modules() if isinstance(layer, (nn.Conv2d, nn.Linear))
    }
    # Bits as the model computes now; the counting forward itself runs with the
    # quantizers as identities (no statistics from the zeros, no calibration needed).
    bits = {layer: layer_bits(layer) for layer in layers}

    def hook(layer: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if isinstance(layer, nn.Conv2d):
            fan_in = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
        else:
            fan_in = layer.in_features
        costs[layers[layer]].add(out.numel() * fan_in, *bits[layer])

    handles = [layer.register_forward_hook(hook) for layer in layers]
    modes = {m: m.training for part in parts.values() for m in part.modules()}
    with contextlib.ExitStack() as stack:
        for part in parts.values():
            stack.enter_context(quantization_disabled(part))
        try:
            for part in parts.values():
                part.eval()  # no BatchNorm statistics from the zero features
            if neck is not None:
                feats = neck(feats)
            for head in heads.values():
                head(feats)
        finally:
            for handle in handles:
                handle.remove()
            for module, training in modes.items():
                module.training = training
    return costs


def count_bitops(model: nn.Module,
                 img_shape: Sequence[int],
                 scope: Optional[str] = None) -> BitOpsReport:
    """Count the BitOPs of ``model`` on one (H, W) network input.

    Args:
        model: a MixAQSwinTransformer, an mmdet SwinTransformer (every layer at
            32 bits) or a detector whose ``.backbone`` is one of them.
        img_shape: (H, W) of the network input, i.e. the image after resize and
            the data preprocessor's padding (what the backbone receives).
        scope: None: the model's quantization scope (see
            :func:`~mixaq_mmdet.models.quant_scope`; 'backbone' for a model that
            quantizes only its backbone). 'backbone' counts the backbone only,
            the paper's scope. 'detector'
            also counts the Conv2d and Linear layers of the neck and of the dense
            heads (``rpn_head``, or a single-stage detector's ``bbox_head``),
            hooked during one forward of zero features of the backbone's output
            shapes, with their quantizers switched to identities for that
            forward (the backbone itself is not run, so an uncalibrated
            quantized model can be counted, and no statistics are collected).
            The RoI heads are left out: their cost depends on the number of
            proposals each image keeps.

    Returns:
        The :class:`BitOpsReport` of the model's current ratios and quantizer
        states.
    """
    hw = _check_img_shape(img_shape)
    if scope is None:
        scope = quant_scope(model)
    backbone, detector = _split_model(model, scope)
    per_stage, total, uniform, grids = _backbone_costs(backbone, hw)
    parts = {'backbone': total.bitops}
    if scope == 'detector':
        for name, cost in _head_costs(detector, backbone, grids).items():
            parts[name] = cost.bitops
            total += cost
            uniform += cost
    return BitOpsReport(
        img_shape=hw,
        scope=scope,
        bitops=total.bitops,
        bitops_uniform=uniform.bitops,
        macs=total.macs,
        act_bits=total.act_bit_macs / total.macs,
        per_stage=per_stage,
        parts=parts)


def average_speedup(model: nn.Module,
                    img_shapes: Iterable[Sequence[int]],
                    scope: Optional[str] = None) -> SpeedupStats:
    """Speedup of ``model``'s configuration over a set of images' sizes
    (``scope`` as in :func:`count_bitops`).

    Returns:
        ``SpeedupStats(mean, pooled, num_images)``: ``mean`` is the mean over
        the images of their speedups ``bitops_uniform / bitops``; ``pooled`` is
        the ratio of the summed BitOPs, ``sum(bitops_uniform) / sum(bitops)``
        (the saving on the whole set, where large images weigh more).
    """
    counts = Counter(_check_img_shape(shape) for shape in img_shapes)
    if not counts:
        raise ValueError('average_speedup needs at least one image shape')
    speedups, bitops, uniform = 0.0, 0.0, 0.0
    for shape, n in counts.items():
        report = count_bitops(model, shape, scope)
        speedups += n * report.speedup
        bitops += n * report.bitops
        uniform += n * report.bitops_uniform
    num_images = sum(counts.values())
    return SpeedupStats(speedups / num_images, uniform / bitops, num_images)


__all__ = [
    'BitOpsReport', 'SpeedupStats', 'count_bitops', 'average_speedup', 'layer_bits',
    'quantizer_bits', 'FLOAT_BITS'
]
