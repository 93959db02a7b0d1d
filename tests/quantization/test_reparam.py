"""RepQ-ViT scale reparameterization: exact in float, better when quantized."""
import torch
from torch import nn

from mixaq_mmdet.quantization import (QuantLinear, UniformQuantizer, enable_calibration,
                                      enable_quantization)
from mixaq_mmdet.quantization.reparam import (ReparamTarget, equalizing_map,
                                              record_channel_ranges, reparameterize)


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
    target = ReparamTarget(norms, linear)
    with record_channel_ranges([target]) as ranges:
        linear(norms[0](x1))
        linear(norms[1](x2))
    reparameterize([target], ranges)
    after = [linear(norms[0](x1)), linear(norms[1](x2))]
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # both LayerNorm outputs now lie in one common range, whatever the channel
    lo, hi = ranges.reduced(linear)
    r, delta = equalizing_map(lo, hi)  # the map just folded: ranges are the same data's
    common_lo = ((lo.clamp(max=0) - delta) / r)[0]
    common_hi = common_lo + (hi.clamp(min=0) - lo.clamp(max=0)).mean()
    outs = torch.cat([norms[0](x1), norms[1](x2)]).detach()
    assert outs.min() >= common_lo - 1e-4 and outs.max() <= common_hi + 1e-4
    # and the data fills it: every channel reaches one end or the other
    touches = (outs.amin(0) - common_lo).abs().lt(1e-3) | (outs.amax(0) - common_hi).abs().lt(1e-3)
    assert touches.all()


def test_reparam_lowers_per_tensor_quantization_error():
    errors = []
    for reparam in (False, True):
        norms, linear = _ln_linear(seed=1)
        torch.manual_seed(2)
        x = torch.randn(256, 16)
        reference = linear(norms[0](x))
        if reparam:
            target = ReparamTarget(norms[:1], linear)
            with record_channel_ranges([target]) as ranges:
                linear(norms[0](x))
            reparameterize([target], ranges)
        layer = QuantLinear(linear, dict(type='UniformQuantizer', bits=8, per_channel=True),
                            UniformQuantizer(4))
        with torch.no_grad():
            enable_calibration(layer)
            layer(norms[0](x))
            enable_quantization(layer)
            errors.append(float(((layer(norms[0](x)) - reference)**2).mean()))
    assert errors[1] < 0.5 * errors[0]
