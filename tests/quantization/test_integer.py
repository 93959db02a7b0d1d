"""Integer execution: exact integer products of the quantizers' codes, the
fake-quantized layer's output within float rounding, the errors that refuse
what cannot run on integer kernels."""
import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixaq_mmdet.quantization import (Codes, IntegerGrid, LogSqrt2Quantizer, LSQQuantizer,
                                      QuantConv2d, QuantLinear, StatsQQuantizer,
                                      TwinUniformQuantizer, UniformQuantizer, enable_calibration,
                                      finish_calibration, integer_kernels, quantize_codes,
                                      to_fake_quant, to_integer)
from mixaq_mmdet.quantization.kernels import (PLANE_RADIX, SATURATION_FREE_WEIGHT,
                                              cpu_has_int8_dot_product, get_kernel, split_planes)

KERNELS = ('onednn', 'int_mm')
CPU = torch.device('cpu')


def _grid(bits: int, signed: bool) -> tuple:
    """``(quant_min, quant_max)`` of a signed or unsigned ``bits``-bit grid."""
    return (-2**(bits - 1), 2**(bits - 1) - 1) if signed else (0, 2**bits - 1)


def _codes_and_weight(a_bits, a_signed, w_bits, w_signed, m=37, k=96, n=24, seed=0):
    """Random activation codes with their zero point (as uint8 codes on an
    :class:`IntegerGrid`) and weight integers ``code - zero_point`` per channel,
    both covering their whole grids (extremes included)."""
    g = torch.Generator().manual_seed(seed)
    a_min, a_max = _grid(a_bits, a_signed)
    codes = torch.randint(a_min, a_max + 1, (m, k), generator=g)
    codes[0], codes[1] = a_min, a_max
    zero_point = 0 if a_signed else int(torch.randint(a_min, a_max + 1, (1, ), generator=g))
    grid = IntegerGrid.create(torch.tensor([0.037]), zero_point, a_min, a_max)
    w_min, w_max = _grid(w_bits, w_signed)
    w_codes = torch.randint(w_min, w_max + 1, (n, k), generator=g)
    w_codes[0], w_codes[1] = w_min, w_max
    w_zero = torch.zeros(
        n, 1, dtype=torch.long) if w_signed else torch.randint(
            w_min, w_max + 1, (n, 1), generator=g)
    w_zero[2], w_zero[3] = w_min, w_max  # the widest integers: code - zero at +-(2^b - 1)
    u8 = (codes - a_min).to(torch.uint8)
    return u8, grid, (w_codes - w_zero).to(torch.int32)


@pytest.mark.parametrize('kernel', KERNELS)
@pytest.mark.parametrize('w_signed', [False, True])
@pytest.mark.parametrize('a_signed', [False, True])
@pytest.mark.parametrize('bits', range(2, 9))
def test_accumulators_are_the_exact_products_of_the_codes(bits, a_signed, w_signed, kernel):
    """For every bit width of activations and weights (the other at 8 and at
    the same bits), signed and unsigned grids, each kernel's accumulators
    equal the product of the codes computed in float64."""
    chosen = get_kernel(kernel, CPU)
    for a_bits, w_bits in ((bits, bits), (bits, 8), (8, bits)):
        u8, grid, values = _codes_and_weight(a_bits, a_signed, w_bits, w_signed)
        exact = (u8.double() - grid.zero_point) @ values.double().t()
        packed = chosen.pack(values, torch.ones(values.shape[0]), None)
        accumulators = chosen.accumulate(u8, grid.zero_point, packed)
        assert accumulators.dtype == torch.int64
        assert torch.equal(accumulators.double(), exact), (a_bits, w_bits)


def test_weight_planes_recompose_and_stay_within_their_limit():
    values = torch.arange(-255, 256, dtype=torch.int32).reshape(1, -1)
    for limit in (SATURATION_FREE_WEIGHT, 127, 8):
        planes = split_planes(values, limit)
        assert planes.dtype == torch.int8 and int(planes.abs().max()) <= max(limit, 16)
        radix = PLANE_RADIX**torch.arange(len(planes) - 1, -1, -1)
        assert torch.equal((planes.long() * radix[:, None, None]).sum(0), values.long())
    assert len(split_planes(torch.tensor([[15, -15]]), SATURATION_FREE_WEIGHT)) == 1
    assert len(split_planes(torch.tensor([[255, -255]]), 127)) == 2


def test_weights_beyond_the_saturation_free_range_are_split_without_vnni():
    """oneDNN's uint8 x int8 kernels on x86 CPUs without VNNI sum pairs of
    products in int16 with saturation: a weight beyond +-64 is split into
    planes there (and is exact either way, see the accumulator test)."""
    chosen = get_kernel('onednn', CPU)
    packed = chosen.pack(torch.tensor([[100, -3]], dtype=torch.int32), torch.ones(1), None)
    assert len(packed.planes) == (1 if cpu_has_int8_dot_product() else 2)
    four_bit = chosen.pack(torch.tensor([[15, -15]], dtype=torch.int32), torch.ones(1), None)
    assert len(four_bit.planes) == 1


def test_cpu_flags_decide_the_int8_dot_product(tmp_path):
    with_vnni, without = tmp_path / 'vnni', tmp_path / 'avx2'
    with_vnni.write_text('processor : 0\nflags : fpu avx2 avx512f avx512_vnni\n')
    without.write_text('processor : 0\nflags : fpu avx2 fma\n')
    assert cpu_has_int8_dot_product(str(with_vnni))
    assert not cpu_has_int8_dot_product(str(without))
    assert not cpu_has_int8_dot_product(str(tmp_path / 'missing'))


def test_codes_are_the_fake_quantizers_integers():
    """The uint8 codes of an activation are the integers its fake-quantized
    values stand for: dequantized, they are those values bit for bit."""
    for cls, symmetric in ((UniformQuantizer, False), (UniformQuantizer, True), (LSQQuantizer,
                                                                                 False)):
        for bits in (2, 4, 8):
            q = cls(bits, symmetric=symmetric, calib='minmax')
            q(torch.randn(1000) * 3 + 0.5)
            q.calculate_qparams()
            q.enable_fake_quant()
            q.disable_observer()
            x = torch.randn(64, 49) * 4
            with torch.no_grad():
                codes = quantize_codes(x, q.integer_grid())
                assert codes.values.dtype == torch.uint8
                assert torch.equal(codes.dequantize(), q(x)), (cls, bits, symmetric)


def _calibrated_linear(weight_cfg, act_cfg, in_features=96, out_features=40, bias=True, seed=0):
    torch.manual_seed(seed)
    layer = QuantLinear(nn.Linear(in_features, out_features, bias=bias), weight_cfg, act_cfg)
    enable_calibration(layer)
    with torch.no_grad():
        for _ in range(2):
            layer(torch.randn(64, in_features) * 2 + 0.3)
    finish_calibration(layer)
    return layer.eval()


def _assert_within_float_rounding(actual, expected):
    """Equal up to float32 rounding: 1e-5 of the output's magnitude."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = expected.abs().max()
    assert ((actual - expected).abs() <= 1e-5 * scale).all(), (actual - expected).abs().max()


WEIGHT_CFGS = {
    'uniform': dict(type='UniformQuantizer', per_channel=True, calib='minmax'),
    'symmetric': dict(type='UniformQuantizer', per_channel=True, symmetric=True, calib='minmax'),
    'lsq': dict(type='LSQQuantizer', per_channel=True, calib='minmax'),
    'statsq': dict(type='StatsQQuantizer'),
    'per_tensor': dict(type='UniformQuantizer', calib='minmax'),
}
ACT_CFGS = {
    'uniform': dict(type='UniformQuantizer', calib='percentile_mse'),
    'symmetric': dict(type='UniformQuantizer', symmetric=True, calib='minmax'),
    'lsq': dict(type='LSQQuantizer', calib='minmax'),
}


@pytest.mark.parametrize('kernel', KERNELS)
@pytest.mark.parametrize('weight', list(WEIGHT_CFGS))
@pytest.mark.parametrize('act', list(ACT_CFGS))
@pytest.mark.parametrize('bits', [(2, 2), (4, 4), (4, 8), (8, 8), (3, 6)])
def test_integer_layer_equals_the_fake_quantized_layer(bits, act, weight, kernel):
    w_bits, a_bits = bits
    layer = _calibrated_linear(
        dict(WEIGHT_CFGS[weight], bits=w_bits), dict(ACT_CFGS[act], bits=a_bits))
    x = torch.randn(5, 7, 96) * 2
    with torch.no_grad():
        expected = layer(x)
        to_integer(layer, kernel)
        assert layer.integer_kernel == kernel
        _assert_within_float_rounding(layer(x), expected)
        to_fake_quant(layer)
        assert torch.equal(layer(x), expected)


@pytest.mark.parametrize('kernel', KERNELS)
def test_fused_epilogues_equal_their_torch_ops(kernel):
    """GELU, the requantization to the next layer's codes and the in-place
    residual add, fused into the kernel (oneDNN) or as torch ops (int_mm),
    equal the fake-quantized computation: values within float rounding, codes
    equal except where float rounding moves a value across a rounding boundary."""
    fc1 = _calibrated_linear(WEIGHT_CFGS['uniform'] | dict(bits=4),
                             ACT_CFGS['uniform'] | dict(bits=8))
    out_q = UniformQuantizer(8, calib='minmax')
    with torch.no_grad():
        x = torch.randn(300, 96)
        out_q(F.gelu(fc1(x)))
        out_q.calculate_qparams()
        out_q.disable_observer()
        out_q.enable_fake_quant()
        expected = out_q(F.gelu(fc1(x)))
        residual = torch.randn(300, 40)
        expected_sum = residual + fc1(x)
        to_integer(fc1, kernel)
        codes = fc1.integer_linear(
            x, fc1.input_quantizer, activation=nn.GELU(), output_quantizer=out_q)
        assert isinstance(codes, Codes) and codes.values.dtype == torch.uint8
        differ = (codes.dequantize() != expected).float().mean()
        assert differ < 0.01, differ
        assert ((codes.dequantize() - expected).abs() <= out_q.scale * 1.001).all()
        gelu = fc1.integer_linear(x, fc1.input_quantizer, activation=nn.GELU())
        _assert_within_float_rounding(gelu, F.gelu(fc1(x)))
        target = residual.clone()
        assert fc1.integer_linear(x, fc1.input_quantizer, residual=target) is target
        _assert_within_float_rounding(target, expected_sum)


@pytest.mark.parametrize('kernel', KERNELS)
def test_patch_embedding_runs_as_one_product_over_the_patches(kernel):
    torch.manual_seed(0)
    conv = QuantConv2d(
        nn.Conv2d(3, 16, 4, stride=4), dict(WEIGHT_CFGS['uniform'], bits=4),
        dict(ACT_CFGS['uniform'], bits=8))
    enable_calibration(conv)
    with torch.no_grad():
        conv(torch.randn(2, 3, 64, 64))
    finish_calibration(conv)
    conv.eval()
    x = torch.randn(2, 3, 30, 42)  # not patch multiples: the remainder is dropped, as a conv does
    with torch.no_grad():
        expected = conv(x)
        to_integer(conv, kernel)
        _assert_within_float_rounding(conv(x), expected)
    assert integer_kernels(conv) == {'': kernel}


def test_an_integer_model_is_copied_pickled_and_repacked():
    """A converted layer copies and pickles (its packed weight is packed again),
    and packs again after its weight changes, so it never computes with stale
    integers; ``integer_kernels`` reports how each layer runs."""
    layer = _calibrated_linear(
        dict(WEIGHT_CFGS['uniform'], bits=8), dict(ACT_CFGS['uniform'], bits=8))
    x = torch.randn(16, 96)
    to_integer(layer)
    with torch.no_grad():
        expected = layer(x)
        assert torch.equal(copy.deepcopy(layer)(x), expected)
        buffer = io.BytesIO()
        torch.save(layer, buffer)
        buffer.seek(0)
        assert torch.equal(torch.load(buffer, weights_only=False)(x), expected)
        assert torch.equal(pickle.loads(pickle.dumps(layer))(x), expected)
        # on an asymmetric 8-bit grid one side of the zero point is >= 128 codes
        # away, beyond int8: two planes, with an int8 dot product (VNNI) or not
        assert integer_kernels(layer) == {'': 'onednn (2 weight planes)'}
        layer.weight.mul_(2)
        reference = copy.deepcopy(layer)
        to_fake_quant(reference)
        _assert_within_float_rounding(layer(x), reference(x))
        assert not torch.allclose(layer(x), expected)


def test_state_dict_is_the_fake_quantized_models():
    layer = _calibrated_linear(
        dict(WEIGHT_CFGS['uniform'], bits=4), dict(ACT_CFGS['uniform'], bits=8))
    before = layer.state_dict()
    to_integer(layer)
    after = layer.state_dict()
    assert list(before) == list(after)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_quantization_switched_off_computes_the_float_layer():
    """``disable_quantization`` asks for the float model: an integer layer then
    computes in float, while observing it computes the fake-quantized function."""
    from mixaq_mmdet.quantization import disable_quantization, quantization_disabled
    layer = _calibrated_linear(
        dict(WEIGHT_CFGS['uniform'], bits=4), dict(ACT_CFGS['uniform'], bits=8))
    to_integer(layer)
    x = torch.randn(8, 96)
    with torch.no_grad(), quantization_disabled(layer):
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    disable_quantization(layer)
    assert not layer.runs_integer(layer.input_quantizer)


def _errors_layer():
    return _calibrated_linear(
        dict(WEIGHT_CFGS['uniform'], bits=4), dict(ACT_CFGS['uniform'], bits=8))


def test_training_mode_is_refused():
    layer = _errors_layer().train()
    with pytest.raises(RuntimeError, match='training mode .*call model.eval'):
        to_integer(layer)
    layer.eval()
    to_integer(layer)
    layer.train()
    with pytest.raises(RuntimeError, match='no gradient: integer execution is for inference'):
        layer(torch.randn(2, 96))
    layer.eval()
    with pytest.raises(RuntimeError, match='no gradient'):
        layer(torch.randn(2, 96, requires_grad=True))


def test_an_uncalibrated_model_is_refused():
    layer = QuantLinear.from_float(nn.Linear(8, 4)).eval()
    layer.weight_quantizer.disable_observer()
    layer.weight_quantizer.enable_fake_quant()
    layer.input_quantizer.disable_observer()
    layer.input_quantizer.enable_fake_quant()
    with pytest.raises(RuntimeError, match='is not calibrated .*calibrate it'):
        to_integer(layer)
    with pytest.raises(ValueError, match='has no quantizers'):
        to_integer(nn.Linear(3, 2).eval())


def test_a_model_that_is_not_quantizing_is_refused():
    layer = _errors_layer()
    layer.input_quantizer.enable_observer()
    with pytest.raises(RuntimeError, match="input_quantizer' is not quantizing .*observer on"):
        to_integer(layer)


@pytest.mark.parametrize(
    'quantizer, match',
    [(LogSqrt2Quantizer(4), r"LogSqrt2Quantizer 'input_quantizer' \(log_sqrt2\) has no uniform "
      'integer codes'),
     (TwinUniformQuantizer(4, mode='gelu'),
      r"TwinUniformQuantizer 'input_quantizer' \(twin_uniform\) has no uniform integer codes"),
     (UniformQuantizer(8, per_channel=True, ch_axis=-1),
      "'input_quantizer': integer execution takes one scale and zero point per activation "
      r'tensor; this quantizer is per channel \(ch_axis=-1\)')])
def test_a_quantizer_kind_without_integer_codes_is_refused_naming_its_position(quantizer, match):
    torch.manual_seed(0)
    layer = QuantLinear(nn.Linear(16, 4), dict(WEIGHT_CFGS['uniform'], bits=4), quantizer)
    enable_calibration(layer)
    with torch.no_grad():
        layer(torch.rand(8, 16))
    finish_calibration(layer)
    with pytest.raises(ValueError, match=match):
        to_integer(layer.eval())


def test_codes_that_do_not_fit_the_kernels_are_refused_naming_position_and_bits():
    """An activation grid of more than 256 levels has no uint8 codes."""

    class WideGrid(UniformQuantizer):

        def __init__(self, bits, **kwargs):
            super().__init__(bits, **kwargs)
            self.quant_max = 2 * self.quant_max + 1  # a 9-bit range under an 8-bit name

    layer = QuantLinear(
        nn.Linear(16, 4), dict(WEIGHT_CFGS['uniform'], bits=4), WideGrid(8, calib='minmax'))
    enable_calibration(layer)
    with torch.no_grad():
        layer(torch.rand(8, 16))
    finish_calibration(layer)
    with pytest.raises(
            ValueError,
            match=r"WideGrid 'input_quantizer': 8-bit codes \[0, 511\] do not fit the "
            r"kernels' uint8 after the zero-point shift \(256 levels\)"):
        to_integer(layer.eval())


def test_a_weight_quantizer_without_integer_codes_is_refused():
    float_layer = nn.Linear(16, 4)
    with torch.no_grad():
        float_layer.weight.uniform_(0, 1)  # what a log-sqrt(2) quantizer takes
    layer = QuantLinear(float_layer, LogSqrt2Quantizer(4), dict(ACT_CFGS['uniform'], bits=8))
    enable_calibration(layer)
    with torch.no_grad():
        layer(torch.rand(8, 16))
    finish_calibration(layer)
    with pytest.raises(
            ValueError,
            match=r"LogSqrt2Quantizer 'weight_quantizer' \(log_sqrt2\) "
            'has no integer weight codes'):
        to_integer(layer.eval())


def test_a_layer_without_input_quantizer_and_an_overlapping_conv_are_refused():
    torch.manual_seed(0)
    model = nn.Sequential(
        QuantLinear(nn.Linear(8, 8), dict(WEIGHT_CFGS['uniform'], bits=4), None),
        QuantConv2d(
            nn.Conv2d(8, 8, 3, padding=1), dict(WEIGHT_CFGS['uniform'], bits=4),
            dict(ACT_CFGS['uniform'], bits=8)))
    enable_calibration(model)
    with torch.no_grad():
        model[0](torch.randn(4, 8))
        model[1](torch.randn(1, 8, 6, 6))
    finish_calibration(model)
    with pytest.raises(
            ValueError, match="QuantLinear '0' has no input quantizer and no module "
            'declares one'):
        to_integer(model.eval())
    with pytest.raises(
            ValueError,
            match=r"QuantConv2d '1': kernel \(3, 3\), stride \(1, 1\).*no "
            'integer kernel'):
        to_integer(model[1:].eval())
    assert integer_kernels(model) == {'0': None, '1': None}  # nothing converted


def test_unknown_kernels_and_devices_are_refused():
    with pytest.raises(ValueError, match="integer kernel must be 'auto' or one of"):
        get_kernel('fbgemm', CPU)
    with pytest.raises(ValueError, match="'onednn' integer kernel runs on CPU, not on meta"):
        get_kernel('onednn', torch.device('meta'))
    assert get_kernel('auto', torch.device('meta')).name == 'int_mm'


def test_int_mm_kernel_runs_on_another_device_type():
    """The ``int_mm`` path (CUDA's) on the ``meta`` device: nothing in it reads
    values on the host, and the shapes and dtypes come out right."""
    chosen = get_kernel('auto', torch.device('meta'))
    u8, grid, values = _codes_and_weight(8, False, 8, False, m=5)
    packed = chosen.pack(values, torch.rand(values.shape[0]), torch.randn(values.shape[0]))
    meta = torch.device('meta')
    packed = packed._replace(
        packed=[p.to(meta) for p in packed.packed],
        step=packed.step.to(meta),
        bias=packed.bias.to(meta),
        extra=packed.extra.to(meta))
    out = chosen.linear(u8.to(meta), grid.to(meta), packed, activation=nn.GELU())
    assert out.device.type == 'meta' and out.shape == (5, values.shape[0])
    assert out.dtype == torch.float32
    codes = chosen.linear(u8.to(meta), grid.to(meta), packed, output=grid.to(meta))
    assert codes.values.dtype == torch.uint8 and codes.values.shape == (5, values.shape[0])


def test_statsq_weights_are_odd_integers():
    q = StatsQQuantizer(4)
    w = torch.randn(6, 32)
    q(w)
    q.calculate_qparams()
    q.disable_observer()
    q.enable_fake_quant()
    values, step = q.integer_weight(w)
    assert (values.remainder(2) == 1).all() and int(values.abs().max()) <= 15
    _assert_within_float_rounding(step[:, None] * values, q(w))
