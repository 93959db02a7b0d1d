"""The Two-Branch block's fast paths compute what the plain block computes.

The reference is :func:`reference_forward` (the block as first written: groups
gathered per image, scattered back out of place, masks and biases rebuilt per
forward). The optimized block must match it on CPU: the same qparams after
calibration and the same outputs and gradients, with padding, shifted windows,
three groups and a different window order per image. Inference batches the
windows into products of other row counts than the reference's: bit for bit
where this machine's BLAS gives rows the same bits whatever their count (see
:mod:`.blas_rows`), else within a tolerance that rounding cannot exceed.
Training batches them the same way; its gradients sum the rows of each product
in another order than the reference's, so they agree within float64 rounding
(:data:`.blas_rows.REL_L2`), never bit for bit.
"""
import copy

import pytest
import torch
from mmdet.models.backbones import SwinTransformer

from mixaq_mmdet.models import MixAQSwinTransformer, TwoBranchSwinBlock
from mixaq_mmdet.models.layers import WindowLayout
from mixaq_mmdet.quantization import disable_quantization, enable_calibration, finish_calibration
from mixaq_mmdet.quantization.reparam import record_channel_statistics, reparameterize
from .blas_rows import DTYPE, REL_L2, assert_same_outputs, relative_l2
from .reference_two_branch import reference_forward

NANO = dict(
    embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7, drop_path_rate=0.1)
# min/max calibration keeps the test fast; the percentile/MSE search reads the
# same observed data, so it adds nothing to what is compared here
MINMAX = dict(
    weight_quantizer=dict(type='UniformQuantizer', per_channel=True, calib='minmax'),
    act_quantizer=dict(type='UniformQuantizer', calib='minmax'))


def _model(quant, seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = SwinTransformer(**NANO)
    ref.init_weights()
    model = MixAQSwinTransformer(**NANO, quant=quant, **kwargs)
    model.load_state_dict(ref.state_dict(), strict=False)
    ref.eval()
    return ref, model.eval()


def _randn(*shape):
    return torch.randn(*shape).to(DTYPE)


def _with_reference_blocks(model):
    """A copy of ``model`` whose blocks run :func:`reference_forward`."""
    model = copy.deepcopy(model)
    for block in model.modules():
        if isinstance(block, TwoBranchSwinBlock):
            block.forward = (lambda b: lambda x, hw, windows, low, prune: reference_forward(
                b, x, hw, windows.order
                if isinstance(windows, WindowLayout) else windows, low, prune))(
                    block)
            block.runs_dense = lambda low, prune: False
    return model


def _calibrated(model, inputs):
    enable_calibration(model)
    with torch.no_grad():
        for x in inputs:
            model(x)
    finish_calibration(model)
    return model


def _equal(outs_a, outs_b):
    return all(torch.equal(a, b) for a, b in zip(outs_a, outs_b))


@pytest.mark.parametrize('order', ['importance', 'random'])
def test_ptq_matches_the_reference_block(order):
    # 3 groups in every pair, padding at every stage, shifted windows, two images
    # with their own window orders
    _, model = _model(
        True,
        low_bit_ratios=[0.3, 0.5, 0.4, 0.5],
        prune_ratios=0.2,
        a_bits=(8, 4),
        window_order=order,
        **MINMAX)
    model.to(DTYPE)
    reference = _with_reference_blocks(model)
    calib = [_randn(2, 3, 230, 260), _randn(1, 3, 300, 190)]
    _calibrated(model, calib)
    _calibrated(reference, calib)
    state, ref_state = model.state_dict(), reference.state_dict()
    assert state.keys() == ref_state.keys()
    assert_same_outputs([state[k] for k in state], [ref_state[k] for k in state])
    x = _randn(2, 3, 227, 263)
    with torch.no_grad():
        assert_same_outputs(model(x), reference(x))
        model.set_ratios(0.5, 0.0)  # one ratio, nothing pruned
        reference.set_ratios(0.5, 0.0)
        assert_same_outputs(model(x), reference(x))


def test_reparameterized_ptq_matches_the_reference_block():
    # RepQ-ViT's statistics pass runs in float with hooks on the shared linears;
    # it must see what it always saw (whole windows, padding included), not
    # mmdet's dense path or an FFN on real tokens only
    _, model = _model(True, low_bit_ratios=0.5, a_bits=(8, 4), **MINMAX)
    model.to(DTYPE)
    reference = _with_reference_blocks(model)
    calib = [_randn(2, 3, 230, 260)]
    for m in (model, reference):
        targets = m.reparam_targets()
        disable_quantization(m)
        with record_channel_statistics(targets) as stats, m.whole_windows(), \
                torch.no_grad():
            m(calib[0])
        reparameterize(targets, stats)
        _calibrated(m, calib)
    state, ref_state = model.state_dict(), reference.state_dict()
    assert_same_outputs([state[k] for k in state], [ref_state[k] for k in state])
    x = _randn(1, 3, 227, 263)
    with torch.no_grad():
        assert_same_outputs(model(x), reference(x))


def test_training_with_drop_path_matches_the_reference():
    _, model = _model(False, low_bit_ratios=0.5, prune_ratios=0.25)
    for block in model.modules():  # branches that differ, as after QAT
        if isinstance(block, TwoBranchSwinBlock):
            with torch.no_grad():
                block.norm1_low.weight.mul_(1.5)
                block.norm2_low.bias.add_(0.1)
    model.to(DTYPE).train()
    reference = _with_reference_blocks(model)
    x = _randn(2, 3, 120, 150)
    outs = []
    for m in (model, reference):
        torch.manual_seed(1)  # the same DropPath draws
        m.zero_grad()
        out = m(x)
        sum((o * torch.linspace(-1, 1, o.numel(), dtype=DTYPE).view_as(o)).sum()
            for o in out).backward()
        outs.append((out, {n: p.grad for n, p in m.named_parameters()}))
    (out, grads), (ref_out, ref_grads) = outs
    assert_same_outputs(out, ref_out)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert grad is not None, name
        # one window in the wrong group or image moves a gradient by about 1e-2
        assert relative_l2(grad, ref_grads[name]) <= REL_L2, name


def test_float_two_branch_path_matches_the_reference():
    _, model = _model(False, low_bit_ratios=0.5)
    for block in model.modules():
        if isinstance(block, TwoBranchSwinBlock):
            with torch.no_grad():
                block.norm2_low.weight.mul_(0.5)
    model.to(DTYPE)
    reference = _with_reference_blocks(model)
    x = _randn(1, 3, 97, 131)
    with torch.no_grad():
        assert_same_outputs(model(x), reference(x))


@pytest.mark.parametrize('low', [0.0, 0.5, 1.0, [0.1, 0.9, 0.0, 0.6]])
def test_quant_off_runs_mmdets_block_without_ranking_windows(low, monkeypatch):
    ref, model = _model(False, low_bit_ratios=low)
    blocks = [m for m in model.modules() if isinstance(m, TwoBranchSwinBlock)]
    assert all(b.runs_dense(0.5, 0.0) for b in blocks)

    def no_ranking(*args):
        raise AssertionError('windows ranked on the dense path')

    monkeypatch.setattr(model.policy, 'rank', no_ranking)
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        assert _equal(ref(x), model(x))  # mmdet's own code: the same numbers


def test_what_leaves_the_dense_path():
    _, model = _model(False)
    block = model.stages[0].blocks[1]
    assert block.runs_dense(0.5, 0.0)
    assert not block.runs_dense(0.0, 0.25)  # pruning
    with torch.no_grad():
        block.norm1_low.bias.add_(0.01)  # branches differ (in place: seen at once)
    assert not block.runs_dense(0.5, 0.0) and block.runs_dense(0.0, 0.0)
    block.norm1_low.load_state_dict(block.norm1.state_dict())
    assert block.runs_dense(0.5, 0.0)
    with torch.no_grad():
        block.reparam_pad.fill_(0.5)  # a folded reparameterization pads otherwise
    assert not block.runs_dense(0.5, 0.0)
    block.reparam_pad.zero_()
    block.branches['low'].fc1_in.enable_observer()  # calibrating
    assert not block.runs_dense(0.0, 0.0)
    block.branches['low'].fc1_in.disable_observer()
    model.train()  # every parameter needs a gradient
    assert not block.runs_dense(0.0, 0.0)
    with torch.no_grad():
        assert block.runs_dense(0.0, 0.0)


def test_cached_weights_and_biases_follow_the_parameters():
    _, model = _model(True, low_bit_ratios=0.5, **MINMAX)
    _calibrated(model, [torch.randn(1, 3, 448, 448)])
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        model(x)  # fills the caches
        _, other = _model(True, seed=1, low_bit_ratios=0.5, **MINMAX)
        _calibrated(other, [torch.randn(1, 3, 448, 448)])
        expected = other(x)
        model.load_state_dict(other.state_dict())  # new weights and qparams
        assert _equal(model(x), expected)
        # an in-place edit of a weight, a table and a qparam, as an optimizer makes
        block = model.stages[0].blocks[0]
        block.attn.w_msa.qkv.weight.mul_(0.5)
        block.attn.w_msa.relative_position_bias_table.add_(1.0)
        block.branches['high'].fc1_in.scale.mul_(2.0)
        edited = model(x)
        fresh = copy.deepcopy(model)
        for m in fresh.modules():
            if hasattr(m, '_cache'):
                m._cache.clear()
        assert _equal(edited, fresh(x))
        assert not _equal(edited, expected)


def test_window_layout_round_trip_and_errors():
    order = torch.tensor([[3, 0, 2, 1, 5, 4], [5, 4, 3, 2, 1, 0]])
    layout = WindowLayout(order, (9, 20), 7, 3)  # 2x3 windows, padded, shifted
    x = torch.randn(2, 180, 4)
    windows = layout.gather(x)
    assert windows.shape == (6, 2, 49, 4)
    assert layout.valid is not None and layout.mask.shape == (6, 2, 49, 49)
    assert torch.equal(layout.scatter(windows), x)
    # rank r of image b holds window order[b, r]: the last window of image 1
    # (bottom right, shifted) comes first
    rolled = torch.roll(
        torch.nn.functional.pad(x[1].view(9, 20, 4), (0, 0, 0, 1, 0, 5)), (-3, -3), (0, 1))
    assert torch.equal(windows[0, 1].view(7, 7, 4), rolled[7:14, 14:21])
    with pytest.raises(ValueError, match=r'does not match the 6 windows of a 9x20 grid'):
        WindowLayout(order[:, :4], (9, 20), 7, 3)
    with pytest.raises(ValueError, match=r'tokens of shape \(1, 180, 4\) do not match'):
        layout.gather(x[:1])


def test_meta_device_forward():
    _, model = _model(True, low_bit_ratios=0.5, prune_ratios=0.25, **MINMAX)
    _calibrated(model, [torch.randn(1, 3, 448, 448)])
    model.to('meta')
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 97, 131, device='meta'))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 25, 33), (2, 32, 13, 17), (2, 64, 7, 9),
                                              (2, 128, 4, 5)]
    assert all(o.device.type == 'meta' for o in outs)


def test_tolerance_separates_rounding_from_a_wrong_window():
    """Why the comparisons run in float64 (blas_rows): last-bit differences of
    every product move a quantized backbone's float32 output about as much as a
    few windows in the wrong branch do, and its float64 output by 13 orders of
    magnitude less, far below blas_rows.REL_L2; a wrong window or bias table
    stays far above it."""
    from mixaq_mmdet.quantization import QuantLinear
    from .blas_rows import REL_L2, relative_l2

    def last_bit(module, args, out):  # half the outputs of every product one ulp up
        flip = torch.rand(out.shape, generator=generator) < 0.5
        return torch.where(flip, torch.nextafter(out, torch.full_like(out, float('inf'))), out)

    measured = {}
    for dtype in (torch.float32, DTYPE):
        torch.manual_seed(0)
        _, model = _model(True, low_bit_ratios=0.5, prune_ratios=0.2, a_bits=(8, 4), **MINMAX)
        model.to(dtype)
        _calibrated(model, [torch.randn(2, 3, 230, 260).to(dtype)])
        x = torch.randn(1, 3, 227, 263).to(dtype)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            base = model(x)
            handles = [
                m.register_forward_hook(last_bit) for m in model.modules()
                if isinstance(m, QuantLinear)
            ]
            nudged = model(x)
            for handle in handles:
                handle.remove()
            rounding = max(relative_l2(a, b) for a, b in zip(nudged, base))
            model.set_ratios(0.55, 0.2)  # a few more windows of each pair in the low branch
            windows = max(relative_l2(a, b) for a, b in zip(model(x), base))
            model.set_ratios(0.5, 0.2)
            table = model.stages[3].blocks[1].attn.w_msa.relative_position_bias_table
            table.add_(torch.randn(table.shape, generator=generator).to(dtype))
            bias = relative_l2(model(x)[3], base[3])
        measured[dtype] = (rounding, windows, bias)
    print(f'relative L2 (rounding, windows, bias): {measured}')
    rounding32, windows32, _ = measured[torch.float32]
    assert rounding32 > windows32 / 10  # float32: no tolerance separates them
    rounding64, windows64, bias64 = measured[DTYPE]
    assert 0 < rounding64 <= REL_L2 / 1000
    assert min(windows64, bias64) >= 1000 * REL_L2


@pytest.mark.parametrize('act', ['UniformQuantizer', 'LSQQuantizer'])
def test_fused_qkv_fake_quantization_gives_the_quantizers_values(act, monkeypatch):
    """In float32 inference q, k and v are scaled, laid out and fake-quantized
    in one fused pass: bit for bit what their quantizers compute one by one."""
    torch.manual_seed(0)
    model = MixAQSwinTransformer(
        **NANO,
        quant=True,
        low_bit_ratios=0.5,
        prune_ratios=0.25,
        weight_quantizer=MINMAX['weight_quantizer'],
        act_quantizer=dict(type=act, calib='minmax')).eval()
    enable_calibration(model)
    with torch.no_grad():
        model(torch.randn(2, 3, 320, 320))
    finish_calibration(model)
    x = torch.randn(2, 3, 97, 131)
    original = TwoBranchSwinBlock._fake_quantized_qkv
    taken = []
    monkeypatch.setattr(TwoBranchSwinBlock, '_fake_quantized_qkv',
                        lambda *args: taken.append(original(*args)) or taken[-1])
    with torch.no_grad():
        fused = model(x)
        assert taken and all(t is not None for t in taken)
        monkeypatch.setattr(TwoBranchSwinBlock, '_fake_quantized_qkv', lambda *args: None)
        one_by_one = model(x)
    for a, b in zip(fused, one_by_one):
        assert torch.equal(a, b)
