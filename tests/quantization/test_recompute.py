"""Fused fake-quantization kernels and the recomputation of quantized
activations: the numbers of the eager formulas, less kept for the backward."""
import math
from contextlib import nullcontext

import pytest
import torch

from mixaq_mmdet.models import MixAQSwinTransformer
from mixaq_mmdet.quantization import (LogSqrt2Quantizer, LSQQuantizer, enable_calibration,
                                      finish_calibration)
from mixaq_mmdet.quantization.numerics import (MAX_BIT_FIELD_BITS, LogSqrt2, fake_quantize,
                                               fused_kernels, log_sqrt2_tables)
from mixaq_mmdet.quantization.recompute import MIN_ELEMENTS, recomputed_quantized_activations

NANO = dict(
    embed_dims=32,
    depths=(2, 2),
    num_heads=(1, 2),
    strides=(4, 2),
    out_indices=(0, 1),
    window_size=7,
    drop_path_rate=0.2)


def _qat_backbone() -> MixAQSwinTransformer:
    torch.manual_seed(0)
    model = MixAQSwinTransformer(
        **NANO,
        quant=True,
        low_bit_ratios=0.5,
        act_quantizer=dict(type='LSQQuantizer', calib='minmax'),
        weight_quantizer=dict(type='LSQQuantizer', per_channel=True, calib='minmax'),
        softmax_quantizer=dict(type='LogSqrt2Quantizer', calib='percentile_mse'))
    enable_calibration(model)
    with torch.no_grad():
        model(torch.randn(2, 3, 112, 150))
    finish_calibration(model)
    return model.train()


def _step(model, x, forward):
    """Outputs and parameter gradients of one training step (drop path reseeded)."""
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(1)
    outs = forward(x)
    sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
    return [o.detach() for o in outs], {n: p.grad for n, p in model.named_parameters()}


def test_recomputed_activations_give_the_kept_ones_bit_for_bit():
    """The backbone's training forward recomputes its large quantized
    activations in the backward: outputs and every gradient are those of the
    same forward that keeps them, bit for bit (drop path on)."""
    model = _qat_backbone()
    x = torch.randn(2, 3, 224, 300)
    recomputed = _step(model, x, model)
    kept = _step(model, x, model._forward)  # the forward without the context
    assert all(torch.equal(a, b) for a, b in zip(recomputed[0], kept[0]))
    assert recomputed[1].keys() == kept[1].keys()
    for name, grad in kept[1].items():
        assert torch.equal(recomputed[1][name], grad), name


def test_the_quantized_activations_a_layer_saves_are_recipes():
    """Inside the context the large quantized activations that linear layers
    and matmuls save are not kept: at 224x300 the qkv, proj and fc inputs and
    both matmuls' quantized operands of the first stage (above MIN_ELEMENTS),
    several MB; none below MIN_ELEMENTS."""
    model = _qat_backbone()
    with recomputed_quantized_activations() as stats:
        model._forward(torch.randn(2, 3, 224, 300))
    assert stats.bytes > 4 * 2**20
    assert min(stats.storages.values()) >= MIN_ELEMENTS * 4


def test_a_saved_view_of_a_quantized_activation_is_recomputed_as_that_view():
    """A matmul that saves a transposed view of the quantizer's output gets the
    same view of the recomputed output: gradients bit for bit."""
    torch.manual_seed(0)
    q = LSQQuantizer(4, calib='minmax')
    x = torch.randn(4, 300, 300)  # 360k elements: recomputed
    q(x)
    q.calculate_qparams()
    q.enable_fake_quant()
    weight = torch.randn(4, 300, 300)
    grads = []
    for context in (recomputed_quantized_activations, nullcontext):
        q.scale.grad = q.zero_point.grad = None
        x_in = x.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        with context() as stats:
            out = q(x_in).transpose(1, 2) @ w
        if stats is not None:
            assert stats.bytes == x.numel() * 4
        out.pow(2).sum().backward()
        grads.append((x_in.grad, w.grad, q.scale.grad.clone(), q.zero_point.grad.clone()))
    for recomputed, kept in zip(*grads):
        assert torch.equal(recomputed, kept)


@pytest.mark.parametrize('bits', range(2, MAX_BIT_FIELD_BITS + 1))
def test_log_sqrt2_bit_fields_give_the_table(bits):
    """The float32 bit-field path gives the table's level for every input:
    random probabilities, zeros, subnormals, values above the top, every
    boundary and its neighbouring floats; with a top, of ``x / top`` times
    ``top``."""
    boundaries, levels = (t.float() for t in log_sqrt2_tables(bits))
    x = torch.cat([
        torch.rand(20000).pow(8),
        torch.rand(100) * 3,
        torch.zeros(3),
        torch.tensor([1e-40, 1e-45, 1.0, 2.0]), boundaries,
        torch.nextafter(boundaries, torch.tensor(9.0)),
        torch.nextafter(boundaries, torch.tensor(0.0))
    ])
    table = levels[len(boundaries) - torch.searchsorted(boundaries, x)]
    assert torch.equal(LogSqrt2.apply(x, boundaries, levels, None), table)
    top = torch.tensor([0.37])
    scaled = levels[len(boundaries) - torch.searchsorted(boundaries, x / top)] * top
    assert torch.equal(LogSqrt2.apply(x, boundaries, levels, top), scaled)


@pytest.mark.parametrize('per_channel', [False, True])
def test_compiled_and_eager_kernels_agree(per_channel):
    """``fused_kernels(False)`` runs the same formulas eagerly: values
    and input gradients bit for bit, scale and zero-point gradients (sums in
    another order) within 1e-5 of the sum of their terms' magnitudes."""
    torch.manual_seed(0)
    x = torch.randn(64, 49, 96) * torch.linspace(0.2, 3.0, 96)
    scale = torch.full((96, ) if per_channel else (1, ), 0.2, requires_grad=True)
    zero_point = torch.full_like(scale, 7.3).requires_grad_()
    weight = torch.randn_like(x)
    factor = 1.0 / math.sqrt(x.numel() // scale.numel() * 15)
    results = []
    for compiled in (True, False):
        scale.grad = zero_point.grad = None
        x_in = x.clone().requires_grad_()
        with fused_kernels(compiled):
            y = fake_quantize(x_in, scale, zero_point, 0, 15, -1 if per_channel else None, factor)
        (y * weight).sum().backward()  # in the forward's mode
        results.append((y, x_in.grad, scale.grad.clone(), zero_point.grad.clone()))
    (y_c, gx_c, gs_c, gz_c), (y_e, gx_e, gs_e, gz_e) = results
    assert torch.equal(y_c, y_e) and torch.equal(gx_c, gx_e)
    magnitude = weight.abs().sum((0, 1) if per_channel else (0, 1, 2)) * factor
    assert ((gs_c - gs_e).abs() <= 1e-5 * magnitude * 15).all()
    assert ((gz_c - gz_e).abs() <= 1e-5 * magnitude * scale.detach()).all()
    assert (gs_c != 0).all() and (gz_c != 0).any()  # channels without clamped inputs: 0


def test_log_sqrt2_gradient_is_straight_through_its_top():
    """With a calibrated top the gradient is that of ``x / top -> level -> *
    top``: the incoming gradient times top over top, as before the fusion."""
    q = LogSqrt2Quantizer(3, calib='percentile_mse')
    probs = torch.rand(40, 49).softmax(-1)
    q(probs)
    q.calculate_qparams()
    q.enable_fake_quant()
    x = probs.clone().requires_grad_()
    q(x).mul(torch.arange(49.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(49.0).expand(40, -1) * q.scale / q.scale)


def test_changing_ratios_and_sizes_never_recompile_the_kernels():
    """The fused kernels see every activation as one flat tensor: training
    steps at SAQA-like random ratios (window groups of every size) and two
    image sizes compile nothing after the first step."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    from mixaq_mmdet.quantization import numerics
    dynamo.reset()
    counters.clear()
    numerics._COMPILED.clear()
    model = _qat_backbone()
    generator = torch.Generator().manual_seed(0)
    graphs = []
    for step, size in enumerate([(224, 300)] * 3 + [(160, 200)] * 3):
        low = torch.rand(model.num_pairs, generator=generator).mul(0.8).tolist()
        model.set_ratios(low, [0.1 * (step % 2)] * model.num_pairs)
        outs = model(torch.randn(2, 3, *size))
        sum(o.sum() for o in outs).backward()
        graphs.append(counters['stats']['unique_graphs'])
    # LSQ forward and backward per tensor (activations) and per channel
    # (weights), log-sqrt(2) with its calibrated top at 4 and at 8 bits (with
    # the boundaries below the normal floats)
    assert graphs[0] <= 6 and graphs == [graphs[0]] * len(graphs), graphs
    dynamo.reset()
