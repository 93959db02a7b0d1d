"""The MixA-Q backbone on integer kernels: each Two-Branch block computes what
its fake-quantized self computes, up to the codes float rounding moves across
a rounding boundary; the converted backbone compiles to one graph."""
import copy

import pytest
import torch
import torch._dynamo as dynamo

from mixaq_mmdet.models import MixAQSwinTransformer, TwoBranchSwinBlock
from mixaq_mmdet.quantization import (enable_calibration, finish_calibration, integer_kernels,
                                      to_fake_quant, to_integer)

NANO = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)
MINMAX = dict(
    weight_quantizer=dict(type='UniformQuantizer', per_channel=True, calib='minmax'),
    act_quantizer=dict(type='UniformQuantizer', calib='minmax'))
#: Largest share of a block's outputs that may differ from the fake-quantized
#: block's beyond float rounding: those behind a code that float rounding moved
#: across a rounding boundary (measured: at most 0.3 % of a block's outputs).
MOVED_OUTPUTS = 0.03


def _calibrated(seed=0, arch=NANO, **kwargs):
    torch.manual_seed(seed)
    model = MixAQSwinTransformer(**arch, quant=True, **MINMAX, **kwargs).eval()
    ratios = (model.low_bit_ratios, model.prune_ratios)
    model.set_ratios(0.5, 0.0)  # both branches see windows, in every stage
    enable_calibration(model)
    with torch.no_grad():
        model(torch.randn(2, 3, 320, 320))
    finish_calibration(model)
    model.set_ratios(*ratios)
    return model


def _block_inputs(model, x):
    """Each block's arguments in a forward of ``model``."""
    inputs = {}
    handles = [
        block.register_forward_pre_hook(
            lambda b, args: inputs.setdefault(b, (args[0].clone(), ) + tuple(args[1:])))
        for block in model.modules() if isinstance(block, TwoBranchSwinBlock)
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return inputs


@pytest.mark.parametrize('low, prune, hw', [(0.0, 0.0, (97, 131)), (0.5, 0.0, (224, 224)),
                                            (0.4, 0.3, (97, 131)),
                                            ([0.8, 0.2, 0.0, 0.5], 0.0, (64, 320))])
def test_integer_blocks_compute_the_fake_quantized_blocks(low, prune, hw):
    """Every block, given the same input, computes the fake-quantized block's
    output within float rounding, but for the few outputs behind a code that
    rounding moved by one step (padding, shifted windows, both branches and
    pruned windows included)."""
    model = _calibrated(low_bit_ratios=low, prune_ratios=prune)
    inputs = _block_inputs(model, torch.randn(2, 3, *hw))
    with torch.no_grad():
        expected = {b: b(args[0].clone(), *args[1:]) for b, args in inputs.items()}
        to_integer(model)
        for block, args in inputs.items():
            out = block(args[0].clone(), *args[1:])
            diff = (out - expected[block]).abs()
            moved = (diff > 1e-5 * expected[block].abs().max()).float().mean()
            assert moved <= MOVED_OUTPUTS, (low, prune, float(moved))
            assert out.shape == expected[block].shape and torch.isfinite(out).all()


def test_every_quantized_product_of_the_backbone_runs_on_integer_kernels():
    model = _calibrated(low_bit_ratios=0.5)
    to_integer(model)
    kernels = integer_kernels(model)
    assert set(kernels.values()) == {'onednn'}
    # qkv, proj, fc1, fc2 per block, a reduction per patch merging, the patch embedding
    assert len(kernels) == 4 * sum(NANO['depths']) + 3 + 1
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        outs = model(x)
        to_fake_quant(model)
        assert [o.shape for o in outs] == [o.shape for o in model(x)]


def test_twin_uniform_quantizers_are_refused_naming_their_position():
    """PTQ4ViT's post-GELU quantizer has two grids, not integer codes."""
    model = _calibrated(
        branch_quantizers=dict(fc2_in=dict(type='TwinUniformQuantizer', mode='gelu')))
    with pytest.raises(
            ValueError,
            match=r"TwinUniformQuantizer 'stages.0.blocks.0.branches.high.fc2_in' "
            r'\(twin_uniform\) has no uniform integer codes'):
        to_integer(model)


def test_a_uniform_model_keeps_its_unused_low_branch_uncalibrated():
    """A uniform model's low branch never saw data: it converts, and raises
    only where a low-bit group would run, as the fake-quantized model does."""
    torch.manual_seed(0)
    model = MixAQSwinTransformer(**NANO, quant=True, **MINMAX).eval()
    enable_calibration(model)
    with torch.no_grad():
        model(torch.randn(1, 3, 112, 112))
    finish_calibration(model, strict=False)
    to_integer(model)
    with torch.no_grad():
        model(torch.randn(1, 3, 112, 112))
        model.set_ratios(0.5, 0.0)
        with pytest.raises(
                RuntimeError, match="'stages.0.blocks.0.branches.low.qkv_in' is not calibrated"):
            model(torch.randn(1, 3, 112, 112))


@pytest.fixture
def fresh_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


def test_integer_backbone_is_one_graph_with_the_eager_numbers(fresh_dynamo):
    """No graph break (the oneDNN products are opaque ops), and the traced
    graph on eager kernels (aot_eager) computes the eager numbers bit for bit."""
    arch = dict(NANO, depths=(2, 2), num_heads=(1, 2), strides=(4, 2), out_indices=(0, 1))
    model = _calibrated(arch=arch, low_bit_ratios=0.5, prune_ratios=0.25)
    to_integer(model)
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        explained = dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1
        eager = model(x)
        compiled = copy.deepcopy(model)
        compiled.compile(backend='aot_eager', dynamic=False)
        for a, b in zip(compiled(x), eager):
            assert torch.equal(a, b)
