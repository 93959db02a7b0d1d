import pytest
import torch

from mixaq_mmdet.quantization import (PERCENTILES, HistogramObserver, LogSqrt2Quantizer,
                                      TensorObserver, UniformQuantizer)
from mixaq_mmdet.quantization.numerics import uniform_step_function
from mixaq_mmdet.quantization.observers import _step_antiderivative

BITS = list(range(2, 9))


def calibrated(x: torch.Tensor, **kwargs) -> UniformQuantizer:
    """Calibrated in 4 batches, or on the whole tensor when ``static``."""
    q = UniformQuantizer(**kwargs)
    for chunk in x.chunk(1 if q.static else 4):
        q(chunk)
    q.calculate_qparams()
    q.enable_fake_quant()
    return q


def mse(q: UniformQuantizer, x: torch.Tensor) -> float:
    return (q(x) - x).double().pow(2).mean().item()


def student_t(n: int) -> torch.Tensor:
    return torch.distributions.StudentT(3.0).sample((n, ))


@pytest.mark.parametrize('static', [False, True])
@pytest.mark.parametrize('bits', BITS)
def test_lower_mse_than_minmax_on_heavy_tails(bits, static):
    x = student_t(40000)
    minmax = mse(calibrated(x, bits=bits), x)
    percentile = mse(calibrated(x, bits=bits, calib='percentile_mse', static=static), x)
    # Clipping pays at low bit widths; at 7-8 bits (min, max) may be the best candidate.
    if bits <= 6:
        assert percentile < 0.9 * minmax
    else:
        assert percentile <= minmax


@pytest.mark.parametrize('symmetric', [False, True])
@pytest.mark.parametrize('bits', BITS)
def test_never_higher_mse_than_minmax_on_gaussian(bits, symmetric):
    x = torch.randn(30000)
    minmax = mse(calibrated(x, bits=bits, symmetric=symmetric), x)
    for static in (False, True):
        q = calibrated(x, bits=bits, symmetric=symmetric, calib='percentile_mse', static=static)
        assert mse(q, x) <= minmax


def test_per_channel_weight_search_is_per_channel():
    # Rows 0-3 heavy-tailed (clipping pays), rows 4-7 uniform (little to gain).
    w = torch.cat([student_t(8 * 512).reshape(4, -1), torch.rand(4, 1024) * 2 - 1])
    minmax = UniformQuantizer(4, per_channel=True)
    minmax(w)
    minmax.calculate_qparams()
    minmax.enable_fake_quant()
    q = UniformQuantizer(4, per_channel=True, calib='percentile_mse', static=True)
    q(w)
    q(w)  # the same weight again in the next calibration batch
    q.calculate_qparams()
    q.enable_fake_quant()
    assert q.scale.shape == (8, )
    err = (q(w) - w).pow(2).mean(1)
    err_minmax = (minmax(w) - w).pow(2).mean(1)
    assert (err[:4] < 0.9 * err_minmax[:4]).all()
    assert (err[4:] <= err_minmax[4:]).all()


def test_histogram_is_independent_of_batching():
    # Batches of growing magnitude force the range to double (and bins to merge).
    batches = [torch.randn(3000) * s for s in (1e-3, 0.3, 7.0, 300.0)] + [torch.zeros(10)]
    split = HistogramObserver(octaves=8, mantissa_bits=3)
    whole = HistogramObserver(octaves=8, mantissa_bits=3)
    for x in batches:
        split.observe(x)
    whole.observe(torch.cat(batches))
    assert torch.equal(split.hist, whole.hist)
    assert torch.equal(split.exponent, whole.exponent)
    assert split.hist.shape == (1, 2 * (8 * 8 + 1)) and int(split.hist.sum()) == 12010
    assert split.exponent.item() == 11  # 2**10 < max|x| < 2**11 for this seed
    assert torch.equal(split.min_val, whole.min_val)
    # Magnitudes below 2**(11 - 8) share the near-zero bins, zeros included.
    near_zero = int((torch.cat(batches).abs() < 8).sum())
    assert int(split.hist[0, 64] + split.hist[0, 65]) == near_zero

    seq = calibrated(torch.cat(batches), bits=8, calib='percentile_mse')
    one = UniformQuantizer(8, calib='percentile_mse')
    one(torch.cat(batches))
    one.calculate_qparams()
    assert torch.equal(seq.scale, one.scale) and torch.equal(seq.zero_point, one.zero_point)


def test_histogram_statistics_are_accurate():
    x = student_t(50000).reshape(-1, 5) * torch.tensor([0.01, 0.1, 1.0, 10.0, 100.0])
    hist = HistogramObserver(per_channel=True, ch_axis=1)
    exact = TensorObserver(per_channel=True, ch_axis=1)
    for chunk in x.chunk(3):
        hist.observe(chunk)
    exact.observe(x)
    qs = [1 - p for p in PERCENTILES] + list(PERCENTILES)
    ref = torch.quantile(x.double(), torch.tensor(qs, dtype=torch.float64), dim=0)
    assert torch.allclose(exact.quantiles(qs), ref)
    # Each order statistic is located within its bin, 2**-5 of its magnitude wide.
    tol = torch.maximum(*(torch.quantile(
        x.double(), torch.tensor(qs, dtype=torch.float64), dim=0, interpolation=i).abs()
                          for i in ('lower', 'higher'))) / 32
    assert ((hist.quantiles(qs) - ref).abs() <= tol).all()
    for bits in (4, 8):
        q = UniformQuantizer(bits, per_channel=True, ch_axis=1)
        scale, zp = q._range_to_qparams(ref[:3].float(), ref[3:].float())  # (3, 5) candidates
        steps = uniform_step_function(scale, zp, q.quant_min, q.quant_max)
        estimate = hist.step_mse(*steps)
        actual = torch.stack([
            ((torch.fake_quantize_per_channel_affine(x, s, z, 1, q.quant_min, q.quant_max) -
              x).double()**2).mean(0) for s, z in zip(scale, zp)
        ])
        assert estimate.shape == (3, 5)
        # Few tail samples dominate the clipping error; each is known within 3 %.
        assert torch.allclose(estimate, actual, rtol=0.1)
        assert torch.allclose(estimate[0], actual[0], rtol=0.05)  # (0.1 %, 99.9 %): many
        assert torch.allclose(exact.step_mse(*steps), actual)


def test_histogram_memory_is_bounded():
    obs = HistogramObserver(per_channel=True, ch_axis=-1)
    assert obs.num_bins == 2050
    for i in range(20):
        obs.observe(torch.randn(2, 500, 3) * 4**i)
    assert obs.hist.shape == (3, 2050) and obs.exponent.shape == (3, )
    assert int(obs.hist.sum()) == 20 * 1000 * 3


def test_static_rejects_a_different_tensor():
    q = UniformQuantizer(4, calib='percentile_mse', static=True)
    q.name = 'fc.weight_quantizer'
    w = torch.randn(4, 4)
    q(w)
    q(w.clone())  # equal values are the same weight
    with pytest.raises(
            ValueError,
            match="UniformQuantizer 'fc.weight_quantizer': static "
            'statistics keep one tensor'):
        q(torch.randn(4, 4))
    q.reset_statistics()
    q(torch.randn(4, 4))
    q.calculate_qparams()
    assert q.is_calibrated


@pytest.mark.parametrize(
    'kwargs', [dict(octaves=0),
               dict(octaves=65),
               dict(mantissa_bits=11),
               dict(mantissa_bits=2.0)])
def test_bad_histogram_settings(kwargs):
    name, value = next(iter(kwargs.items()))
    with pytest.raises(ValueError, match=f'{name} must be an int in .*, got {value!r}'):
        HistogramObserver(**kwargs)


def test_float64_values_that_underflow_in_float32_stay_in_the_histogram():
    # the bins are float32's exponents and mantissas: a float64 value that is 0 in
    # float32 must be counted as 0 (it fell outside every bin, and a negative one
    # made bincount raise)
    x = torch.tensor([1e-50, -1e-50, 0.01, -0.02], dtype=torch.float64)
    obs = HistogramObserver()
    obs.observe(x)
    assert int(obs.hist.sum()) == 4
    expected = HistogramObserver()
    expected.observe(x.float())
    assert torch.equal(obs.hist, expected.hist)


def test_step_integral_is_exact_for_any_step_function():
    """The one MSE method (uniform and log-sqrt(2) candidates alike) integrates a
    step function over each bin: against a fine quadrature of the same integral."""
    gen = torch.Generator().manual_seed(0)
    boundaries = torch.rand(2, 3, 5, generator=gen, dtype=torch.float64).sort(-1).values * 4 - 2
    levels = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64)
    a = torch.rand(2, 3, 4, generator=gen, dtype=torch.float64) * 6 - 3
    b = a + torch.rand(2, 3, 4, generator=gen, dtype=torch.float64) * 2
    exact = (
        _step_antiderivative(b.contiguous(), boundaries, levels)[0] -
        _step_antiderivative(a.contiguous(), boundaries, levels)[0])
    n = 200_000
    frac = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    x = a.unsqueeze(-1) + (b - a).unsqueeze(-1) * frac  # (2, 3, 4, n) midpoints
    seg = torch.searchsorted(boundaries.unsqueeze(2).expand(-1, -1, 4, -1).contiguous(), x)
    q = levels.unsqueeze(2).expand(-1, -1, 4, -1).gather(-1, seg)
    quadrature = ((q - x)**2).mean(-1) * (b - a)
    # The midpoint rule is off by at most one cell's share at each jump: (b - a) / n.
    assert torch.allclose(exact, quadrature, rtol=0, atol=4 * 9 * (b - a).max().item() / n)


def test_log_sqrt2_search_error_matches_the_exact_error():
    """The log-sqrt(2) candidates' MSE on the histogram is the exact MSE on the data
    within the histogram's resolution (as the uniform quantizer's)."""
    x = torch.softmax(torch.randn(4000, 49) * 3, -1).flatten()
    hist, exact = HistogramObserver(), TensorObserver()
    hist.observe(x)
    exact.observe(x)
    q = LogSqrt2Quantizer(3, calib='percentile_mse')
    boundaries, levels = (t.view(torch.float64) for t in (q.log_boundaries, q.log_levels))
    top = torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64).view(-1, 1, 1)
    estimate = hist.step_mse(top * boundaries, top * levels.flip(0))
    actual = torch.stack([((q._quantize(x.double(), t.flatten()) - x.double())**2).mean()
                          for t in top]).unsqueeze(1)
    assert torch.allclose(exact.step_mse(top * boundaries, top * levels.flip(0)), actual)
    assert torch.allclose(estimate, actual, rtol=0.05)


def test_histogram_bit_fields_bin_as_frexp():
    """The bins read from float32 bit fields are frexp's, value for value:
    zeros of both signs, subnormals, every octave of each channel's range; a
    channel whose range reaches down to subnormals is binned by frexp."""
    torch.manual_seed(0)
    x = torch.randn(3000, 16) * torch.logspace(-20, 3, 16)
    x[::7] = 0.0
    x[1::11] = -0.0
    x[5, 2], x[6, 3] = 1e-40, -3e-39
    for observer in (HistogramObserver(), HistogramObserver(per_channel=True, ch_axis=-1),
                     HistogramObserver(per_channel=True, ch_axis=-1, octaves=8, mantissa_bits=0)):
        observer.observe(x)
        shape = observer.channel_shape(x)
        bottom = (observer.exponent - observer.octaves + 1).int().view(shape)
        assert torch.equal(
            observer._magnitude_bit_fields(x, bottom), observer._magnitude_frexp(x, bottom))
    tiny = HistogramObserver(per_channel=True, ch_axis=-1)
    data = torch.randn(100, 4)
    data[:, 1] *= 1e-35  # bottom below the bit fields' reach: the frexp path
    tiny.observe(data)
    frexp_counts = torch.stack([
        torch.bincount(
            torch.where(data[:, c] < 0, tiny._half - 1 - m, m + tiny._half),
            minlength=tiny.num_bins)
        for c, m in enumerate(
            tiny._magnitude_frexp(data, (tiny.exponent - tiny.octaves + 1).int().view(1, -1)).t())
    ])
    assert torch.equal(tiny.hist, frexp_counts)
