import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixaq_mmdet.quantization import (DEFAULT_ACT_QUANTIZER, DEFAULT_WEIGHT_QUANTIZER,
                                      LogSqrt2Quantizer, QuantConv2d, QuantLinear, QuantMatMul,
                                      UniformQuantizer, enable_calibration, finish_calibration)

QUANT_KEYS = ['calibrated', 'scale', 'zero_point', '_extra_state']


def round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def calibrated_linear() -> QuantLinear:
    layer = QuantLinear.from_float(nn.Linear(12, 6))
    enable_calibration(layer)
    for _ in range(3):
        layer(torch.randn(4, 12))
    finish_calibration(layer)
    return layer


def test_defaults():
    layer = QuantLinear.from_float(nn.Linear(3, 2))
    w, a = layer.weight_quantizer, layer.input_quantizer
    assert (w.bits, w.per_channel, w.symmetric, w.calib, w.static) == (4, True, False,
                                                                       'percentile_mse', True)
    assert (a.bits, a.per_channel, a.symmetric, a.calib, a.static) == (8, False, False,
                                                                       'percentile_mse', False)
    assert dict(DEFAULT_WEIGHT_QUANTIZER)['bits'] == 4 and dict(DEFAULT_ACT_QUANTIZER)['bits'] == 8
    with pytest.raises(TypeError):
        DEFAULT_WEIGHT_QUANTIZER['bits'] = 2


def test_weight_quantizer_configs_default_to_static():
    cfg = dict(type='UniformQuantizer', bits=4, per_channel=True, calib='percentile_mse')
    layer = QuantLinear(nn.Linear(3, 2), cfg, cfg)
    assert layer.weight_quantizer.static and not layer.input_quantizer.static
    assert cfg == dict(type='UniformQuantizer', bits=4, per_channel=True, calib='percentile_mse')
    conv = QuantConv2d(nn.Conv2d(1, 2, 1), dict(cfg, static=False), None)
    assert not conv.weight_quantizer.static
    built = UniformQuantizer(4, calib='percentile_mse')
    assert QuantLinear(nn.Linear(3, 2), built, None).weight_quantizer is built
    assert not built.static


def test_linear_keys_and_parameter_sharing():
    float_layer = nn.Linear(5, 3)
    shared = QuantLinear(float_layer, dict(type='UniformQuantizer', bits=4), None)
    assert shared.weight is float_layer.weight and shared.bias is float_layer.bias
    assert shared.input_quantizer is None
    assert list(
        shared.state_dict()) == ['weight', 'bias'] + [f'weight_quantizer.{k}' for k in QUANT_KEYS]
    copied = QuantLinear(
        float_layer, dict(type='UniformQuantizer', bits=4), None, share_params=False)
    assert copied.weight is not float_layer.weight
    assert torch.equal(copied.weight, float_layer.weight)
    with torch.no_grad():
        copied.weight.add_(1)
    assert not torch.equal(copied.weight, float_layer.weight)
    no_bias = QuantLinear.from_float(nn.Linear(5, 3, bias=False))
    assert no_bias.bias is None and 'bias' not in no_bias.state_dict()
    assert isinstance(shared, nn.Linear)
    with pytest.raises(TypeError, match='QuantLinear needs a float nn.Linear, got QuantLinear'):
        QuantLinear.from_float(shared)


def test_two_layers_share_weight_and_weight_quantizer():
    # Two branches: one weight and weight quantizer, each its own input quantizer.
    float_layer = nn.Linear(4, 4)
    high = QuantLinear(float_layer, DEFAULT_WEIGHT_QUANTIZER, dict(type='UniformQuantizer', bits=8))
    low = QuantLinear(float_layer, high.weight_quantizer, dict(type='UniformQuantizer', bits=4))
    assert low.weight is high.weight and low.weight_quantizer is high.weight_quantizer
    assert low.input_quantizer is not high.input_quantizer


def test_linear_forward_and_float_path():
    float_layer = nn.Linear(12, 6)
    layer = QuantLinear.from_float(float_layer)
    x = torch.randn(4, 12)
    assert torch.equal(layer(x), float_layer(x))  # calibration mode: float, bit for bit
    finish_calibration(layer)
    expected = F.linear(layer.input_quantizer(x), layer.weight_quantizer(layer.weight), layer.bias)
    w_q = torch.fake_quantize_per_channel_affine(float_layer.weight, layer.weight_quantizer.scale,
                                                 layer.weight_quantizer.zero_point, 0, 0, 15)
    x_q = torch.fake_quantize_per_tensor_affine(x, layer.input_quantizer.scale,
                                                layer.input_quantizer.zero_point, 0, 255)
    assert torch.equal(layer(x), expected)
    assert torch.equal(expected, F.linear(x_q, w_q, float_layer.bias))
    assert max(row.unique().numel() for row in w_q) <= 16


def test_calibrated_state_dict_round_trip():
    layer = calibrated_linear()
    assert layer.weight_quantizer.scale.shape == (6, )
    x = torch.randn(5, 12)
    expected = layer(x)
    state = round_trip(layer.state_dict())
    assert state['weight_quantizer.calibrated'].item() is True
    fresh = QuantLinear.from_float(nn.Linear(12, 6))
    assert fresh.weight_quantizer.scale.shape == (6, )  # fixed when the layer is built
    fresh.load_state_dict(state)
    assert fresh.weight_quantizer.is_calibrated and fresh.input_quantizer.is_calibrated
    finish_calibration(fresh)  # nothing observed: keeps the loaded qparams
    assert torch.equal(fresh(x), expected)
    for key, value in fresh.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, state[key]), key
        else:  # the quantizer's settings
            assert value == state[key], key


def test_lsq_state_dict_round_trip():
    cfg = dict(type='LSQQuantizer', bits=4, per_channel=True)
    layer = QuantLinear(nn.Linear(6, 3), cfg, dict(type='LSQQuantizer', bits=4))
    enable_calibration(layer)
    layer(torch.randn(8, 6))
    finish_calibration(layer)
    with torch.no_grad():
        layer.weight_quantizer.scale.mul_(1.1)
        layer.input_quantizer.zero_point.add_(0.4)
    x = torch.randn(2, 6)
    fresh = QuantLinear(nn.Linear(6, 3), cfg, dict(type='LSQQuantizer', bits=4))
    fresh.load_state_dict(round_trip(layer.state_dict()))
    assert isinstance(fresh.weight_quantizer.scale, nn.Parameter)
    assert fresh.weight_quantizer.scale.shape == (3, )
    finish_calibration(fresh)
    assert torch.equal(fresh(x), layer(x))


def test_float_checkpoint_reports_quantizer_keys_missing():
    float_layer = nn.Linear(12, 6)
    layer = QuantLinear.from_float(nn.Linear(12, 6))
    result = layer.load_state_dict(float_layer.state_dict(), strict=False)
    assert sorted(result.missing_keys) == sorted([f'weight_quantizer.{k}' for k in QUANT_KEYS] +
                                                 [f'input_quantizer.{k}' for k in QUANT_KEYS])
    assert result.unexpected_keys == []
    assert torch.equal(layer.weight, float_layer.weight)
    assert not layer.weight_quantizer.is_calibrated
    with pytest.raises(RuntimeError, match=r'Missing key\(s\).*weight_quantizer.scale'):
        layer.load_state_dict(float_layer.state_dict())
    # A float checkpoint into a calibrated model keeps the qparams.
    calibrated = calibrated_linear()
    scale = calibrated.weight_quantizer.scale.clone()
    calibrated.load_state_dict(float_layer.state_dict(), strict=False)
    assert calibrated.weight_quantizer.is_calibrated
    assert torch.equal(calibrated.weight_quantizer.scale, scale)


def test_conv2d():
    float_conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode='reflect')
    conv = QuantConv2d.from_float(float_conv)
    assert conv.weight is float_conv.weight
    assert isinstance(conv, nn.Conv2d) and conv.padding_mode == 'reflect'
    x = torch.randn(2, 4, 9, 9)
    assert torch.equal(conv(x), float_conv(x))
    finish_calibration(conv)
    assert conv.weight_quantizer.scale.shape == (6, )
    w_q = torch.fake_quantize_per_channel_affine(float_conv.weight, conv.weight_quantizer.scale,
                                                 conv.weight_quantizer.zero_point, 0, 0, 15)
    x_q = conv.input_quantizer(x)
    reference = F.conv2d(
        F.pad(x_q, (1, 1, 1, 1), mode='reflect'), w_q, float_conv.bias, stride=2, groups=2)
    assert torch.equal(conv(x), reference)
    assert not torch.equal(conv(x), float_conv(x))
    copied = QuantConv2d(float_conv, DEFAULT_WEIGHT_QUANTIZER, None, share_params=False)
    assert copied.weight is not float_conv.weight and copied.input_quantizer is None
    fresh = QuantConv2d.from_float(
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode='reflect'))
    fresh.load_state_dict(round_trip(conv.state_dict()))
    finish_calibration(fresh)
    assert torch.equal(fresh(x), conv(x))


def test_matmul():
    matmul = QuantMatMul(LogSqrt2Quantizer(4), dict(type='UniformQuantizer', bits=8))
    attn = torch.randn(2, 3, 7, 7).softmax(-1)
    v = torch.randn(2, 3, 7, 5)
    assert torch.equal(matmul(attn, v), attn @ v)
    finish_calibration(matmul)
    expected = matmul.quantizer_a(attn) @ matmul.quantizer_b(v)
    assert torch.equal(matmul(attn, v), expected)
    assert not torch.equal(expected, attn @ v)
    assert sorted(matmul.state_dict()) == sorted(
        ['quantizer_a.calibrated', 'quantizer_a.scale', 'quantizer_a._extra_state'] +
        [f'quantizer_b.{k}' for k in QUANT_KEYS])
    plain = QuantMatMul(None, UniformQuantizer(4))
    q, k = torch.randn(2, 7, 5), torch.randn(2, 5, 7)
    plain(q, k)
    finish_calibration(plain)
    assert torch.equal(plain(q, k), q @ plain.quantizer_b(k))
