"""PTQ4ViT's twin uniform quantizer (:mod:`mixaq_mmdet.quantization.twin_uniform`)."""
import math

import pytest
import torch
import torch.nn.functional as F

from mixaq_mmdet.quantization import TwinUniformQuantizer, build_quantizer
from mixaq_mmdet.quantization.base import EXTRA_STATE_KEY, encode_settings
from mixaq_mmdet.quantization.twin_uniform import GELU_MIN, GELU_SEARCH, SHIFTS, twin_quantize

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


def ptq4vit_post_gelu(x: torch.Tensor, pos_step: float, bits: int) -> torch.Tensor:
    """PTQ4ViT's ``PostGeluPTQSLBatchingQuantLinear.quant_input``: the sum of
    the positive range (codes 0..2^(b-1) - 1 of ``pos_step``) and the negative
    one (codes -2^(b-1)..0 of ``0.16997124254703522 / 2^(b-1)``)."""
    qmax = 2**(bits - 1)
    neg_step = 0.16997124254703522 / qmax
    x_pos = (x / pos_step).round().clamp(0, qmax - 1) * pos_step
    x_neg = (x / neg_step).round().clamp(-qmax, 0) * neg_step
    return x_pos + x_neg


@pytest.mark.parametrize('bits', BITS)
def test_gelu_mode_is_ptq4vit_grid(bits):
    """2^bits levels: 2^(b-1) negative codes of step 0.16997 / 2^(b-1) down to
    GELU's minimum, 0 and 2^(b-1) - 1 positive codes; every output is the
    nearest level of its range and what PTQ4ViT's quantizer gives."""
    q = calibrated(bits, 'gelu', gelu_data())
    small, large = q.scale.double().tolist()
    n = 2**(bits - 1)
    assert small == pytest.approx(0.16997124254703522 / n, rel=1e-7)
    x = gelu_data(50, seed=1).flatten()
    out = q(x)
    expected = torch.where(x < 0, nearest_in_range(x, small, -n, 0),
                           nearest_in_range(x, large, 0, n - 1))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # the same levels up to the float32 storage of the steps
    torch.testing.assert_close(out, ptq4vit_post_gelu(x, large, bits), rtol=1e-6, atol=1e-9)
    assert q(torch.tensor([GELU_MIN], dtype=torch.float64)).item() == pytest.approx(GELU_MIN)
    sweep = torch.linspace(1.5 * GELU_MIN, 1.5 * n * large, 200001, dtype=torch.float64)
    assert q(sweep).unique().numel() == 2**bits


def _known_step_data(bits: int, step: float, index: int, seed: int = 0) -> torch.Tensor:
    """GELU-like data whose positive values lie uniformly within +-0.3 step of
    the levels ``j * step``, ``0 < j < 2^(b-1)``, with one value at the maximum
    that makes ``step`` PTQ4ViT's candidate ``index``. No value is near a
    rounding boundary, so the error is ``var + (s - step)^2 * mean(j^2)``
    within the positive range: lowest at ``step``, clearly higher for its
    neighbours (1.2 % off)."""
    alpha, beta, num = GELU_SEARCH
    factor = alpha + index * (beta - alpha) / num
    n = 2**(bits - 1)
    g = torch.Generator().manual_seed(seed)
    j = torch.randint(1, n, (40000, ), generator=g).double()
    positive = (j + (torch.rand(40000, generator=g, dtype=torch.float64) - 0.5) * 0.6) * step
    negative = F.gelu(-torch.rand(10000, generator=g, dtype=torch.float64) * 4)
    top = torch.tensor([step * (n - 0.5) / factor], dtype=torch.float64)
    return torch.cat([positive, negative, top])


@pytest.mark.parametrize('bits', BITS)
def test_gelu_positive_step_is_searched_as_ptq4vit_does(bits):
    """The positive step is free (not the negative step times a power of two):
    PTQ4ViT's candidates ``(0.01 + i * 1.19 / 100) * max / (2^(b-1) - 0.5)``,
    ``i < 100``, and the search finds the one the data is built for."""
    step, index = 0.05, 83
    x = _known_step_data(bits, step, index)
    q = calibrated(bits, 'gelu', x)
    candidates = q.candidate_steps(x.max())
    alpha, beta, num = GELU_SEARCH
    assert len(candidates) == num == 100
    factors = candidates[:, 1] * (2**(bits - 1) - 0.5) / x.max()
    torch.testing.assert_close(factors, alpha + torch.arange(num).double() * (beta - alpha) / num)
    assert candidates[index, 1].item() == pytest.approx(step, rel=1e-9)
    errors = torch.stack([(twin_quantize(x, s[0], s[1], q.levels, 'gelu') - x).pow(2).mean()
                          for s in candidates])
    assert errors.argmin() == index and errors.sort().values[1] > 1.001 * errors[index]
    assert q.scale[1].item() == pytest.approx(step, rel=1e-6)
    exponent = math.log2(q.scale[1].item() / q.scale[0].item())
    assert abs(exponent - round(exponent)) > 0.1  # not a power of two apart


@pytest.mark.parametrize('mode', ['softmax', 'gelu'])
@pytest.mark.parametrize('bits', [2, 4, 8])
def test_step_function_of_the_search_is_the_forward(mode, bits):
    """Random points of every segment of the search's step function are mapped
    by the forward to that segment's level: the MSE the search minimizes is the
    error of what the quantizer computes."""
    q = TwinUniformQuantizer(bits, mode)
    steps = q.candidate_steps(torch.tensor(1.7))
    boundaries, levels = q._step_function(steps)
    boundaries, levels = boundaries[:, 0], levels[:, 0]
    lo = boundaries[:, :1] - 1.0
    hi = boundaries[:, -1:] + 1.0
    points = lo + (hi - lo) * torch.rand(len(steps), 5000, dtype=torch.float64)
    segment = torch.searchsorted(boundaries, points)
    out = twin_quantize(points, steps[:, :1], steps[:, 1:], q.levels, mode)
    torch.testing.assert_close(out, levels.gather(1, segment), rtol=0, atol=1e-12)


@pytest.mark.parametrize('mode,data', [('softmax', softmax_data), ('gelu', gelu_data)])
@pytest.mark.parametrize('bits', [3, 4, 6])
def test_calibration_picks_a_candidate_with_the_lowest_error(mode, data, bits):
    """The chosen candidate's error on the data (a shift for 'softmax', a
    positive step for 'gelu') is within 5 % of the best of all candidates: the
    histogram's bins are at most 3 % wide, so its MSE may rank two candidates
    of almost equal error either way, never a clearly worse one."""
    x = data()
    q = calibrated(bits, mode, x)
    steps = q.candidate_steps(x.max())
    assert len(steps) == (len(SHIFTS) if mode == 'softmax' else GELU_SEARCH[2])
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


def test_state_of_the_earlier_gelu_grid_is_refused():
    """A calibrated 'gelu' state saved before the PTQ4ViT grid (no
    ``negative_levels`` in its settings: 2^(b-1) - 1 negative codes, steps tied
    by a power of two) would quantize on another grid: refused."""
    state = calibrated(4, 'gelu', gelu_data()).state_dict()
    state[EXTRA_STATE_KEY] = encode_settings(dict(kind='twin_uniform', bits=4, mode='gelu'))
    with pytest.raises(ValueError, match=r"negative_levels=None \(model: 8\)"):
        TwinUniformQuantizer(4, 'gelu').load_state_dict(state)
    assert TwinUniformQuantizer(4, 'softmax').settings() == dict(
        kind='twin_uniform', bits=4, mode='softmax')
