"""What a quantizer is travels with its state; a calibrated state of another quantizer
is refused when loaded."""
import re

import pytest
import torch
from torch import nn

from mixaq_mmdet.quantization import (LogSqrt2Quantizer, LSQQuantizer, QuantLinear,
                                      UniformQuantizer, enable_calibration, finish_calibration)
from mixaq_mmdet.quantization.base import decode_settings


def calibrated(layer: nn.Module, x: torch.Tensor) -> nn.Module:
    enable_calibration(layer)
    layer(x)
    finish_calibration(layer)
    return layer


def model(bits: int = 8, act: str = 'UniformQuantizer', **kwargs) -> nn.Module:
    torch.manual_seed(0)
    layer = QuantLinear(
        nn.Linear(4, 3), dict(type='UniformQuantizer', bits=4, per_channel=True),
        dict(type=act, bits=bits, **kwargs))
    return nn.Sequential(layer)


def test_settings_are_saved_and_survive_weights_only_loading(tmp_path):
    state = calibrated(model(), torch.randn(8, 4)).state_dict()
    # tensors only: mmengine broadcasts every state_dict entry when a distributed run starts
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert decode_settings(state['0.input_quantizer._extra_state']) == dict(
        kind='uniform', bits=8, symmetric=False, per_channel=False, ch_axis=None)
    assert decode_settings(state['0.weight_quantizer._extra_state'])['per_channel'] is True
    torch.save(state, tmp_path / 'q.pth')
    loaded = torch.load(tmp_path / 'q.pth', weights_only=True)
    fresh = model()
    fresh.load_state_dict(loaded)
    assert fresh[0].input_quantizer.is_calibrated
    assert torch.equal(fresh[0].input_quantizer.scale, loaded['0.input_quantizer.scale'])


@pytest.mark.parametrize('other, diff', [
    (dict(bits=4), 'bits=8 (model: 4)'),
    (dict(symmetric=True), 'symmetric=False (model: True)'),
    (dict(per_channel=True, ch_axis=-1), 'per_channel=False (model: True)'),
])
def test_calibrated_state_of_another_setting_is_refused(other, diff):
    state = calibrated(model(), torch.randn(8, 4)).state_dict()
    target = model(**dict(dict(bits=8), **other))
    with pytest.raises(
            ValueError,
            match=rf"UniformQuantizer '0.input_quantizer': the "
            rf"checkpoint was calibrated for kind='uniform', bits=8, .*this "
            rf"model has .*\(.*{re.escape(diff)}.*\); evaluate the checkpoint with the "
            rf"config it was calibrated with"):
        target.load_state_dict(state)


def test_kind_mismatch_is_refused():
    softmax = LogSqrt2Quantizer(4)
    softmax(torch.rand(5, 5).softmax(-1))
    softmax.calculate_qparams()
    with pytest.raises(ValueError, match=r"kind='log_sqrt2' \(model: 'uniform'\)"):
        UniformQuantizer(4).load_state_dict(softmax.state_dict())


def test_a_ptq_state_initializes_an_lsq_quantizer():
    state = calibrated(model(4), torch.randn(8, 4)).state_dict()
    lsq = model(4, act='LSQQuantizer')
    lsq.load_state_dict(state)
    q = lsq[0].input_quantizer
    assert isinstance(q, LSQQuantizer) and q.is_calibrated
    assert torch.equal(q.scale.data, state['0.input_quantizer.scale'])


def test_settings_saved_as_a_dict_by_an_earlier_release_still_load():
    state = calibrated(model(), torch.randn(8, 4)).state_dict()
    for key in [k for k in state if k.endswith('_extra_state')]:
        state[key] = decode_settings(state[key])
    fresh = model()
    fresh.load_state_dict(state)
    assert fresh[0].input_quantizer.is_calibrated
    with pytest.raises(ValueError, match=r'bits=8 \(model: 4\)'):
        model(4).load_state_dict(state)


def test_calibrated_state_without_settings_is_refused():
    state = calibrated(model(), torch.randn(8, 4)).state_dict()
    del state['0.input_quantizer._extra_state']
    with pytest.raises(
            ValueError,
            match="'0.input_quantizer': the checkpoint holds "
            'calibrated qparams but not the settings'):
        model().load_state_dict(state, strict=False)


def test_an_uncalibrated_state_of_another_setting_carries_nothing():
    """E.g. the unused low branch of a uniform W4A4 model loaded into W4 A4/A2."""
    state = model(4).state_dict()
    target = model(2)
    target.load_state_dict(state)
    q = target[0].input_quantizer
    assert q.bits == 2 and not q.is_calibrated
