"""The backbone under torch.compile: one graph, no break, no recompiles across
models, the eager numbers.

Inductor's LayerNorm, softmax and GELU kernels differ from eager's in the last
bit, and a fake quantizer can turn a last-bit difference into a quantization
step; so the whole fake-quant backbone is compared under ``aot_eager`` (the traced
graph on eager kernels: bit for bit), its quantizers alone under inductor (bit for
bit), and the float Two-Branch path under inductor (within 1e-5).
"""
import copy

import pytest
import torch
import torch._dynamo as dynamo
from torch._dynamo.utils import counters

from mixaq_mmdet.models import MixAQSwinTransformer, TwoBranchSwinBlock
from mixaq_mmdet.quantization import build_quantizer, enable_calibration, finish_calibration
from .blas_rows import DTYPE, assert_same_outputs

# two stages: what compiles is the same per stage, and compiling takes minutes
ARCH = dict(
    embed_dims=16,
    depths=(2, 2),
    num_heads=(1, 2),
    strides=(4, 2),
    out_indices=(0, 1),
    window_size=7)
MINMAX = dict(
    weight_quantizer=dict(type='UniformQuantizer', per_channel=True, calib='minmax'),
    act_quantizer=dict(type='UniformQuantizer', calib='minmax'))


def _fake_quant_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = MixAQSwinTransformer(**ARCH, quant=True, **MINMAX, **kwargs).eval()
    ratios = (model.low_bit_ratios, model.prune_ratios)
    model.set_ratios(0.5, 0.0)  # both branches see windows
    enable_calibration(model)
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    finish_calibration(model)
    model.set_ratios(*ratios)
    return model


@pytest.fixture(autouse=True)
def fresh_dynamo():
    dynamo.reset()
    counters.clear()
    yield
    dynamo.reset()


def test_fake_quant_backbone_is_one_graph_without_breaks():
    model = _fake_quant_model(low_bit_ratios=0.5, prune_ratios=0.25)
    with torch.no_grad():
        explained = dynamo.explain(model)(torch.randn(2, 3, 97, 131))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_several_compiled_models_compile_once_each_and_match_eager():
    models = [
        _fake_quant_model(low_bit_ratios=0.5, prune_ratios=0.25).to(DTYPE),
        _fake_quant_model(seed=1, a_bits=(6, 3), low_bit_ratios=[0.25, 0.5]).to(DTYPE)
    ]
    compiled = [copy.deepcopy(m) for m in models]
    for m in compiled:
        m.compile(backend='aot_eager')
    x = torch.randn(1, 3, 97, 131).to(DTYPE)
    with torch.no_grad():
        for model in models:  # the eager models' fused fake-quant kernels compile here
            model(x)
        counters.clear()
        for _ in range(3):
            for model, comp in zip(models, compiled):
                # compiled, the FFN runs whole windows; eager, real tokens only
                assert_same_outputs(comp(x), model(x))
    assert counters['stats']['unique_graphs'] == 2  # one per model, never again
    assert not counters['graph_break']


@pytest.mark.parametrize('cfg', [
    dict(type='UniformQuantizer', bits=4, calib='minmax'),
    dict(type='UniformQuantizer', bits=4, per_channel=True, ch_axis=-1, calib='minmax'),
    dict(type='LogSqrt2Quantizer', bits=4),
    dict(type='LogSqrt2Quantizer', bits=8, calib='percentile_mse'),
])
def test_quantizers_compiled_by_inductor_are_bit_exact(cfg):
    torch.manual_seed(0)
    quantizer = build_quantizer(cfg)
    x = torch.rand(8, 49, 49) if cfg['type'] == 'LogSqrt2Quantizer' else torch.randn(8, 49, 24) * 3
    enable_calibration(quantizer)
    quantizer(x)
    finish_calibration(quantizer)
    compiled = torch.compile(quantizer, backend='inductor')
    with torch.no_grad():
        assert torch.equal(compiled(x), quantizer(x))


def test_inductor_float_two_branch_path_equals_eager():
    torch.manual_seed(0)
    model = MixAQSwinTransformer(**ARCH, quant=False, low_bit_ratios=0.5, prune_ratios=0.25).eval()
    for block in model.modules():  # branches that differ: the Two-Branch path
        if isinstance(block, TwoBranchSwinBlock):
            with torch.no_grad():
                block.norm1_low.weight.mul_(1.5)
    compiled = copy.deepcopy(model)
    compiled.compile(backend='inductor')
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        for eager, comp in zip(model(x), compiled(x)):
            torch.testing.assert_close(comp, eager, rtol=0, atol=1e-5)
    assert not counters['graph_break']
