import math

import pytest
import torch
from torch import nn

from mixaq_mmdet.quantization import (LSQQuantizer, QuantLinear, UniformQuantizer,
                                      enable_calibration, finish_calibration)


def initialized(q: LSQQuantizer, x: torch.Tensor) -> LSQQuantizer:
    q(x)
    q.calculate_qparams()
    q.enable_fake_quant()
    return q


def torch_reference(q: LSQQuantizer, x: torch.Tensor, factor: float, ch_axis=None):
    """Output and gradients of torch's learnable fake-quant ops for the same state."""
    x = x.detach().clone().requires_grad_()
    scale = q.scale.detach().clone().requires_grad_()
    zero_point = q.zero_point.detach().clone().requires_grad_(not q.symmetric)
    if ch_axis is None:
        out = torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero_point, q.quant_min,
                                                               q.quant_max, factor)
    else:
        out = torch._fake_quantize_learnable_per_channel_affine(x, scale, zero_point, ch_axis,
                                                                q.quant_min, q.quant_max, factor)
    return out, x, scale, zero_point


def check_against_torch(q: LSQQuantizer, x: torch.Tensor, factor: float, ch_axis=None):
    weight = torch.randn_like(x)
    out_ref, x_ref, scale_ref, zp_ref = torch_reference(q, x, factor, ch_axis)
    (out_ref * weight).sum().backward()
    x = x.detach().clone().requires_grad_()
    out = q(x)
    (out * weight).sum().backward()
    assert torch.equal(out, out_ref)
    assert torch.allclose(x.grad, x_ref.grad, rtol=1e-6, atol=0)
    assert (x.grad == 0).any() and (x.grad != 0).any()  # both clamped and inner elements
    assert torch.allclose(q.scale.grad, scale_ref.grad, rtol=1e-4, atol=1e-6)
    assert q.scale.grad.abs().min() > 0
    if not q.symmetric:
        assert torch.allclose(q.zero_point.grad, zp_ref.grad, rtol=1e-4, atol=1e-6)
        assert q.zero_point.grad.abs().min() > 0


@pytest.mark.parametrize('symmetric', [False, True])
@pytest.mark.parametrize('bits', [2, 3, 4, 8])
def test_per_tensor_matches_torch_learnable_op(bits, symmetric):
    x = torch.randn(6, 50)
    q = initialized(LSQQuantizer(bits, symmetric=symmetric), x * 0.7)
    if not symmetric:
        with torch.no_grad():
            q.zero_point.add_(0.3)  # a non-integer zero point: rounded in forward
    qmax = 2**(bits - 1) - 1 if symmetric else 2**bits - 1
    check_against_torch(q, x, 1.0 / math.sqrt(x.numel() * qmax))


@pytest.mark.parametrize('symmetric', [False, True])
@pytest.mark.parametrize('bits', [2, 4, 8])
def test_per_channel_matches_torch_learnable_op(bits, symmetric):
    x = torch.randn(3, 7, 5) * torch.tensor([0.1, 1.0, 3.0, 0.5, 2.0])
    q = initialized(LSQQuantizer(bits, symmetric=symmetric, per_channel=True, ch_axis=-1), x * 0.7)
    assert q.scale.shape == (5, )
    if not symmetric:
        with torch.no_grad():
            q.zero_point.sub_(0.2)
    qmax = 2**(bits - 1) - 1 if symmetric else 2**bits - 1
    check_against_torch(q, x, 1.0 / math.sqrt(x.numel() / 5 * qmax), ch_axis=2)


@pytest.mark.parametrize('per_channel', [False, True])
def test_activation_sized_inputs_match_torch_learnable_op(per_channel):
    """At the size of a block's activation (64 windows of 49 tokens, 96
    channels): values and input gradients bit for bit; the scale and zero-point
    gradients are sums of 3k-300k terms taken in another order than torch's, so
    they agree within 1e-5 of the sum of the terms' magnitudes, 10x what a
    float32 pairwise sum of that many terms can round by (log2(n) * eps = 1e-6);
    a wrong term formula moves them by a sizeable fraction."""
    torch.manual_seed(0)
    x = torch.randn(64, 49, 96) * torch.linspace(0.2, 3.0, 96)
    q = initialized(LSQQuantizer(4, per_channel=per_channel, ch_axis=-1), x * 0.6)
    with torch.no_grad():
        q.zero_point.add_(0.3)
    ch_axis = 2 if per_channel else None
    factor = 1.0 / math.sqrt(x.numel() // q.scale.numel() * q.quant_max)
    weight = torch.randn_like(x)
    out_ref, x_ref, scale_ref, zp_ref = torch_reference(q, x, factor, ch_axis)
    (out_ref * weight).sum().backward()
    x_in = x.clone().requires_grad_()
    out = q(x_in)
    (out * weight).sum().backward()
    assert torch.equal(out, out_ref)
    assert torch.equal(x_in.grad, x_ref.grad)
    assert (x_in.grad == 0).any() and (x_in.grad != 0).any()
    dims = [0, 1] if per_channel else [0, 1, 2]
    magnitude = weight.abs().sum(dims).reshape(q.scale.shape) * factor
    # |d out / d scale| <= quant_max - quant_min; |d out / d zero_point| = scale
    assert ((q.scale.grad - scale_ref.grad).abs() <= 1e-5 * magnitude * q.quant_max).all()
    assert ((q.zero_point.grad - zp_ref.grad).abs() <= 1e-5 * magnitude * q.scale).all()
    assert (q.scale.grad != 0).all() and (q.zero_point.grad != 0).all()


def test_fixed_grad_factor_and_out_of_range_zero_point():
    x = torch.randn(100)
    q = initialized(LSQQuantizer(4, grad_factor=0.5), x)
    with torch.no_grad():
        q.zero_point.fill_(17.2)  # outside [0, 15]: clamped in forward, gradient still flows
    check_against_torch(q, x, 0.5)
    with pytest.raises(
            ValueError, match='LSQQuantizer: grad_factor must be positive or None, '
            'got 0'):
        LSQQuantizer(4, grad_factor=0)


@pytest.mark.parametrize('calib', ['minmax', 'percentile_mse'])
def test_initialized_from_calibration(calib):
    x = torch.randn(4, 300) * 2 + 1
    lsq, uniform = LSQQuantizer(4, calib=calib), UniformQuantizer(4, calib=calib)
    for q in (lsq, uniform):
        q(x[:2])
        q(x[2:])
        q.calculate_qparams()
    assert isinstance(lsq.scale, nn.Parameter) and isinstance(lsq.zero_point, nn.Parameter)
    assert torch.equal(lsq.scale.data, uniform.scale)
    assert torch.equal(lsq.zero_point.data, uniform.zero_point.float())
    sym = LSQQuantizer(4, symmetric=True)
    assert [n for n, _ in sym.named_parameters()] == ['scale']
    assert 'zero_point' in dict(sym.named_buffers())


def test_qat_toy_regression_learns_step_sizes():
    x = torch.randn(256, 16)
    target = x @ torch.randn(16, 4)
    float_layer = nn.Linear(16, 4)
    model = QuantLinear(
        float_layer,
        dict(type='LSQQuantizer', bits=3, per_channel=True),
        dict(type='LSQQuantizer', bits=3),
        share_params=False)
    enable_calibration(model)
    model(x)
    finish_calibration(model)
    scales = [
        model.weight_quantizer.scale.detach().clone(),
        model.input_quantizer.scale.detach().clone()
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        loss = (model(x) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert not torch.allclose(model.weight_quantizer.scale, scales[0], rtol=1e-3)
    assert not torch.allclose(model.input_quantizer.scale, scales[1], rtol=1e-3)
    assert not torch.equal(float_layer.weight, model.weight)  # copied, not shared
