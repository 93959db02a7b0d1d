"""RepQ-ViT scale reparameterization: exact in float, better when quantized."""
from typing import Tuple

import pytest
import torch
from torch import nn

from mixaq_mmdet.quantization import (QuantLinear, UniformQuantizer, enable_calibration,
                                      finish_calibration)
from mixaq_mmdet.quantization.reparam import (REPARAM_RANGES, ReparamTarget, equalizing_map,
                                              fold_channel_map, record_channel_statistics,
                                              reparameterize)


def _ln_linear(channels=16, seed=0):
    torch.manual_seed(seed)
    norms = [nn.LayerNorm(channels), nn.LayerNorm(channels)]
    for norm in norms:  # strongly channel-dependent post-LN ranges, as in ViTs
        norm.weight.data = torch.exp(torch.randn(channels) * 1.5)
        norm.bias.data = torch.randn(channels) * 2
    linear = nn.Linear(channels, 8)
    return norms, linear


def test_equalizing_map_gives_every_channel_one_range():
    lo = torch.tensor([-1.0, -0.1, -5.0, 0.5])
    hi = torch.tensor([3.0, 0.2, 1.0, 2.0])
    r, delta = equalizing_map(lo, hi)
    lo0, hi0 = torch.clamp(lo, max=0), torch.clamp(hi, min=0)
    new_lo, new_hi = (lo0 - delta) / r, (hi0 - delta) / r
    torch.testing.assert_close(new_lo, new_lo[:1].expand(4))
    torch.testing.assert_close(new_hi - new_lo, (hi0 - lo0).mean().expand(4))


def test_fold_is_exact_in_float_for_shared_linear():
    norms, linear = _ln_linear()
    x1, x2 = torch.randn(64, 16) * 3, torch.randn(32, 16) + 1
    before = [linear(norms[0](x1)), linear(norms[1](x2))]
    target = ReparamTarget(norms, linear, bits=8)
    with record_channel_statistics([target]) as stats:
        linear(norms[0](x1))
        linear(norms[1](x2))
    lo, hi = (t.clone() for t in stats.ranges(linear))
    reparameterize([target], stats)
    after = [linear(norms[0](x1)), linear(norms[1](x2))]
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # every channel's calibrated grid now maps onto one common range
    r, delta = equalizing_map(lo, hi)  # the map just folded
    new_lo, new_hi = (lo - delta) / r, (hi - delta) / r
    torch.testing.assert_close(new_lo, new_lo[:1].expand_as(new_lo))
    torch.testing.assert_close(new_hi, new_hi[:1].expand_as(new_hi))
    outs = torch.cat([norms[0](x1), norms[1](x2)]).detach()
    assert outs.min() >= new_lo[0] - 0.2 and outs.max() <= new_hi[0] + 0.2


@pytest.mark.parametrize('reparam_range', REPARAM_RANGES)
def test_reparam_lowers_per_tensor_quantization_error(reparam_range):
    errors = []
    for reparam in (False, True):
        norms, linear = _ln_linear(seed=1)
        torch.manual_seed(2)
        x = torch.randn(256, 16)
        reference = linear(norms[0](x))
        if reparam:
            target = ReparamTarget(norms[:1], linear, bits=4)
            with record_channel_statistics([target]) as stats:
                linear(norms[0](x))
            reparameterize([target], stats, reparam_range)
        layer = QuantLinear(linear, dict(type='UniformQuantizer', bits=8, per_channel=True),
                            UniformQuantizer(4))
        with torch.no_grad():
            enable_calibration(layer)
            layer(norms[0](x))
            finish_calibration(layer)
            errors.append(float(((layer(norms[0](x)) - reference)**2).mean()))
    assert errors[1] < 0.5 * errors[0]


def _post_ln_with_outliers(seed: int, spread: float):
    """Post-LayerNorm tokens whose channel ranges differ ``exp(2 * spread)``-fold,
    with rare outliers: 5e-4 of the entries are 30x larger before the LayerNorm."""
    gen = torch.Generator().manual_seed(seed)
    channels = 32
    x = torch.randn(8192, channels, generator=gen)
    x[torch.rand(8192, channels, generator=gen) < 5e-4] *= 30
    norm = nn.LayerNorm(channels)
    with torch.no_grad():
        norm.weight.copy_(torch.exp(torch.linspace(-spread, spread, channels)))
        norm.bias.copy_(torch.randn(channels, generator=gen) * 0.5)
    return x, norm, nn.Linear(channels, 16)


def _a4_error(fold: str, spread: float, seed: int = 0) -> float:
    """MSE of the A4 per-tensor quantized linear output against float, after no
    fold, a fold from raw min/max ranges, or the percentile/MSE fold."""
    torch.manual_seed(seed)
    x, norm, linear = _post_ln_with_outliers(seed, spread)
    with torch.no_grad():
        reference = linear(norm(x))
        if fold == 'minmax':
            y = norm(x)
            r, delta = equalizing_map(y.amin(0), y.amax(0))
            fold_channel_map(ReparamTarget([norm], linear), r, delta)
        elif fold == 'percentile':
            target = ReparamTarget([norm], linear, bits=4)
            with record_channel_statistics([target]) as stats:
                linear(norm(x))
            reparameterize([target], stats)
        layer = QuantLinear(linear, dict(type='UniformQuantizer', bits=8, per_channel=True),
                            dict(type='UniformQuantizer', bits=4, calib='percentile_mse'))
        enable_calibration(layer)
        layer(norm(x))
        finish_calibration(layer)
        return float(((layer(norm(x)) - reference)**2).mean())


@pytest.mark.parametrize('seed', [0, 1])
def test_rare_outliers_do_not_set_a_channel_scale(seed):
    """With raw min/max ranges one outlier sets its channel's scale: on channels of
    equal range the fold is then worse than no fold. Ranges from the
    percentile/MSE search beat no fold there, and beat the min/max fold where
    channel ranges differ."""
    none, minmax, percentile = (_a4_error(f, 0.0, seed) for f in ('none', 'minmax', 'percentile'))
    assert minmax > 1.1 * none and percentile < 0.9 * none
    none, minmax, percentile = (_a4_error(f, 1.0, seed) for f in ('none', 'minmax', 'percentile'))
    assert percentile < 0.85 * minmax and minmax < none


def repq_vit_step(x: torch.Tensor, bits: int) -> float:
    """The per-channel step RepQ-ViT calibrates for one channel's values ``x``
    (``UniformQuantizer.init_quantization_scale`` of its quantizer.py): each
    ``(1 - p, p)`` quantile range, ``p`` in 0.999, 0.9999, 0.99999, gives step
    ``(hi - lo) / (2^bits - 1)`` and zero point ``round(-lo / step)``; the
    first with the lowest MSE on ``x`` wins."""
    x = x.double()
    top = 2**bits - 1
    best, step = float('inf'), float('nan')
    for pct in (0.999, 0.9999, 0.99999):
        hi, lo = torch.quantile(x, pct), torch.quantile(x, 1.0 - pct)
        delta = (hi - lo) / top
        zero_point = torch.round(-lo / delta)
        xq = (torch.clamp(torch.round(x / delta) + zero_point, 0, top) - zero_point) * delta
        score = float((x - xq).pow(2).mean())
        if score < best:
            best, step = score, float(delta)
    return step


def _channel_ranges(x: torch.Tensor, bits: int,
                    reparam_range: str) -> Tuple[torch.Tensor, torch.Tensor]:
    linear = nn.Linear(x.shape[-1], 2)
    target = ReparamTarget([nn.LayerNorm(x.shape[-1])], linear, bits=bits)
    with record_channel_statistics([target]) as stats:
        linear(x)
    return stats.ranges(linear, reparam_range)


def test_a_one_sign_channel_gets_repq_vit_step():
    """Values in [-1.851, -0.827] at 4 bits: RepQ-ViT's calibrated step is about
    1.024 / 15, not the 1.851 / 15 of the range widened to include 0; a
    channel that spans 0 gets nearly the same step either way."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 3, generator=gen)
    x[:, 0] = -1.851 + (1.851 - 0.827) * torch.rand(20000, generator=gen)
    x[:2, 0] = torch.tensor([-1.851, -0.827])
    lo, hi = _channel_ranges(x, 4, 'repq_vit')
    step = (hi - lo) / 15
    expected = repq_vit_step(x[:, 0], 4)
    assert expected == pytest.approx(1.024 / 15, rel=0.01)
    assert float(step[0]) == pytest.approx(expected, rel=5e-3)
    assert float(lo[0]) == pytest.approx(-1.851, abs=expected) and hi[0] < 0
    lo0, hi0 = _channel_ranges(x, 4, 'with_zero')
    step0 = (hi0 - lo0) / 15
    assert float(step0[0]) == pytest.approx(1.851 / 15, rel=0.01) and hi0[0] == 0
    assert float(step[1]) == pytest.approx(repq_vit_step(x[:, 1], 4), rel=0.02)
    assert float(step[1]) == pytest.approx(float(step0[1]), rel=0.05)


def test_repq_vit_range_of_a_constant_channel_is_widened_to_zero():
    """A channel without width (a LayerNorm channel with gamma 0) would have
    step 0 (RepQ-ViT divides by it): its range is widened to include 0."""
    x = torch.randn(500, 3)
    x[:, 1] = -0.7
    lo, hi = _channel_ranges(x, 4, 'repq_vit')
    assert float(lo[1]) == pytest.approx(-0.7) and float(hi[1]) == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all()


def test_fold_is_exact_for_one_sign_channels_and_padding():
    """Under 'repq_vit' channels of one sign keep ranges that exclude 0: the
    fold is still exact, every channel's grid maps onto one common grid of
    step mean(s) (RepQ-ViT's ``r = s / mean(s)``), and a padding token (zeros
    after the LayerNorm) becomes ``reparam_pad``, which the folded linear maps
    where the original mapped zeros, outside the common range."""
    torch.manual_seed(3)
    channels = 12
    norm = nn.LayerNorm(channels)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(channels) * 0.3 + 0.05)
        norm.bias.copy_(torch.linspace(-2.0, 2.0, channels))
        norm.weight[5] = 0.0  # a constant channel
    linear = nn.Linear(channels, 8)
    owner = nn.Module()
    owner.register_buffer('reparam_pad', torch.zeros(channels))
    x = torch.randn(4096, channels)
    with torch.no_grad():
        y = norm(x)
        assert (y.amax(0) < 0).sum() >= 3 and (y.amin(0) > 0).sum() >= 3
        before, zero_image = linear(y), linear(torch.zeros(channels))
        target = ReparamTarget([norm], linear, bits=4, pad_owner=owner)
        with record_channel_statistics([target]) as stats:
            linear(norm(x))
        lo, hi = (t.clone() for t in stats.ranges(linear, 'repq_vit'))
        [(r, delta)] = reparameterize([target], stats, 'repq_vit')
        torch.testing.assert_close(linear(norm(x)), before, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(linear(owner.reparam_pad), zero_image, rtol=1e-4, atol=1e-4)
    steps = (hi - lo) / 15
    torch.testing.assert_close(r, steps / steps.mean())
    new_lo, new_hi = (lo - delta) / r, (hi - delta) / r
    torch.testing.assert_close(new_lo, new_lo[:1].expand_as(new_lo))
    torch.testing.assert_close(new_hi - new_lo, (15 * steps.mean()).expand_as(new_lo))
    one_sign = (lo > 0) | (hi < 0)
    pad = owner.reparam_pad
    assert ((pad < new_lo) | (pad > new_hi))[one_sign].all()


def test_unknown_reparam_range_is_refused_by_name():
    norms, linear = _ln_linear()
    target = ReparamTarget(norms[:1], linear)
    with record_channel_statistics([target]) as stats:
        linear(norms[0](torch.randn(8, 16)))
    with pytest.raises(
            ValueError,
            match=r"reparam_range must be one of \('repq_vit', 'with_zero'\), "
            r"got 'repq'"):
        reparameterize([target], stats, 'repq')
