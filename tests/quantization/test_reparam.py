"""RepQ-ViT scale reparameterization: exact in float, better when quantized."""
import pytest
import torch
from torch import nn

from mixaq_mmdet.quantization import (QuantLinear, UniformQuantizer, enable_calibration,
                                      finish_calibration)
from mixaq_mmdet.quantization.reparam import (ReparamTarget, equalizing_map, fold_channel_map,
                                              record_channel_statistics, reparameterize)


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


def test_reparam_lowers_per_tensor_quantization_error():
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
            reparameterize([target], stats)
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
