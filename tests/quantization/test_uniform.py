import pytest
import torch
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver as AoMinMaxObserver
from torch.ao.quantization.observer import PerChannelMinMaxObserver as AoPerChannelObserver

from mixaq_mmdet.quantization import (QuantLinear, UniformQuantizer, calculate_qparams,
                                      disable_quantization, enable_calibration, enable_fake_quant,
                                      fake_quantize, finish_calibration, reset_statistics)

BITS = list(range(2, 9))


def calibrate(q: UniformQuantizer, *batches: torch.Tensor) -> UniformQuantizer:
    for x in batches:
        q(x)
    q.calculate_qparams()
    q.enable_fake_quant()
    return q


def rounding_edges(q: UniformQuantizer) -> torch.Tensor:
    """Inputs at and next to the rounding boundaries of every level, ``(levels, C)``:
    where ``x * (1 / scale)`` and ``x / scale`` can round differently."""
    steps = torch.arange(q.quant_min - 1, q.quant_max + 1).unsqueeze(1) + 0.5
    half = (steps - q.zero_point.float()) * q.scale
    return torch.cat([half, torch.nextafter(half, half + 1), torch.nextafter(half, half - 1)])


def ao_observer(q: UniformQuantizer, ch_axis=None):
    dtype = torch.qint8 if q.symmetric else torch.quint8
    if ch_axis is None:
        scheme = torch.per_tensor_symmetric if q.symmetric else torch.per_tensor_affine
        return AoMinMaxObserver(
            dtype=dtype, qscheme=scheme, quant_min=q.quant_min, quant_max=q.quant_max)
    scheme = torch.per_channel_symmetric if q.symmetric else torch.per_channel_affine
    return AoPerChannelObserver(
        ch_axis=ch_axis, dtype=dtype, qscheme=scheme, quant_min=q.quant_min, quant_max=q.quant_max)


@pytest.mark.parametrize('symmetric', [False, True])
@pytest.mark.parametrize('bits', BITS)
def test_per_tensor_matches_torch(bits, symmetric):
    a, b = torch.randn(16, 20) * 2 + 0.7, torch.randn(8, 20) * 3
    q = calibrate(UniformQuantizer(bits, symmetric=symmetric), a, b)
    assert (q.quant_min, q.quant_max) == ((-2**(bits - 1), 2**(bits - 1) - 1) if symmetric else
                                          (0, 2**bits - 1))
    # min/max over two batches equals min/max over their concatenation, and torch.ao's.
    whole = calibrate(
        UniformQuantizer(bits, symmetric=symmetric), torch.cat([a.flatten(),
                                                                b.flatten()]))
    ao = ao_observer(q)
    ao(a)
    ao(b)
    ao_scale, ao_zp = ao.calculate_qparams()
    assert torch.equal(q.scale, whole.scale) and torch.equal(q.zero_point, whole.zero_point)
    assert torch.equal(q.scale, ao_scale) and torch.equal(q.zero_point, ao_zp.int())

    # Also outside the calibrated range and at the rounding boundaries.
    x = torch.cat([torch.randn(800) * 4, rounding_edges(q).flatten()])
    ref = torch.fake_quantize_per_tensor_affine(x, q.scale, q.zero_point, q.quant_min, q.quant_max)
    out = q(x)
    assert torch.equal(out, ref)
    assert torch.equal(fake_quantize(x, q.scale, q.zero_point, q.quant_min, q.quant_max), ref)
    assert out.unique().numel() <= 2**bits
    assert not torch.equal(out, x)


@pytest.mark.parametrize('symmetric', [False, True])
@pytest.mark.parametrize('bits', BITS)
def test_per_channel_matches_torch(bits, symmetric):
    # Tokens (B, N, C) with channels at different scales, quantized along the last axis.
    spread = torch.logspace(-2, 1, 6)
    a, b = torch.randn(2, 10, 6) * spread, torch.randn(3, 7, 6) * spread - 0.1
    q = calibrate(UniformQuantizer(bits, symmetric=symmetric, per_channel=True, ch_axis=-1), a, b)
    assert q.scale.shape == (6, ) and q.zero_point.shape == (6, )
    whole = calibrate(
        UniformQuantizer(bits, symmetric=symmetric, per_channel=True, ch_axis=-1),
        torch.cat([a.reshape(-1, 6), b.reshape(-1, 6)]))
    assert torch.equal(q.scale, whole.scale) and torch.equal(q.zero_point, whole.zero_point)
    ao = ao_observer(q, ch_axis=1)
    ao(a.reshape(-1, 6))
    ao(b.reshape(-1, 6))
    ao_scale, ao_zp = ao.calculate_qparams()
    assert torch.equal(q.scale, ao_scale) and torch.equal(q.zero_point, ao_zp.int())

    x = torch.cat([torch.randn(1, 20, 6) * spread * 1.5, rounding_edges(q).unsqueeze(0)], 1)
    ref = torch.fake_quantize_per_channel_affine(x, q.scale, q.zero_point, 2, q.quant_min,
                                                 q.quant_max)
    assert torch.equal(q(x), ref)
    assert torch.equal(fake_quantize(x, q.scale, q.zero_point, q.quant_min, q.quant_max, 2), ref)
    # A weight (out, in) per output channel.
    w = torch.randn(5, 9)
    qw = calibrate(UniformQuantizer(bits, symmetric=symmetric, per_channel=True), w)
    assert torch.equal(
        qw(w),
        torch.fake_quantize_per_channel_affine(w, qw.scale, qw.zero_point, 0, qw.quant_min,
                                               qw.quant_max))


@pytest.mark.parametrize('bits', BITS)
def test_zero_is_exact(bits):
    positive = torch.rand(100) + 1.0  # range does not contain 0: widened to include it
    for symmetric in (False, True):
        q = calibrate(UniformQuantizer(bits, symmetric=symmetric), positive)
        assert q(torch.zeros(3)).eq(0).all()
        if symmetric:
            assert q.zero_point.item() == 0
    negative = -positive
    q = calibrate(UniformQuantizer(bits), negative)
    assert q.zero_point.item() == q.quant_max
    assert q(torch.zeros(3)).eq(0).all()


def test_switches_do_only_what_their_names_say():
    q = UniformQuantizer(4)
    assert repr(q) == ("UniformQuantizer(bits=4, symmetric=False, per_channel=False, "
                       "calib='minmax', observer=True, fake_quant=False, calibrated=False)")
    assert q.observer_enabled and not q.fake_quant_enabled and not q.is_calibrated
    x = torch.randn(50)
    assert q(x) is x  # calibration mode computes the float function exactly
    q.disable_observer()
    assert not q.is_calibrated  # turning the observer off computes nothing
    q.calculate_qparams()
    assert q.is_calibrated and bool(q.calibrated)
    scale = q.scale.clone()
    q(x * 10)  # observer off: no statistics
    q.calculate_qparams()
    assert torch.equal(q.scale, scale)
    q.enable_fake_quant()
    assert not torch.equal(q(x), x)
    q.enable_fake_quant(False)
    assert q(x) is x
    # Statistics accumulate across observer sessions until reset.
    q.enable_observer()
    q(x * 10)
    q.enable_observer(False)
    assert not q.observer_enabled
    assert torch.equal(q.scale, scale)  # nothing computed yet
    q.enable_fake_quant()
    assert torch.equal(q.scale, scale)  # nor when fake quant goes on
    q.calculate_qparams()
    assert q.scale.item() == pytest.approx(scale.item() * 10, rel=0.01)
    q.reset_statistics()
    q.enable_observer()
    q(x)
    q.calculate_qparams()
    assert torch.equal(q.scale, scale)


def test_enable_calibration_starts_afresh():
    """A stray forward before calibration must not widen the calibrated range."""
    model = nn.Sequential(QuantLinear.from_float(nn.Linear(4, 3)))
    model(torch.randn(8, 4) * 100)  # a new quantizer observes: stray statistics
    x = torch.randn(64, 4)
    enable_calibration(model)
    model(x)
    finish_calibration(model)
    reference = nn.Sequential(QuantLinear.from_float(nn.Linear(4, 3)))
    enable_calibration(reference)
    reference(x)
    finish_calibration(reference)
    assert torch.equal(model[0].input_quantizer.scale, reference[0].input_quantizer.scale)


def test_loaded_qparams_survive_the_toggles():
    model = named_model()
    enable_calibration(model)
    model(torch.randn(16, 4))
    finish_calibration(model)
    fresh = named_model()
    fresh.load_state_dict(model.state_dict())
    loaded = fresh.fc.input_quantizer.scale.clone()
    fresh(torch.randn(16, 4) * 50)  # a new quantizer observes by default
    enable_fake_quant(fresh)
    disable_quantization(fresh)
    enable_fake_quant(fresh)
    assert torch.equal(fresh.fc.input_quantizer.scale, loaded)
    reset_statistics(fresh)
    assert not fresh.fc.input_quantizer.has_statistics()
    assert calculate_qparams(fresh) == []  # nothing observed: the loaded qparams stay
    assert torch.equal(fresh.fc.input_quantizer.scale, loaded)


def test_model_helpers_float_path_is_bit_exact():
    model = nn.Sequential(
        QuantLinear.from_float(nn.Linear(6, 5)), nn.ReLU(), QuantLinear.from_float(nn.Linear(5, 3)))
    float_model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    float_model.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(7, 6)
    enable_calibration(model)
    assert torch.equal(model(x), float_model(x))
    finish_calibration(model)
    quantized = model(x)
    assert not torch.equal(quantized, float_model(x))
    disable_quantization(model)
    assert torch.equal(model(x), float_model(x))
    finish_calibration(model)  # qparams kept: no new data needed
    assert torch.equal(model(x), quantized)


@pytest.mark.parametrize('bits', [1, 9, 0, -3])
def test_bits_out_of_range(bits):
    with pytest.raises(
            ValueError, match=rf'UniformQuantizer: bits must be an int in \[2, 8\], '
            rf'got {bits}'):
        UniformQuantizer(bits)


@pytest.mark.parametrize('bits', [4.0, '4', True, None])
def test_bits_not_an_int(bits):
    with pytest.raises(TypeError, match=rf'bits must be an int in \[2, 8\], got {bits!r}'):
        UniformQuantizer(bits)


def test_unknown_calib():
    with pytest.raises(
            ValueError, match=r"calib must be one of \('minmax', "
            r"'percentile_mse'\), got 'kl'"):
        UniformQuantizer(8, calib='kl')


def named_model() -> nn.Module:
    model = nn.Sequential()
    model.add_module('fc', QuantLinear.from_float(nn.Linear(4, 2)))
    return model


def test_forward_before_calibration_names_the_quantizer():
    model = named_model()
    model.fc.input_quantizer.disable_observer()
    model.fc.input_quantizer.enable_fake_quant()
    with pytest.raises(
            RuntimeError,
            match="UniformQuantizer: fake quantization is on but "
            "the quantizer is not calibrated"):
        model(torch.randn(3, 4))
    enable_calibration(model)
    model.fc.input_quantizer.disable_observer()
    model.fc.input_quantizer.enable_fake_quant()
    with pytest.raises(
            RuntimeError, match="UniformQuantizer 'fc.input_quantizer': fake "
            "quantization is on"):
        model(torch.randn(3, 4))


def test_empty_calibration_raises_naming_quantizers():
    model = named_model()
    enable_calibration(model)
    with pytest.raises(
            RuntimeError,
            match=r"2 quantizer\(s\) have no calibration statistics: "
            r"UniformQuantizer 'fc.weight_quantizer', UniformQuantizer "
            r"'fc.input_quantizer'"):
        finish_calibration(model)
    model(torch.randn(0, 4))  # an empty batch is no data either
    with pytest.raises(RuntimeError, match='no calibration statistics'):
        finish_calibration(model)
    q = UniformQuantizer(8)
    with pytest.raises(RuntimeError, match='UniformQuantizer: no calibration statistics'):
        q.calculate_qparams()


def test_non_strict_calibration_leaves_unreached_quantizers_armed():
    model = nn.ModuleDict(
        dict(fc=QuantLinear.from_float(nn.Linear(4, 2)), unused=UniformQuantizer(8)))
    enable_calibration(model)
    model.fc(torch.randn(3, 4))
    assert finish_calibration(model, strict=False) == ["UniformQuantizer 'unused'"]
    out = model.fc(torch.randn(3, 4))  # the reached quantizers quantize
    assert model.fc.input_quantizer.is_calibrated and out.shape == (3, 2)
    with pytest.raises(
            RuntimeError,
            match="UniformQuantizer 'unused': fake quantization "
            "is on but the quantizer is not calibrated"):
        model.unused(torch.randn(2))
    fresh = named_model()
    enable_calibration(fresh)
    with pytest.raises(RuntimeError, match='2 quantizer'):  # nothing observed at all
        finish_calibration(fresh, strict=False)


def test_enable_fake_quant_arms_without_calibrating():
    model = named_model()
    enable_fake_quant(model)
    assert not model.fc.input_quantizer.observer_enabled
    with pytest.raises(RuntimeError, match="'fc.input_quantizer': fake quantization is on"):
        model(torch.randn(3, 4))


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), float('-inf')])
def test_non_finite_calibration_data(bad):
    model = named_model()
    enable_calibration(model)
    x = torch.randn(3, 4)
    x[1, 2] = bad
    with pytest.raises(
            ValueError,
            match=rf"UniformQuantizer 'fc.input_quantizer': calibration "
            rf"data has 1 non-finite value\(s\) out of 12 \(first: {bad}\)"):
        model(x)


def test_channel_count_change_is_reported():
    model = nn.Sequential()
    model.add_module('q', UniformQuantizer(8, per_channel=True, ch_axis=-1))
    enable_calibration(model)
    model(torch.randn(2, 3, 4))
    with pytest.raises(
            ValueError, match=r"UniformQuantizer 'q': observed 4 channels before, "
            r"got 5"):
        model(torch.randn(2, 3, 5))


def test_static_needs_percentile_mse():
    with pytest.raises(
            ValueError, match=r"static=True applies to calib='percentile_mse'.*"
            r"calib='minmax'"):
        UniformQuantizer(4, static=True)
