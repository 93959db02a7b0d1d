"""The fused fake-quantization kernels, the MixA-Q backbone and its integer
execution on a GPU, against eager on the GPU and against the CPU
(``tools/gpu_check.sh`` runs this file on a borrowed GPU; without CUDA every
test is skipped).

Fused (``fused_kernels(True)``: compiled by inductor, Triton on the GPU) and
eager (``False``) compute the same float32 operations: forward values are equal
bit for bit, and so are the log-sqrt(2) levels, the table's; the scale and
zero-point gradients are sums in another order, within 1e-5 of the sum of their
terms' magnitudes (as ``tests/quantization/test_recompute.py`` checks on CPU).
The GPU's numbers are the CPU's within float32 rounding; a fake-quantized
backbone's outputs within 2% (a product rounded differently moves a value
across a rounding boundary now and then). Products and convolutions run in
full float32 (no TF32) in these tests.
"""
import copy
import math

import pytest
import torch
from mmdet.models.backbones import SwinTransformer

from mixaq_mmdet.models import MixAQSwinTransformer
from mixaq_mmdet.quantization import enable_calibration, finish_calibration, to_integer
from mixaq_mmdet.quantization.numerics import (fake_quantize, fused_kernels, log_sqrt2_tables,
                                               log_sqrt2_values)
from .models.test_integer_backbone import MOVED_OUTPUTS, _block_inputs, _calibrated

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')

CUDA = torch.device('cuda')
CPU = torch.device('cpu')
#: The benchmark's nano Swin (tests/models/test_mixaq_swin.py): 4 stages, 7x7 windows.
NANO = dict(
    embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7, drop_path_rate=0.0)
QUANTIZERS = dict(
    act_quantizer=dict(type='LSQQuantizer', calib='minmax'),
    weight_quantizer=dict(type='LSQQuantizer', per_channel=True, calib='minmax'),
    softmax_quantizer=dict(type='LogSqrt2Quantizer', calib='percentile_mse'))


@pytest.fixture(autouse=True)
def full_float32():
    """No TF32: cuDNN's default would round the patch embedding's float32
    inputs to 10 mantissa bits, which is not the CPU's arithmetic."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---- LSQ fake quantization -------------------------------------------------------------------


def _lsq_case(per_channel: bool, dtype: torch.dtype):
    """Activations of 96 channels of growing range, a step size that clamps
    some of them, a fractional zero point, a weighting of the output."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 49, 96, generator=generator) * torch.linspace(0.2, 3.0, 96)
    scale = torch.full((96, ) if per_channel else (1, ), 0.2)
    weight = torch.randn(x.shape, generator=generator)
    return x.to(dtype), scale, torch.full_like(scale, 7.3), weight


def _lsq(case, per_channel: bool, device: torch.device, mode):
    """Output, input gradient, scale and zero-point gradients, and the
    magnitude bounds of the two sums, of ``fake_quantize`` on ``device``."""
    x, scale, zero_point, weight = (t.to(device) for t in case)
    x = x.clone().requires_grad_()
    scale, zero_point = scale.clone().requires_grad_(), zero_point.clone().requires_grad_()
    factor = 1.0 / math.sqrt(x.numel() // scale.numel() * 15)
    with fused_kernels(mode):
        y = fake_quantize(x, scale, zero_point, 0, 15, -1 if per_channel else None, factor)
        (y.float() * weight).sum().backward()
    magnitude = weight.abs().sum((0, 1) if per_channel else (0, 1, 2)) * factor
    bounds = (1e-5 * magnitude * 15, 1e-5 * magnitude * scale.detach())
    return (y.detach(), x.grad, scale.grad, zero_point.grad), bounds


def _within(a: torch.Tensor, b: torch.Tensor, bound: torch.Tensor, what: str) -> None:
    a, b, bound = a.cpu(), b.cpu(), bound.cpu()
    worst = float(((a - b).abs() - bound).max())
    assert worst <= 0, f'{what}: off by up to {worst:.3g} beyond the bound'


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize('per_channel', [False, True])
def test_fused_fake_quantize_is_eager_on_cuda(per_channel, dtype):
    case = _lsq_case(per_channel, dtype)
    (y_f, gx_f, gs_f, gz_f), _ = _lsq(case, per_channel, CUDA, True)
    (y_e, gx_e, gs_e, gz_e), (bound_s, bound_z) = _lsq(case, per_channel, CUDA, False)
    assert y_f.dtype == dtype and torch.equal(y_f, y_e)
    assert torch.equal(gx_f, gx_e)
    _within(gs_f, gs_e, bound_s, 'scale gradient')
    _within(gz_f, gz_e, bound_z, 'zero-point gradient')
    assert (gs_f != 0).all() and (gz_f != 0).any()


@pytest.mark.parametrize('per_channel', [False, True])
def test_fake_quantize_on_cuda_is_the_cpus(per_channel):
    case = _lsq_case(per_channel, torch.float32)
    (y_g, gx_g, gs_g, gz_g), _ = _lsq(case, per_channel, CUDA, True)
    (y_c, gx_c, gs_c, gz_c), (bound_s, bound_z) = _lsq(case, per_channel, CPU, False)
    torch.testing.assert_close(y_g.cpu(), y_c, rtol=0, atol=1e-6)
    torch.testing.assert_close(gx_g.cpu(), gx_c, rtol=0, atol=1e-6)
    _within(gs_g, gs_c, bound_s, 'scale gradient')
    _within(gz_g, gz_c, bound_z, 'zero-point gradient')


# ---- log-sqrt(2) ------------------------------------------------------------------------------


def _log_sqrt2_inputs(boundaries: torch.Tensor, top: float = 1.0) -> torch.Tensor:
    """Random probabilities, values above the top, zeros, subnormals, every
    boundary (times ``top``) and its neighbouring floats."""
    generator = torch.Generator().manual_seed(0)
    scaled = (boundaries * top).float()
    return torch.cat([
        scaled,
        torch.nextafter(scaled, torch.tensor(9.0)),
        torch.nextafter(scaled, torch.tensor(0.0)),
        torch.rand(20000, generator=generator).pow(8),
        torch.rand(100, generator=generator) * 3,
        torch.zeros(3),
        torch.tensor([1e-40, 1e-45, 1.0, 2.0]), boundaries,
        torch.nextafter(boundaries, torch.tensor(9.0)),
        torch.nextafter(boundaries, torch.tensor(0.0))
    ])


@pytest.mark.parametrize('top', [None, 0.37])
@pytest.mark.parametrize('bits', [2, 4, 8])  # 8: boundaries below the normal floats
def test_log_sqrt2_levels_on_cuda_are_the_table(bits, top):
    """Fused and eager on the GPU give the table's level for every input (of
    ``x / top``, times ``top``), as the CPU does."""
    boundaries, levels = (t.float() for t in log_sqrt2_tables(bits))
    x = _log_sqrt2_inputs(boundaries, 1.0 if top is None else top)
    top_t = None if top is None else torch.tensor([top])
    scaled = x if top_t is None else x / top_t
    table = levels[len(boundaries) - torch.searchsorted(boundaries, scaled)]
    table = table if top_t is None else table * top_t
    args = [t.to(CUDA) for t in (x, boundaries, levels)]
    top_cuda = None if top_t is None else top_t.to(CUDA)
    with fused_kernels(True):
        fused = log_sqrt2_values(*args, top_cuda)
    with fused_kernels(False):
        eager = log_sqrt2_values(*args, top_cuda)
    assert torch.equal(fused, eager)
    assert torch.equal(fused.cpu(), table)
    with fused_kernels(False):
        assert torch.equal(log_sqrt2_values(x, boundaries, levels, top_t), table)


# ---- the backbone -----------------------------------------------------------------------------


def _float_pair(low):
    """mmdet's Swin and MixA-Q's (quant=False) with the same weights, eval."""
    torch.manual_seed(0)
    ref = SwinTransformer(**NANO)
    ref.init_weights()
    model = MixAQSwinTransformer(**NANO, quant=False, low_bit_ratios=low)
    model.load_state_dict(ref.state_dict(), strict=False)
    ref.eval()
    return ref, model.eval()


def _quantized(low=0.5) -> MixAQSwinTransformer:
    """A fake-quantized nano Swin calibrated on CPU at ``low`` (both branches
    reached), eval; eager on CPU, fused once moved to the GPU."""
    torch.manual_seed(0)
    model = MixAQSwinTransformer(
        **NANO, quant=True, low_bit_ratios=low, fused_kernels=False, **QUANTIZERS)
    model.eval()
    enable_calibration(model)
    with torch.no_grad():
        model(torch.randn(2, 3, 320, 320))  # 2x2 windows in the last stage
    finish_calibration(model)
    return model


def _max_diff(outs_a, outs_b) -> float:
    return max(float((a.cpu() - b.cpu()).abs().max()) for a, b in zip(outs_a, outs_b))


def _relative_error(outs_a, outs_b) -> float:
    return max(
        float((a.cpu().float() - b.cpu().float()).norm() / b.cpu().float().norm())
        for a, b in zip(outs_a, outs_b))


@pytest.mark.parametrize('low', [0.0, 0.5])
def test_float_backbone_on_cuda_is_mmdets_and_the_cpus(low):
    ref, model = _float_pair(low)
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        on_cpu = model(x)
        ref, model = ref.to(CUDA), model.to(CUDA)
        on_cuda = model(x.to(CUDA))
        assert _max_diff(ref(x.to(CUDA)), on_cuda) <= 1e-5
    assert _max_diff(on_cuda, on_cpu) <= 1e-4


def _step(model, x, fused):
    """Outputs and every parameter's gradient of a weighted sum of the outputs."""
    model.fused_kernels = fused
    model.zero_grad(set_to_none=True)
    outs = model(x)
    sum((o * torch.linspace(-1, 1, o.numel(), device=o.device).view_as(o)).sum()
        for o in outs).backward()
    return [o.detach() for o in outs], {n: p.grad for n, p in model.named_parameters()}


def test_fake_quant_backbone_fused_is_eager_on_cuda():
    """A calibrated quantized backbone on the GPU: fused and eager give the
    same outputs, in eval and in a training forward, and the same gradients
    (the step sizes' within their sums' rounding)."""
    model = _quantized().to(CUDA)
    x = torch.randn(2, 3, 224, 300, device=CUDA)
    with torch.no_grad():
        model.fused_kernels = True
        fused = model(x)
        model.fused_kernels = False
        assert all(torch.equal(a, b) for a, b in zip(fused, model(x)))
    model.train()
    outs_f, grads_f = _step(model, x, True)
    outs_e, grads_e = _step(model, x, False)
    assert all(torch.equal(a, b) for a, b in zip(outs_f, outs_e))
    assert grads_f.keys() == grads_e.keys()
    for name, grad in grads_e.items():
        if grad is None:
            assert grads_f[name] is None, name
            continue
        error = float((grads_f[name] - grad).norm())
        assert error <= 1e-4 * float(grad.norm()) + 1e-7, (name, error)


def test_fake_quant_backbone_on_cuda_is_the_cpus():
    model = _quantized()
    x = torch.randn(2, 3, 224, 300)
    with torch.no_grad():
        on_cpu = model(x)
        on_gpu = copy.deepcopy(model).to(CUDA)
        on_gpu.fused_kernels = True
        on_cuda = on_gpu(x.to(CUDA))
    assert _relative_error(on_cuda, on_cpu) <= 0.02


def test_fake_quant_backbone_trains_under_fp16_autocast_on_cuda():
    """Under fp16 autocast (AmpOptimWrapper's) the quantized backbone's
    outputs are fp16 and near float32's (within 25%: 12% on CPU under fp16 or
    bf16 autocast, where the softmax's log-sqrt(2) levels are found in the
    half dtype); the step sizes get finite float32 gradients."""
    model = _quantized().to(CUDA).train()
    model.fused_kernels = True
    x = torch.randn(2, 3, 224, 300, device=CUDA)
    with torch.no_grad():
        reference = model(x)
    with torch.autocast('cuda', dtype=torch.float16):
        outs = model(x)
    assert all(o.dtype == torch.float16 for o in outs)
    assert _relative_error(outs, reference) <= 0.25
    sum(o.float().sum() for o in outs).backward()
    steps = {n: p for n, p in model.named_parameters() if n.endswith('.scale')}
    assert steps and all(
        p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
        for p in steps.values())


# ---- integer execution ------------------------------------------------------------------------


def test_integer_blocks_on_cuda_compute_the_fake_quantized_blocks():
    """On the GPU (``torch._int_mm``), every block of a uniform W8A8 MixA-Q
    backbone given the same input computes the fake-quantized block's output,
    but for the few outputs behind a code rounding moved by one step (as on
    CPU, ``tests/models/test_integer_backbone.py``)."""
    model = _calibrated(low_bit_ratios=0.5).to(CUDA)
    inputs = _block_inputs(model, torch.randn(2, 3, 97, 131, device=CUDA))
    with torch.no_grad():
        expected = {b: b(args[0].clone(), *args[1:]) for b, args in inputs.items()}
        to_integer(model)
        for block, args in inputs.items():
            out = block(args[0].clone(), *args[1:])
            assert out.device.type == 'cuda' and torch.isfinite(out).all()
            moved = ((out - expected[block]).abs() > 1e-5 * expected[block].abs().max()).float()
            assert float(moved.mean()) <= MOVED_OUTPUTS
