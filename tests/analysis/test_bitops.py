"""BitOPs accounting: hand counts, real-forward shapes and MACs, the tool."""
import math
import re

import pytest
import torch
import torch.nn as nn
from mmdet.models.backbones import SwinTransformer
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mixaq_mmdet.analysis.bitops import BitOpsReport, average_speedup, count_bitops
from mixaq_mmdet.models import MixAQSwinTransformer
from mixaq_mmdet.quantization import QuantMatMul, disable_quantization
from ..conftest import FP_BENCH_CONFIG, run_tool

TINY = dict(embed_dims=16, depths=(2, 2), num_heads=(1, 2), window_size=7, out_indices=(0, 1))
NANO = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)
SWIN_T = dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)
W, A_HIGH, A_LOW = 4, 8, 4


def _hand_tiny(low, prune, w=W, a_high=A_HIGH, a_low=A_LOW):
    """(bitops, bitops_uniform) of TINY on 112x112, counted by hand.

    Patch embed 3->16, 4x4/4: 28x28 tokens; stage 0: 16 windows of 49 tokens,
    C=16; merging 4*16 -> 32 on 14x14; stage 1: 4 windows, C=32, no merging.
    """
    n = 49

    def window(c, a):  # linear 12 N C^2 at w x a, matmul 2 N^2 C at a x a
        return 12 * n * c * c * w * a + 2 * n * n * c * a * a

    embed = 28 * 28 * 16 * (3 * 4 * 4) * w * a_high
    merge = 14 * 14 * (4 * 16) * 32 * w * a_high
    uniform = embed + merge + 2 * 16 * window(16, a_high) + \
        2 * 4 * window(32, a_high)
    saving = 0
    for stage, (num_windows, c) in enumerate(((16, 16), (4, 32))):
        n_prune = math.floor(prune[stage] * num_windows)
        n_low = math.floor(low[stage] * num_windows)
        per_block = n_low * (window(c, a_high) - window(c, a_low)) + \
            n_prune * window(c, a_high)
        saving += 2 * per_block  # both blocks of the pair
    return uniform - saving, uniform


@pytest.mark.parametrize('low,prune', [([0.5, 0.25], [0.25, 0.5]), ([0.3, 0.6], [0.0, 0.0]),
                                       ([0.0, 0.0], [0.1, 0.9])])
def test_hand_count(low, prune):
    model = MixAQSwinTransformer(
        **TINY, w_bits=W, a_bits=(A_HIGH, A_LOW), low_bit_ratios=low, prune_ratios=prune)
    report = count_bitops(model, (112, 112))
    bitops, uniform = _hand_tiny(low, prune)
    assert report.bitops == bitops
    assert report.bitops_uniform == uniform
    assert report.speedup == pytest.approx(uniform / bitops)
    assert [s['resolution'] for s in report.per_stage] == [(28, 28), (14, 14)]
    assert [s['windows'] for s in report.per_stage] == [16, 4]
    assert sum(s['bitops'] for s in report.per_stage) == bitops
    assert sum(s['bitops_uniform'] for s in report.per_stage) == uniform
    assert report.parts == {'backbone': bitops}


def test_act_bits_is_mac_weighted():
    model = MixAQSwinTransformer(**TINY, low_bit_ratios=1.0)
    report = count_bitops(model, (112, 112))
    # everything low-bit except patch embed and merging (high bits)
    embed, merge = 28 * 28 * 16 * 48, 14 * 14 * 64 * 32
    assert report.act_bits == pytest.approx(
        (A_LOW * (report.macs - embed - merge) + A_HIGH * (embed + merge)) / report.macs)
    model.set_ratios(0.0, 0.0)
    assert count_bitops(model, (112, 112)).act_bits == A_HIGH


def test_uniform_speedup_is_one():
    model = MixAQSwinTransformer(**NANO)
    report = count_bitops(model, (97, 131))
    assert report.bitops == report.bitops_uniform
    assert report.speedup == 1.0
    assert report.relative_to(report) == 1.0


def test_float_models_count_32_bits():
    low, prune = [0.5, 0.25], [0.0, 0.0]
    float_bitops, _ = _hand_tiny(low, prune, w=32, a_high=32, a_low=32)
    ref = count_bitops(SwinTransformer(**TINY), (112, 112))
    assert ref.bitops == ref.bitops_uniform == float_bitops
    assert ref.bitops == ref.macs * 32 * 32
    assert ref.act_bits == 32
    off = count_bitops(MixAQSwinTransformer(**TINY, quant=False, low_bit_ratios=low), (112, 112))
    for key in ('bitops', 'bitops_uniform', 'macs', 'act_bits'):
        assert getattr(off, key) == getattr(ref, key)
    quant = MixAQSwinTransformer(**TINY, low_bit_ratios=low)
    disable_quantization(quant)  # fake quant off: a float model
    assert count_bitops(quant, (112, 112)).bitops == float_bitops


@pytest.mark.parametrize('hw', [(97, 131), (64, 320)])
def test_shapes_and_macs_match_a_real_forward(hw):
    """Stage grids, windows and MACs (padding tokens included, pruned windows
    excluded) equal what hooks see in a forward of the float MixA-Q Swin's
    Two-Branch path on whole windows (a training forward: inference may take
    mmdet's dense path or skip padding tokens in the FFN, whose outputs are
    dropped; the count is the method's per-window cost)."""
    torch.manual_seed(0)
    model = MixAQSwinTransformer(
        **NANO,
        quant=False,
        low_bit_ratios=[0.5, 0.3, 0.0, 0.0],
        prune_ratios=[0.25, 0.0, 0.5, 0.0]).train()
    grids, windows, macs = {}, {}, []

    def block_hook(stage):

        def hook(module, args):
            grids[stage] = tuple(args[1])
            windows[stage] = args[2].num_windows

        return hook

    def mac_hook(module, args, out):
        if isinstance(module, QuantMatMul):
            macs.append(args[0].numel() * args[1].shape[-1])
        elif isinstance(module, nn.Conv2d):
            macs.append(out.numel() * module.in_channels * math.prod(module.kernel_size))
        else:
            macs.append(out.numel() * module.in_features)

    for i, stage in enumerate(model.stages):
        stage.blocks[0].register_forward_pre_hook(block_hook(i))
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, QuantMatMul)):
            module.register_forward_hook(mac_hook)
    outs = model(torch.zeros(1, 3, *hw))
    report = count_bitops(model, hw)
    resolutions = [s['resolution'] for s in report.per_stage]
    assert resolutions == [grids[i] for i in range(4)]
    assert resolutions == [tuple(o.shape[-2:]) for o in outs]
    assert [s['windows'] for s in report.per_stage] == \
        [windows[i] for i in range(4)]
    assert report.macs == sum(macs)
    assert report.bitops == sum(macs) * 32 * 32


@pytest.mark.parametrize('ratio', [0.25, 0.5, 0.75])
def test_low_bit_fraction_speedup_formula(ratio):
    """A8 -> A4 on a fraction r of the windows: ~1 / (1 - r/2) (the method's
    formula; attention matmuls save a bit more, patch embedding and merging
    nothing). 448x448 gives 256/64/16/4 windows, so every r is exact."""
    model = MixAQSwinTransformer(**SWIN_T, low_bit_ratios=ratio)
    speedup = count_bitops(model, (448, 448)).speedup
    assert speedup == pytest.approx(1 / (1 - ratio / 2), rel=0.01)
    model.set_ratios(ratio, 0.25)
    pruned = count_bitops(model, (448, 448)).speedup
    assert pruned > speedup
    assert pruned == pytest.approx(1 / (1 - ratio / 2 - 0.25), rel=0.05)


def test_relative_to_and_average_speedup():
    model = MixAQSwinTransformer(**NANO)
    baseline = count_bitops(model, (224, 224))
    model.set_ratios(0.5, 0.1)
    report = count_bitops(model, (224, 224))
    assert report.relative_to(baseline) == pytest.approx(report.speedup)
    with pytest.raises(ValueError, match='same shape'):
        report.relative_to(count_bitops(model, (224, 256)))

    shapes = [(224, 224), (97, 131), (224, 224)]
    reports = [count_bitops(model, s) for s in shapes]
    stats = average_speedup(model, shapes)
    assert stats.num_images == 3
    assert stats.mean == pytest.approx(sum(r.speedup for r in reports) / 3)
    assert stats.pooled == pytest.approx(
        sum(r.bitops_uniform for r in reports) / sum(r.bitops for r in reports))
    with pytest.raises(ValueError, match='at least one'):
        average_speedup(model, [])


@pytest.fixture(scope='module')
def nano_detector():
    cfg = Config.fromfile(FP_BENCH_CONFIG)
    cfg.model.backbone.type = 'MixAQSwinTransformer'
    cfg.model.backbone.low_bit_ratios = 0.5
    init_default_scope('mmdet')
    return MODELS.build(cfg.model)


def test_detector_scope(nano_detector):
    hw = (320, 288)
    backbone = count_bitops(nano_detector, hw)
    assert backbone.as_dict() == count_bitops(nano_detector.backbone, hw).as_dict()
    detector = count_bitops(nano_detector, hw, scope='detector')
    assert set(detector.parts) == {'backbone', 'neck', 'rpn_head'}
    assert detector.parts['backbone'] == backbone.bitops
    assert detector.bitops == pytest.approx(sum(detector.parts.values()))
    # the neck and RPN head are float (32 x 32) and unaffected by the ratios
    grids = [s['resolution'] for s in backbone.per_stage]
    levels = grids + [((grids[-1][0] + 1) // 2, (grids[-1][1] + 1) // 2)]
    lateral = sum(h * w * c * 32 for (h, w), c in zip(grids, (32, 64, 128, 256)))
    fpn = sum(h * w * 32 * 32 * 9 for h, w in grids)
    rpn = sum(h * w * 32 * (32 * 9 + 3 + 12) for h, w in levels)
    assert detector.parts['neck'] == (lateral + fpn) * 32 * 32
    assert detector.parts['rpn_head'] == rpn * 32 * 32
    assert detector.bitops_uniform - detector.bitops == pytest.approx(backbone.bitops_uniform -
                                                                      backbone.bitops)
    assert 1.0 < detector.speedup < backbone.speedup


def test_detector_scope_counts_the_quantized_neck_at_its_bits():
    """A 'detector' quant scope is part of the built model: the count (and the
    tool, and BitOpsHook) takes the scope from the model and the neck's bits
    from its quantizers."""
    from ..conftest import REPO
    cfg = Config.fromfile(f'{REPO}/configs/benchmark/ptq/ptq_uniform_w4a8_shapes.py')
    init_default_scope('mmdet')
    backbone_scope = MODELS.build(cfg.model)
    cfg.model.quant_scope = 'detector'
    detector_scope = MODELS.build(cfg.model)
    hw = (320, 320)
    assert count_bitops(backbone_scope, hw).scope == 'backbone'
    quantized = count_bitops(detector_scope, hw)
    assert quantized.scope == 'detector'
    float_neck = count_bitops(backbone_scope, hw, scope='detector')
    # W4A8 instead of 32 x 32 in the neck and RPN head
    assert float_neck.parts['neck'] == quantized.parts['neck'] * 32 * 32 / (4 * 8)
    assert float_neck.parts['rpn_head'] == quantized.parts['rpn_head'] * 32
    proc = run_tool([
        'tools/analysis_tools/bitops.py',
        f'{REPO}/configs/benchmark/ptq/ptq_uniform_w4a8_shapes.py', '--shape', '320', '320',
        '--cfg-options', 'model.quant_scope=detector'
    ],
                    timeout=120)
    assert 'scope detector' in proc.stdout
    assert f'BitOPs: {quantized.bitops / 1e9:.2f} G' in proc.stdout


def test_tool_prints_speedup():
    proc = run_tool([
        'tools/analysis_tools/bitops.py', FP_BENCH_CONFIG, '--shape', '320', '320', '--cfg-options',
        'model.backbone.type=MixAQSwinTransformer', 'model.backbone.low_bit_ratios=0.5'
    ],
                    timeout=120)
    match = re.search(r'speedup: ([0-9.]+)x', proc.stdout)
    assert match, proc.stdout
    assert 1.0 < float(match.group(1)) < 1.5
    assert '80x80' in proc.stdout and 'act_bits' in proc.stdout


def test_bad_input():
    model = MixAQSwinTransformer(**TINY)
    with pytest.raises(TypeError, match='Swin backbone'):
        count_bitops(nn.Linear(2, 2), (64, 64))
    not_swin = nn.Module()
    not_swin.backbone = nn.Conv2d(3, 8, 3)
    with pytest.raises(TypeError, match='got Conv2d'):
        count_bitops(not_swin, (64, 64))
    with pytest.raises(ValueError, match='scope must be one of'):
        count_bitops(model, (64, 64), scope='neck')
    with pytest.raises(ValueError, match="needs a detector"):
        count_bitops(model, (64, 64), scope='detector')
    for shape in [(0, 64), (64, -1), (64, ), (64.0, 64), 64, (True, 64)]:
        with pytest.raises(ValueError, match='two positive ints'):
            count_bitops(model, shape)
    assert isinstance(count_bitops(model, torch.Size([64, 64])), BitOpsReport)


def test_counting_leaves_the_models_modes_and_quantizer_switches_as_they_were():
    from mixaq_mmdet.quantization import quantizers_of
    from ..conftest import REPO
    cfg = Config.fromfile(f'{REPO}/configs/benchmark/ptq/ptq_uniform_w4a8_shapes.py')
    cfg.model.quant_scope = 'detector'
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model).train()
    quantizers = [q for q in quantizers_of(model) if q not in set(quantizers_of(model.backbone))]
    assert len(quantizers) > 4
    for index, quantizer in enumerate(quantizers):  # a mix, as in the middle of calibration
        quantizer.enable_observer(index % 2 == 0)
        quantizer.enable_fake_quant(index % 3 == 0)
    switches = [(q.observer_enabled, q.fake_quant_enabled) for q in quantizers]
    count_bitops(model, (320, 320))
    assert [(q.observer_enabled, q.fake_quant_enabled) for q in quantizers] == switches
    assert all(m.training for m in model.modules())
