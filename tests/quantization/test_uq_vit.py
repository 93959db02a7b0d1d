"""UQ-ViT's quantizers: DeMax after the softmax, NormQuant before fc2."""
import copy
import math
import os.path as osp
import re

import pytest
import torch

from mixaq_mmdet.engine.checkpoints import check_calibrated_checkpoint
from mixaq_mmdet.models import MixAQSwinTransformer
from mixaq_mmdet.quantization import (DeMaxQuantizer, NormQuantizer, QuantizerBase,
                                      UniformQuantizer, disable_quantization, enable_calibration,
                                      finish_calibration, integer_kernels, to_integer)
from mixaq_mmdet.quantization.reparam import equalizing_map
from mixaq_mmdet.quantization.uq_vit import (demax_quantize, fold_channel_maps, normquant_target,
                                             record_map_statistics)
from ..conftest import REPO, ptq_options, run_tool
from ..models.test_integer_backbone import MOVED_OUTPUTS, _block_inputs

NANO = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)
MINMAX = dict(
    weight_quantizer=dict(type='UniformQuantizer', per_channel=True, calib='minmax'),
    act_quantizer=dict(type='UniformQuantizer', calib='minmax'))
#: The UQ-ViT base as a config names it (configs/benchmark/ptq/ptq_uqvit_*).
UQ_VIT = dict(softmax=dict(type='DeMaxQuantizer'), fc2_in=dict(type='NormQuantizer'))


def _reference_demax(row, bits):
    """DeMax of one row, element by element in Python floats."""
    values = [float(v) for v in row]
    kept = values.index(max(values))  # the first maximum
    rest = [0.0 if i == kept else v for i, v in enumerate(values)]
    top = 2**bits - 1
    step = max(rest) / top
    out = [0.0 if step == 0 else min(max(math.floor(v / step + 0.5), 0), top) * step for v in rest]
    out[kept] = values[kept]
    return out


ROWS = [
    [0.05, 0.6, 0.1, 0.2, 0.05],  # one clear maximum
    [0.3, 0.3, 0.1, 0.2, 0.1],  # a tie for the maximum
    [0.0, 0.0, 1.0, 0.0, 0.0],  # every other value 0
    [0.0, 0.0, 0.0, 0.0, 0.0],  # nothing at all
    [0.41, 0.013, 0.29, 0.0007, 0.2863],  # values between levels
]


@pytest.mark.parametrize('bits', [2, 4, 8])
def test_demax_equals_a_direct_reference(bits):
    x = torch.tensor(ROWS).view(1, len(ROWS), 5)
    out = demax_quantize(x, bits)
    expected = torch.tensor([_reference_demax(r, bits) for r in ROWS]).view_as(x)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)
    quantizer = DeMaxQuantizer(bits)
    enable_calibration(quantizer)
    quantizer(x)
    finish_calibration(quantizer)
    assert torch.equal(quantizer(x), out)


@pytest.mark.parametrize('bits', [2, 4, 8])
def test_demax_keeps_the_maximum_exactly_on_a_grid_of_2_to_the_bits_levels(bits):
    attn = torch.randn(3, 2, 49, 49).mul(3).softmax(-1)
    out = demax_quantize(attn, bits)
    index = attn.argmax(-1, keepdim=True)
    assert torch.equal(out.gather(-1, index), attn.gather(-1, index))
    rest, quantized = attn.scatter(-1, index, 0.0), out.scatter(-1, index, 0.0)
    step = rest.amax(-1, keepdim=True) / (2**bits - 1)
    codes = quantized / step
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-3)
    assert codes.round().min() >= 0 and codes.round().max() == 2**bits - 1
    # the nearest level: within half a step of the input
    assert bool(((quantized - rest).abs() <= step / 2 * (1 + 1e-5)).all())
    # a row dense enough to reach every level uses exactly 2^bits of them
    dense = torch.linspace(0, 1, 4096).view(1, -1)
    levels = (demax_quantize(dense, bits)[0, :-1] / (1 / (2**bits - 1))).round().unique()
    assert levels.numel() == 2**bits


def test_demax_ties_keep_one_maximum_apart_and_the_other_on_the_top_level():
    out = demax_quantize(torch.tensor([[0.4, 0.4, 0.2]]), 4)
    assert out[0, 0] == 0.4  # the first maximum, kept
    torch.testing.assert_close(out[0, 1], torch.tensor(0.4))  # the top level of the rest
    torch.testing.assert_close(out[0, 2], torch.tensor(0.4 * round(0.2 / 0.4 * 15) / 15))


def test_demax_calibration_checks_the_data_and_raises_before_it():
    quantizer = DeMaxQuantizer(4)
    quantizer.enable_fake_quant()
    quantizer.disable_observer()
    with pytest.raises(
            RuntimeError,
            match='DeMaxQuantizer: fake quantization is on but the '
            'quantizer is not calibrated'):
        quantizer(torch.rand(2, 5))
    quantizer.disable_fake_quant()
    quantizer.enable_observer()
    with pytest.raises(
            ValueError, match='DeMaxQuantizer: DeMax takes post-softmax .*minimum '
            'of -1.0'):
        quantizer(torch.tensor([[-1.0, 1.0]]))
    with pytest.raises(RuntimeError, match='DeMaxQuantizer: no calibration statistics'):
        quantizer.calculate_qparams()


@pytest.mark.parametrize('cls', [DeMaxQuantizer, NormQuantizer])
@pytest.mark.parametrize('bits', [1, 9])
def test_bits_outside_the_range_are_refused_naming_them(cls, bits):
    with pytest.raises(ValueError, match=rf'{cls.__name__}: bits must be .*\[2, 8\], got {bits}'):
        cls(bits)


@pytest.mark.parametrize(
    'kwargs, match',
    [(dict(branch_quantizers=dict(q=dict(type='DeMaxQuantizer'))),
      r"DeMaxQuantizer \(branch_quantizers.q\) cannot quantize at position 'q': its valid "
      r"positions are \('softmax',\)"),
     (dict(branch_quantizers=dict(softmax=dict(type='NormQuantizer'))),
      r"NormQuantizer \(branch_quantizers.softmax\) cannot quantize at position 'softmax': "
      r"its valid positions are \('fc2_in',\)"),
     (dict(softmax_quantizer=dict(type='NormQuantizer')),
      r"NormQuantizer \(softmax_quantizer\) .*'softmax'.*\('fc2_in',\)"),
     (dict(branch_quantizers=dict(fc1_in=dict(type='NormQuantizer'))),
      r"NormQuantizer \(branch_quantizers.fc1_in\) .*'fc1_in'.*\('fc2_in',\)"),
     (dict(act_quantizer=dict(type='DeMaxQuantizer')),
      r"DeMaxQuantizer \(act_quantizer\) cannot quantize at position 'every activation': "
      r"its valid positions are \('softmax',\)"),
     (dict(weight_quantizer=dict(type='NormQuantizer')),
      r"NormQuantizer \(weight_quantizer\) cannot quantize at position 'weight'")])
def test_a_uq_vit_quantizer_elsewhere_is_refused_naming_the_position(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixAQSwinTransformer(**NANO, **kwargs)


def _model(low=0.5, seed=0, quant=True, **kwargs):
    torch.manual_seed(seed)
    model = MixAQSwinTransformer(
        **NANO, **MINMAX, quant=quant, branch_quantizers=UQ_VIT, fused_kernels=False, **kwargs)
    model.init_weights()
    model.set_ratios(low, 0.0)
    return model.eval()


def _fold(model, *inputs):
    """NormQuant's maps folded from ``inputs``, as PTQ calibration folds them."""
    targets = model.normquant_targets()
    disable_quantization(model)
    with record_map_statistics(targets) as stats, model.whole_windows(), torch.no_grad():
        for x in inputs:
            model(x)
    return targets, fold_channel_maps(targets, stats)


def _calibrated(low=0.5, x=None, **kwargs):
    model = _model(low, **kwargs)
    # two windows in the last stage: both branches of every block see data
    x = torch.randn(1, 3, 224, 448) if x is None else x
    _fold(model, x)
    enable_calibration(model)
    with torch.no_grad():
        model(x)
    finish_calibration(model, strict=False)
    return model


def _scaled(model, scale=5.0):
    """Post-GELU channels of very different ranges, as in trained ViTs."""
    with torch.no_grad():
        for block in model.modules():
            if hasattr(block, 'branches'):
                fc1 = block.ffn.layers[0][0]
                gains = torch.exp(torch.randn(fc1.out_features) * math.log(scale))
                fc1.weight.mul_(gains[:, None])
                fc1.bias.mul_(gains)
    return model


@pytest.mark.parametrize('low', [0.0, 0.5])
def test_the_fold_is_exact_in_float(low):
    """With quantization off the folded backbone computes the float backbone
    (also where a block runs mmdet's dense path, low ratio 0): its error
    against a float64 run is that of float32 rounding, as the unfolded one."""
    model = _scaled(_model(low, quant=False))
    x = torch.randn(2, 3, 97, 131)
    reference = copy.deepcopy(model).double()
    with torch.no_grad():
        exact = reference(x.double())
        before = model(x)
    targets, maps = _fold(model, x)
    assert len(targets) == sum(NANO['depths'])
    assert all(not torch.allclose(r, torch.ones_like(r)) for r, _ in maps)  # a real map
    disable_quantization(model)
    with torch.no_grad():
        after = model(x)
    for e, b, a in zip(exact, before, after):
        rounding = (b.double() - e).abs().max()
        assert (a.double() - e).abs().max() <= 4 * rounding, (float(rounding))


def test_both_branches_share_one_map_from_both_groups_windows():
    """One map per block: ``r_c = s_c / mean(s)`` from the per-channel grids of
    the fc2 inputs of both branches together; the channels' minima aligned;
    the inverse folded into the one fc2."""
    model = _model(0.5)
    block = model.stages[0].blocks[0]
    fc2 = block.ffn.layers[1]
    weight = fc2.weight.detach().clone()
    seen = []
    handles = [
        b.fc2_in.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
        for b in block.branches.values()
    ]
    x = torch.randn(1, 3, 224, 224)
    _fold(model, x)
    for handle in handles:
        handle.remove()
    assert len(seen) == 2  # the high and the low group
    high, low = (b.fc2_in.channel_map for b in block.branches.values())
    assert torch.equal(high.weight, low.weight) and torch.equal(high.bias, low.bias)
    observer = UniformQuantizer(4, per_channel=True, ch_axis=-1, calib='percentile_mse')
    observer(torch.cat([s.reshape(-1, s.shape[-1]) for s in seen]))
    scale, zero_point = observer.calculate_qparams()
    r = 1 / high.weight
    torch.testing.assert_close(r, scale / scale.mean())
    lo = -zero_point * scale
    mapped_lo = lo * high.weight + high.bias
    torch.testing.assert_close(mapped_lo, mapped_lo[:1].expand_as(mapped_lo))
    torch.testing.assert_close(fc2.weight, weight * r, rtol=1e-6, atol=0)
    # the map of either group alone is another map
    alone, _ = equalizing_map(*observer_ranges(seen[0]))
    assert not torch.allclose(alone, r)


def observer_ranges(x):
    observer = UniformQuantizer(4, per_channel=True, ch_axis=-1, calib='percentile_mse')
    observer(x.reshape(-1, x.shape[-1]))
    scale, zero_point = observer.calculate_qparams()
    return -zero_point * scale, (15 - zero_point) * scale


def test_calibrated_model_quantizes_per_tensor_and_runs():
    """After calibration no activation quantizer has a per-channel scale; the
    NormQuantizers quantize the mapped activations on their own per-tensor
    grid, each branch its own; DeMax sits after every softmax."""
    model = _calibrated(0.5)
    summary = model.quantizer_summary()
    assert summary['DeMaxQuantizer'] == summary['NormQuantizer'] == 2 * sum(NANO['depths'])
    for name, q in model.named_modules():
        if isinstance(q, QuantizerBase) and not name.endswith('weight_quantizer'):
            assert not getattr(q, 'per_channel', False), name
            assert all(t.numel() == 1 for n, t in q.named_buffers() if n in ('scale', 'zero_point'))
            assert q.is_calibrated, name
    block = model.stages[1].blocks[0]
    high, low = (b.fc2_in for b in block.branches.values())
    assert (high.bits, low.bits) == (8, 4) and not torch.equal(high.scale, low.scale)
    h = torch.randn(10, high.channel_map.weight.numel()).abs()
    mapped = h * high.channel_map.weight + high.channel_map.bias
    scale, zero = float(high.scale), int(high.zero_point)
    expected = (torch.clamp(torch.round(mapped * (1 / scale)) + zero, 0, 255) - zero) * scale
    torch.testing.assert_close(high(h), expected)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 97, 131))
    assert all(torch.isfinite(o).all() for o in outs)


def test_normquant_without_its_map_is_refused():
    model = _model(0.0)
    enable_calibration(model)
    with torch.no_grad():
        model(torch.randn(1, 3, 112, 112))
    with pytest.raises(
            ValueError,
            match=r"NormQuantizer 'stages.0.blocks.0.branches.high.fc2_in': its "
            'per-channel map was never folded'):
        finish_calibration(model, strict=False)


def test_one_normquant_branch_alone_is_refused():
    fc2 = torch.nn.Linear(8, 4)
    with pytest.raises(
            ValueError,
            match=r"block: the quantizers of one fc2 input are "
            r"\['NormQuantizer', 'UniformQuantizer'\]"):
        normquant_target([NormQuantizer(4), UniformQuantizer(4)], fc2, 'block')


def test_state_dict_round_trip_and_checkpoint_check():
    x = torch.randn(1, 3, 97, 131)
    model = _calibrated(0.5)
    with torch.no_grad():
        expected = model(x)
    state = model.state_dict()
    fresh = _model(0.5, seed=1)
    fresh.load_state_dict(state)
    for a, b in zip(fresh.modules(), model.modules()):
        if isinstance(a, QuantizerBase):
            assert a.settings() == b.settings() and a.is_calibrated == b.is_calibrated
    with torch.no_grad():
        for a, b in zip(fresh(x), expected):
            assert torch.equal(a, b)
    check_calibrated_checkpoint(fresh, dict(state_dict=state), 'calibrated.pth', {})
    # a model with RepQ-ViT's quantizers at those positions refuses the state
    other = MixAQSwinTransformer(
        **NANO,
        **MINMAX,
        quant=True,
        fused_kernels=False,
        branch_quantizers=dict(softmax=UQ_VIT['softmax']))
    with pytest.raises(ValueError, match=r"the checkpoint was calibrated for kind='normquant'"):
        other.load_state_dict(state)


def test_integer_execution_equals_fake_quantization():
    """fc2 runs as one integer product of the mapped codes; every block, given
    the same input, computes the fake-quantized block's output within the
    tolerance of the other integer tests (but for the outputs behind a code
    that float rounding moved across a rounding boundary)."""
    model = _calibrated(0.5, x=torch.randn(2, 3, 224, 224))
    inputs = _block_inputs(model, torch.randn(2, 3, 97, 131))
    with torch.no_grad():
        expected = {b: b(args[0].clone(), *args[1:]) for b, args in inputs.items()}
        to_integer(model)
        assert integer_kernels(model)['stages.0.blocks.0.ffn.layers.1'] == 'onednn'
        for block, args in inputs.items():
            out = block(args[0].clone(), *args[1:])
            moved = ((out - expected[block]).abs() > 1e-5 * expected[block].abs().max()).float()
            assert moved.mean() <= MOVED_OUTPUTS, float(moved.mean())


def test_ptq_calibrates_folds_saves_and_reevaluates(tiny_shapes, fp_checkpoint, tmp_path):
    """tools/test.py with the UQ-ViT config: the maps are folded before the
    quantizers calibrate, and the calibrated checkpoint (maps included)
    evaluates as it was."""
    config = osp.join(REPO, 'configs/benchmark/ptq/ptq_uqvit_mixaq_w4a8a2_shapes.py')
    first = run_tool([
        'tools/test.py', config, fp_checkpoint, '--work-dir',
        str(tmp_path / 'a'), '--cfg-options', *ptq_options(tiny_shapes)
    ])
    log = first.stdout + first.stderr
    assert 'PTQ: folded 8 NormQuant maps into fc2' in log  # depths 2-2-2-2
    assert log.index('NormQuant maps into fc2') < log.index('PTQ: calibrated')
    again = run_tool([
        'tools/test.py', config,
        str(tmp_path / 'a' / 'calibrated.pth'), '--work-dir',
        str(tmp_path / 'b'), '--cfg-options', *ptq_options(tiny_shapes)
    ])
    log_again = again.stdout + again.stderr
    assert 'is calibrated; evaluating it as it is' in log_again
    metrics = [dict(re.findall(r'(coco/bbox_mAP): (-?[0-9.]+)', text)) for text in (log, log_again)]
    assert metrics[0] and metrics[0] == metrics[1]
