"""StatsQ, OFQ's statistics-based weight quantizer."""
import pytest
import torch

from mixaq_mmdet.quantization import LSQQuantizer, QuantLinear, StatsQQuantizer


def _calibrated(bits: int, w: torch.Tensor) -> StatsQQuantizer:
    q = StatsQQuantizer(bits)
    q(w)
    q.calculate_qparams()
    q.disable_observer()
    q.enable_fake_quant()
    return q


@pytest.mark.parametrize('bits', [2, 3, 4, 8])
def test_levels_follow_the_weights_statistics(bits):
    """Each output channel's ``2^bits`` levels are ``(k + 1/2) / n`` times its
    ``2 * mean|w|``, and every weight goes to its nearest level (clipped ones
    to the outermost): computed here in float64 from the definition."""
    torch.manual_seed(0)
    w = torch.randn(6, 40) * torch.tensor([0.01, 0.1, 1.0, 3.0, 0.5, 2.0]).view(6, 1)
    q = _calibrated(bits, w)
    out = q(w)
    n = 2**(bits - 1)
    scale = 2 * w.double().abs().mean(1, keepdim=True)
    levels = ((torch.arange(-n, n, dtype=torch.float64) + 0.5) / n * scale.unsqueeze(-1)).expand(
        -1, w.shape[1], -1)  # (C, K, 2^bits)
    nearest = levels.gather(-1, (levels - w.double().unsqueeze(-1)).abs().argmin(-1, keepdim=True))
    assert torch.allclose(out.double(), nearest.squeeze(-1), rtol=1e-6, atol=0)
    assert torch.equal(q.scale, (2 * w.abs().mean(1)))
    assert len(torch.unique(out)) <= 6 * 2**bits


def test_scale_follows_the_current_weights_and_gradient_is_straight_through():
    """The scale is not a parameter: after the weights change the levels move
    with them; the gradient reaches every weight, clipped ones included."""
    w = torch.randn(4, 30)
    q = _calibrated(4, w)
    assert list(q.parameters()) == []
    w2 = (w * 3).requires_grad_()
    out = q(w2)
    assert torch.allclose(out, q(w.detach()) * 3, rtol=1e-6, atol=1e-7)
    out.sum().backward()
    assert torch.equal(w2.grad, torch.ones_like(w2))


def test_integer_codes_and_grid_positions():
    w = torch.randn(3, 50)
    q = _calibrated(3, w)
    codes = q.integer_code(w)
    assert codes.min() >= -4 and codes.max() <= 3 and q.code_range == (-4, 3)
    n, scale = 4, 2 * w.abs().mean(1, keepdim=True)
    assert torch.allclose(q(w), scale * (codes + 0.5) / n)
    # half way between two codes sits on a rounding boundary
    position = q.grid_position(w)
    assert torch.equal(torch.round(position), codes)


def test_an_ofq_checkpoint_is_refused_by_an_lsq_model_naming_both():
    """StatsQ and LSQ weights are different quantizers: a calibrated StatsQ
    state is refused by an LSQ layer, naming both kinds."""
    torch.manual_seed(0)
    ofq = QuantLinear(torch.nn.Linear(8, 4), dict(type='StatsQQuantizer', bits=4), None)
    ofq.weight_quantizer(ofq.weight)
    ofq.weight_quantizer.calculate_qparams()
    lsq = QuantLinear(
        torch.nn.Linear(8, 4), dict(type='LSQQuantizer', bits=4, per_channel=True), None)
    with pytest.raises(ValueError, match=r"kind='statsq'.*kind='uniform'"):
        lsq.load_state_dict(ofq.state_dict())
    assert isinstance(lsq.weight_quantizer, LSQQuantizer)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match='bits must be an int in'):
        StatsQQuantizer(1)
    with pytest.raises(TypeError, match='ch_axis must be an int'):
        StatsQQuantizer(4, ch_axis='0')
