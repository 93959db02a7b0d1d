"""PTQ4ViT's twin uniform quantizer (:mod:`mixaq_mmdet.quantization.twin_uniform`)."""
import pytest
import torch
import torch.nn.functional as F

from mixaq_mmdet.quantization import TwinUniformQuantizer, build_quantizer
from mixaq_mmdet.quantization.twin_uniform import GELU_MIN, SHIFTS, twin_quantize

BITS = list(range(2, 9))


def softmax_data(n: int = 40, seed: int = 0) -> torch.Tensor:
    """Attention-like probabilities: peaked rows of 49 tokens."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 49, 49, generator=g, dtype=torch.float64) * 2.5).softmax(-1)


def gelu_data(n: int = 4000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.gelu(torch.randn(n, 32, generator=g, dtype=torch.float64) * 1.5 - 0.3)


def calibrated(bits: int, mode: str, data: torch.Tensor) -> TwinUniformQuantizer:
    q = TwinUniformQuantizer(bits, mode)
    q(data)
    q.calculate_qparams()
    q.disable_observer()
    q.enable_fake_quant()
    return q


def nearest_in_range(x: torch.Tensor, step: float, lo: int, hi: int) -> torch.Tensor:
    """Nearest level ``i * step``, ``lo <= i <= hi``, by comparing with every
    level (not by rounding)."""
    grid = torch.arange(lo, hi + 1, dtype=torch.float64) * step
    return grid[(x.unsqueeze(-1) - grid).abs().argmin(-1)]


@pytest.mark.parametrize('bits', BITS)
def test_softmax_mode_is_nearest_level_of_its_range(bits):
    q = calibrated(bits, 'softmax', softmax_data())
    small, large = q.scale.double().tolist()
    n = 2**(bits - 1)
    assert large == pytest.approx(1 / (n - 1))
    shift = torch.log2(torch.tensor(large / small)).item()
    assert shift == pytest.approx(round(shift)) and round(shift) in SHIFTS
    x = softmax_data(4, seed=1).flatten()
    out = q(x)
    in_small = x < n * small
    expected = torch.where(in_small, nearest_in_range(x, small, 0, n - 1),
                           nearest_in_range(x, large, 0, n - 1))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert q(torch.tensor([1.0], dtype=torch.float64)).item() == pytest.approx(1.0)


@pytest.mark.parametrize('bits', BITS)
def test_gelu_mode_is_nearest_level_of_its_range(bits):
    q = calibrated(bits, 'gelu', gelu_data())
    small, large = q.scale.double().tolist()
    n = 2**(bits - 1)
    assert small * (n - 1) == pytest.approx(-GELU_MIN)
    x = gelu_data(50, seed=1).flatten()
    out = q(x)
    expected = torch.where(x < 0, nearest_in_range(x, small, -(n - 1), 0),
                           nearest_in_range(x, large, 0, n - 1))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert q(torch.tensor([GELU_MIN], dtype=torch.float64)).item() == pytest.approx(GELU_MIN)


@pytest.mark.parametrize('mode', ['softmax', 'gelu'])
@pytest.mark.parametrize('bits', [2, 4, 8])
def test_step_function_of_the_search_is_the_forward(mode, bits):
    """Random points of every segment of the search's step function are mapped
    by the forward to that segment's level: the MSE the search minimizes is the
    error of what the quantizer computes."""
    q = TwinUniformQuantizer(bits, mode)
    steps = q._steps(torch.tensor(SHIFTS))
    boundaries, levels = q._step_function(steps)
    boundaries, levels = boundaries[:, 0], levels[:, 0]
    lo = boundaries[:, :1] - 1.0
    hi = boundaries[:, -1:] + 1.0
    points = lo + (hi - lo) * torch.rand(len(SHIFTS), 5000, dtype=torch.float64)
    segment = torch.searchsorted(boundaries, points)
    out = twin_quantize(points, steps[:, :1], steps[:, 1:], q.levels, mode)
    torch.testing.assert_close(out, levels.gather(1, segment), rtol=0, atol=1e-12)


@pytest.mark.parametrize('mode,data', [('softmax', softmax_data), ('gelu', gelu_data)])
@pytest.mark.parametrize('bits', [3, 4, 6])
def test_calibration_picks_a_shift_with_the_lowest_error(mode, data, bits):
    """The chosen shift's error on the data is within 5 % of the best of all
    shifts: the histogram's bins are at most 3 % wide, so its MSE may rank two
    shifts of almost equal error either way, never a clearly worse one."""
    x = data()
    q = calibrated(bits, mode, x)
    steps = q._steps(torch.tensor(SHIFTS))
    errors = torch.stack([(twin_quantize(x, s[0], s[1], q.levels, mode) - x).pow(2).mean()
                          for s in steps])
    chosen = (q(x) - x).pow(2).mean()
    assert chosen <= errors.min() * 1.05
    assert errors.max() > 2 * errors.min()  # the choice matters on this data


def test_straight_through_gradient_and_float32_under_autocast():
    q = calibrated(4, 'gelu', gelu_data().float())
    x = gelu_data(3).float().requires_grad_()
    q(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = q(x.detach().bfloat16())
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, q(x.detach().bfloat16().float()).bfloat16())


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match=r"mode must be one of \('softmax', 'gelu'\), got 'relu'"):
        TwinUniformQuantizer(4, 'relu')
    q = TwinUniformQuantizer(4, 'softmax')
    q.name = 'backbone.x.av.quantizer_a'
    with pytest.raises(
            ValueError,
            match=r"TwinUniformQuantizer 'backbone.x.av.quantizer_a'.*"
            r"\[0, 1\].*mode='gelu'"):
        q(torch.tensor([-0.1, 0.5]))
    with pytest.raises(RuntimeError, match='no calibration statistics'):
        TwinUniformQuantizer(4, 'gelu').calculate_qparams()
    with pytest.raises(ValueError, match='bits must be an int in'):
        TwinUniformQuantizer(9)


def test_checkpoint_of_the_other_mode_is_refused_and_its_own_loads():
    q = calibrated(4, 'softmax', softmax_data())
    state = q.state_dict()
    same = build_quantizer(dict(type='TwinUniformQuantizer', bits=4, mode='softmax'))
    same.load_state_dict(state)
    assert same.is_calibrated and torch.equal(same.scale, q.scale)
    with pytest.raises(ValueError, match=r"mode='softmax' \(model: 'gelu'\)"):
        TwinUniformQuantizer(4, 'gelu').load_state_dict(state)
    log = build_quantizer(dict(type='LogSqrt2Quantizer', bits=4))
    with pytest.raises(ValueError, match=r"kind='twin_uniform' \(model: 'log_sqrt2'\)"):
        log.load_state_dict(state)
