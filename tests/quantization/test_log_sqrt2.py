import math

import pytest
import torch
from torch import nn

from mixaq_mmdet.quantization import LogSqrt2Quantizer, enable_calibration, finish_calibration

BITS = list(range(2, 9))


def calibrated(bits: int) -> LogSqrt2Quantizer:
    q = LogSqrt2Quantizer(bits)
    q(torch.rand(10, 10).softmax(-1))
    q.calculate_qparams()
    q.enable_fake_quant()
    return q


@pytest.mark.parametrize('bits', BITS)
def test_exact_zero_below_range(bits):
    q = calibrated(bits)
    threshold = 2.0**(-(2**bits - 0.5) / 2)  # geometric midpoint below the last level
    smallest = 2.0**(-(2**bits - 1) / 2)
    x = torch.tensor([0.0, threshold * 0.99, threshold * 0.5, 1e-45], dtype=torch.float64)
    assert q(x.float()).eq(0).all()
    assert q(torch.tensor([smallest], dtype=torch.float64)).item() == smallest
    assert q(torch.tensor([threshold * 1.01], dtype=torch.float64)).item() == smallest


@pytest.mark.parametrize('bits', BITS)
def test_levels_and_error_bounds(bits):
    q = calibrated(bits)
    # Levels 2^(-k/2) whose cells are normal float32 numbers.
    ks = torch.arange(0, min(2**bits, 250), dtype=torch.float64)
    levels = 2.0**(-ks / 2)
    for ratio in (2.0**-0.24, 2.0**-0.1, 1.0, 2.0**0.1, 2.0**0.24):
        x = (levels * ratio).clamp(max=1.0).float()
        out = q(x)
        assert torch.equal(out, levels.float())
        # Within a level's cell the relative error is at most 2^(1/4) - 1.
        assert ((out - x).abs() <= (2.0**0.25 - 1) * x * (1 + 1e-6)).all()
    assert q(torch.tensor([1.7])).item() == 1.0  # above the range: the top level


def test_outputs_are_levels_of_a_softmax():
    q = calibrated(4)
    attn = torch.randn(2, 3, 49, 49).mul(3).softmax(-1)
    out = q(attn)
    allowed = torch.cat([torch.zeros(1), 2.0**(-torch.arange(16.0) / 2)])
    assert torch.isin(out, allowed).all()
    assert out.unique().numel() > 8
    rel = ((out - attn).abs() / attn)[out > 0]
    assert rel.max() <= 2.0**0.25 - 1 + 1e-6


def test_switches_and_straight_through_gradient():
    x = torch.rand(20)
    assert LogSqrt2Quantizer(3)(x) is x
    model = nn.Sequential()
    model.add_module('softmax_q', LogSqrt2Quantizer(3))
    enable_calibration(model)
    with pytest.raises(
            RuntimeError,
            match=r"1 quantizer\(s\) have no calibration statistics: "
            r"LogSqrt2Quantizer 'softmax_q'"):
        finish_calibration(model)
    with pytest.raises(
            RuntimeError, match="LogSqrt2Quantizer 'softmax_q': no calibration "
            "statistics"):
        model.softmax_q.calculate_qparams()
    enable_calibration(model)
    model(x)
    finish_calibration(model)
    x.requires_grad_()
    out = model(x)
    assert not torch.equal(out, x)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_bad_input():
    model = nn.Sequential()
    model.add_module('attn_q', LogSqrt2Quantizer(4))
    enable_calibration(model)
    with pytest.raises(
            ValueError,
            match=r"LogSqrt2Quantizer 'attn_q': inputs must lie in "
            r"\[0, 1\] \(post-softmax\), got a minimum of -0.5"):
        model(torch.tensor([0.2, -0.5]))
    with pytest.raises(
            ValueError,
            match=r"LogSqrt2Quantizer 'attn_q': calibration data has 1 "
            r"non-finite value\(s\) out of 2 \(first: nan\)"):
        model(torch.tensor([0.2, math.nan]))
    with pytest.raises(ValueError, match=r'bits must be an int in \[2, 8\], got 16'):
        LogSqrt2Quantizer(16)


SPREAD = 1.5  # std of the attention logits: 94-99 % of the probabilities below 2^-3.75


def _attention(seed: int = 0):
    """49-token window attention with realistic logits, and its values."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, 4, 49, 49, generator=gen) * SPREAD
    return logits.softmax(-1), torch.randn(8, 4, 49, 16, generator=gen)


def _av_error(bits: int, calib: str) -> float:
    attn, v = _attention()
    q = LogSqrt2Quantizer(bits, calib=calib)
    q(attn)  # calibration
    q.calculate_qparams()
    q.enable_fake_quant()
    held_out, v2 = _attention(1)
    return float(((q(held_out) @ v2 - held_out @ v2)**2).mean())


@pytest.mark.parametrize('bits', [2, 3])
def test_a_calibrated_top_survives_low_bits(bits):
    """With the fixed top of 1, 2 and 3 bits zero most of a 49-token softmax;
    a top calibrated by percentile/MSE keeps ``softmax @ v`` far closer."""
    attn, _ = _attention(1)
    fixed = calibrated(bits)
    zeroed = float((fixed(attn) == 0).float().mean())
    assert zeroed > 0.9
    assert _av_error(bits, 'percentile_mse') < 0.5 * _av_error(bits, 'fixed')


def test_calibrated_top_levels_and_state():
    attn, _ = _attention()
    q = LogSqrt2Quantizer(3, calib='percentile_mse')
    q(attn)
    q.calculate_qparams()
    q.enable_fake_quant()
    top = float(q.scale)
    assert 0 < top < 1
    allowed = torch.cat([torch.zeros(1), top * 2.0**(-torch.arange(8.0) / 2)])
    out = q(attn)
    assert torch.isin(out, allowed.float()).all()
    fresh = LogSqrt2Quantizer(3, calib='percentile_mse')
    fresh.load_state_dict(q.state_dict())
    fresh.enable_fake_quant()
    assert torch.equal(fresh(attn), out)
    with pytest.raises(ValueError, match="calib must be one of .*got 'kl'"):
        LogSqrt2Quantizer(3, calib='kl')


def test_an_lsq_softmax_quantizer_can_replace_it_for_qat():
    """The backbone takes any registered quantizer for the softmax, e.g. uniform
    LSQ with a learnable step for QAT."""
    from mixaq_mmdet.models import MixAQSwinTransformer
    model = MixAQSwinTransformer(
        embed_dims=16,
        depths=(2, 2),
        num_heads=(1, 2),
        out_indices=(0, 1),
        a_bits=(4, 2),
        softmax_quantizer=dict(type='LSQQuantizer', calib='percentile_mse'))
    softmax_q = model.stages[0].blocks[0].branches['low'].av.quantizer_a
    assert type(softmax_q).__name__ == 'LSQQuantizer' and softmax_q.bits == 2
