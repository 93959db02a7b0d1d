"""MixAQSwinTransformer: a drop-in for mmdet's SwinTransformer with Two-Branch blocks."""
import copy
from collections import OrderedDict

import pytest
import torch
from mmdet.models.backbones import SwinTransformer
from mmdet.registry import MODELS
from mmengine.config import ConfigDict
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

from mixaq_mmdet.models import MixAQSwinTransformer, TwoBranchSwinBlock
from mixaq_mmdet.quantization import enable_calibration, finish_calibration, quantizers_of
from .blas_rows import DTYPE, assert_same_outputs

NANO = dict(
    embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7, drop_path_rate=0.1)


def _pair(quant=False, seed=0, **kwargs):
    """An mmdet Swin and a MixA-Q Swin with the same weights, in eval mode."""
    torch.manual_seed(seed)
    ref = SwinTransformer(**NANO)
    ref.init_weights()
    model = MixAQSwinTransformer(**NANO, quant=quant, **kwargs)
    model.load_state_dict(ref.state_dict(), strict=False)
    ref.eval()  # mmdet's SwinTransformer.train() returns None: no chaining
    return ref, model.eval()


def _max_diff(outs_a, outs_b):
    return max(float((a - b).abs().max()) for a, b in zip(outs_a, outs_b))


def _calibrate(model, *inputs):
    """PTQ calibration at the model's ratios; returns the unreached quantizers."""
    enable_calibration(model)
    with torch.no_grad():
        for x in inputs:
            model(x)
    return finish_calibration(model, strict=False)


@pytest.mark.parametrize('hw', [(224, 224), (97, 131), (64, 320)])
@pytest.mark.parametrize('low', [0.0, 0.5, [0.1, 0.9, 0.0, 0.6]])
def test_quant_off_equals_mmdet(hw, low):
    ref, model = _pair(low_bit_ratios=low)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        assert _max_diff(ref(x), model(x)) <= 1e-5


def test_keys_are_mmdets_and_norm_copies_are_filled():
    ref, model = _pair()
    ref_keys = set(ref.state_dict())
    keys = set(model.state_dict())
    assert ref_keys <= keys
    extra = keys - ref_keys
    assert all('quantizer' in k or 'branches.' in k or '_low.' in k or 'reparam_pad' in k
               for k in extra)
    block = model.stages[1].blocks[1]
    assert isinstance(block, TwoBranchSwinBlock)
    torch.testing.assert_close(block.norm1_low.weight, block.norm1.weight, rtol=0, atol=0)
    assert torch.equal(block.norm2_low.bias, ref.stages[1].blocks[1].norm2.bias)
    assert block.norm1_low.weight is not block.norm1.weight


def test_detector_checkpoint_in_mmdet_layout(tmp_path):
    init_default_scope('mmdet')
    ref, _ = _pair()
    ckpt = tmp_path / 'detector.pth'
    state = OrderedDict(('backbone.' + k, v) for k, v in ref.state_dict().items())
    state['neck.lateral_convs.0.conv.weight'] = torch.zeros(1)
    torch.save(dict(state_dict=state, meta=dict(epoch=12)), ckpt)
    # through the backbone's init_cfg, as mmdet's configs do
    model = MixAQSwinTransformer(
        **NANO, quant=False, init_cfg=ConfigDict(type='Pretrained', checkpoint=str(ckpt)))
    model.init_weights()
    model.eval()
    x = torch.randn(1, 3, 150, 100)
    with torch.no_grad():
        assert _max_diff(ref(x), model(x)) <= 1e-5
    # through mmengine's load_checkpoint on a detector-shaped wrapper
    wrapper = torch.nn.Module()
    wrapper.backbone = MixAQSwinTransformer(**NANO, quant=False).eval()
    load_checkpoint(wrapper, str(ckpt), strict=False)
    with torch.no_grad():
        assert _max_diff(ref(x), wrapper.backbone(x)) <= 1e-5


def _to_official_layout(state):
    """mmdet Swin keys -> the original Swin repo's (the inverse of swin_converter)."""
    official = OrderedDict()
    for k, v in state.items():
        if 'relative_position_index' in k:
            continue
        k = k.replace('stages.', 'layers.').replace('attn.w_msa.', 'attn.')
        k = k.replace('ffn.layers.0.0.', 'mlp.fc1.').replace('ffn.layers.1.', 'mlp.fc2.')
        k = k.replace('patch_embed.projection', 'patch_embed.proj')
        official[k] = v
    return official


def test_official_classification_weights_are_converted(tmp_path):
    torch.manual_seed(1)
    donor = SwinTransformer(**NANO)
    donor.init_weights()
    ckpt = tmp_path / 'swin_official.pth'
    torch.save(dict(model=_to_official_layout(donor.state_dict())), ckpt)
    init = ConfigDict(type='Pretrained', checkpoint=str(ckpt))  # as from a config
    ref = SwinTransformer(**NANO, convert_weights=True, init_cfg=init)
    ref.init_weights()
    ref.eval()
    model = MixAQSwinTransformer(
        **NANO, quant=False, convert_weights=True, init_cfg=copy.deepcopy(init))
    model.init_weights()
    # the conversion really happened: weights came from the donor
    assert torch.equal(model.stages[0].blocks[0].attn.w_msa.qkv.weight,
                       donor.stages[0].blocks[0].attn.w_msa.qkv.weight)
    block = model.stages[2].blocks[1]
    assert torch.equal(block.norm1_low.weight, donor.stages[2].blocks[1].norm1.weight)
    x = torch.randn(1, 3, 112, 140)
    with torch.no_grad():
        assert _max_diff(ref(x), model.eval()(x)) <= 1e-5


def test_equal_branches_make_output_independent_of_ratios():
    _, model = _pair(quant=True, a_bits=(6, 6))
    model.to(DTYPE)  # compared across products of other row counts (blas_rows)
    calib = [torch.randn(2, 3, 96, 96).to(DTYPE) for _ in range(2)]
    _calibrate(model, *calib)
    for block in model.modules():
        if isinstance(block, TwoBranchSwinBlock):
            block.branches['low'].load_state_dict(block.branches['high'].state_dict())
    x = torch.randn(2, 3, 96, 128).to(DTYPE)
    with torch.no_grad():
        model.set_ratios(0.0, 0.0)
        base = model(x)
        for low in (0.5, [0.2, 1.0, 0.0, 0.7]):
            model.set_ratios(low, 0.0)
            # other ratios make groups (products) of other row counts
            assert_same_outputs(model(x), base)


def test_unreached_branch_stays_uncalibrated_and_raises_when_used():
    _, model = _pair(quant=True)
    unreached = _calibrate(model, torch.randn(2, 3, 96, 96))
    assert unreached and all('branches.low' in name for name in unreached)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        model(x)  # ratio 0: only calibrated quantizers run
        model.set_ratios(0.5, 0.0)
        with pytest.raises(RuntimeError, match=r'branches\.low.*not calibrated'):
            model(x)


def test_low_bits_change_the_output_and_more_low_bits_cost_accuracy():
    ref, model = _pair(quant=True, a_bits=(8, 2), low_bit_ratios=0.5)
    x = torch.randn(2, 3, 256, 256)  # >= 2 windows in every stage: both branches reached
    assert not _calibrate(model, torch.randn(2, 3, 256, 256), x)
    errors = []
    with torch.no_grad():
        target = ref(x)
        for low in (0.0, 0.5, 1.0):
            model.set_ratios(low, 0.0)
            errors.append(_max_diff(target, model(x)))
    assert errors[0] < errors[1] < errors[2]


def test_pruned_windows_leave_the_block_unchanged():
    _, model = _pair()
    block = model.stages[0].blocks[1]  # shifted block
    assert block.shift_size == 3
    torch.manual_seed(0)
    h, w = 21, 14
    x = torch.randn(2, h * w, NANO['embed_dims'])
    order = torch.stack([torch.randperm(6), torch.randperm(6)])
    with torch.no_grad():
        out = block(x, (h, w), order, low_ratio=0.0, prune_ratio=0.5)
    # token (r, c) belongs to shifted window of the rolled position
    rows = (torch.arange(h)[:, None] - 3) % h // 7
    cols = (torch.arange(w)[None, :] - 3) % w // 7
    window = (rows * 2 + cols).flatten()
    for b in range(2):
        pruned = order[b, 3:]
        is_pruned = torch.isin(window, pruned)
        assert torch.equal(out[b, is_pruned], x[b, is_pruned])
        assert not torch.isclose(out[b, ~is_pruned], x[b, ~is_pruned]).all(dim=-1).any()


def test_pruning_is_identity_for_every_window_at_ratio_one():
    _, model = _pair(prune_ratios=1.0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tokens, hw = model.patch_embed(x)
        block = model.stages[0].blocks[0]
        order = torch.arange(9).view(1, 9)  # 16x16 tokens -> 3x3 windows
        assert torch.equal(block(tokens, hw, order, 0.0, 1.0), tokens)


def test_calibrated_checkpoint_round_trip(tmp_path):
    _, model = _pair(quant=True, low_bit_ratios=0.5, prune_ratios=0.25)
    assert not _calibrate(model, torch.randn(2, 3, 256, 256))
    path = tmp_path / 'mixaq.pth'
    torch.save(model.state_dict(), path)
    fresh = MixAQSwinTransformer(**NANO, quant=True, low_bit_ratios=0.5, prune_ratios=0.25).eval()
    result = fresh.load_state_dict(torch.load(path, weights_only=True))
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 96, 120)
    with torch.no_grad():
        assert torch.equal(model(x)[2], fresh(x)[2])


def test_quantizers_cover_every_multiplication():
    _, model = _pair(quant=True)
    counts = model.quantizer_summary()
    blocks = sum(NANO['depths'])
    # per block: 4 weights + 2 branches x (qkv_in, q, k, v, proj_in, fc1_in, fc2_in)
    # + patch embedding (2) + 3 patch mergings (2 each)
    assert counts['UniformQuantizer'] == blocks * (4 + 2 * 7) + 2 + 3 * 2
    assert counts['LogSqrt2Quantizer'] == blocks * 2
    bits = {q.bits for q in quantizers_of(model.stages[0].blocks[0].branches['low'])}
    assert bits == {4}


def test_uncalibrated_quantized_backbone_refuses_to_run():
    _, model = _pair(quant=True)
    with pytest.raises(RuntimeError, match='patch_embed.projection'):
        model(torch.randn(1, 3, 64, 64))


def test_tiny_images_and_batches():
    ref, model = _pair(low_bit_ratios=0.5, prune_ratios=0.3)
    for shape in [(1, 3, 8, 8), (2, 3, 33, 70), (3, 3, 28, 28)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            outs = model(x)
        assert [o.shape for o in outs] == [o.shape for o in ref(x)]


def test_mask_rcnn_with_mixaq_backbone_loss_and_predict():
    from mmengine.config import Config

    from ..conftest import FP_BENCH_CONFIG
    from ..test_configs import _sample
    init_default_scope('mmdet')
    cfg = Config.fromfile(FP_BENCH_CONFIG)
    cfg.model.backbone.type = 'MixAQSwinTransformer'
    cfg.model.backbone.low_bit_ratios = 0.5
    cfg.model.backbone.prune_ratios = [0.0, 0.2, 0.0, 0.0]
    detector = MODELS.build(cfg.model)
    detector.init_weights()
    assert type(detector.backbone).__name__ == 'MixAQSwinTransformer'
    data = dict(
        inputs=[torch.randint(0, 255, (3, 160, 192), dtype=torch.uint8)],
        data_samples=[_sample(160, 192, 4)])
    enable_calibration(detector)
    with torch.no_grad():
        detector.test_step(data)
    finish_calibration(detector, strict=False)
    detector.train()
    losses = detector(**detector.data_preprocessor(data, True), mode='loss')
    total, _ = detector.parse_losses(losses)
    total.backward()
    assert torch.isfinite(total)
    assert detector.backbone.stages[0].blocks[0].attn.w_msa.qkv.weight.grad is not None
    detector.eval()
    with torch.no_grad():
        (result, ) = detector.test_step(data)
    assert result.pred_instances.bboxes.shape[-1] == 4


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(low_bit_ratios=[0.1, 0.2]), ValueError, 'low_bit_ratios.*4 values'),
    (dict(prune_ratios=1.5), ValueError, 'prune_ratios'),
    (dict(low_bit_ratios=0.7, prune_ratios=0.5), ValueError, r'> 1'),
    (dict(window_order='sideways'), ValueError, "sideways"),
    (dict(window_score='magic'), ValueError, "magic"),
    (dict(a_bits=8), ValueError, r'a_bits must be a \(high, low\) pair'),
    (dict(a_bits=(4, 8)), ValueError, 'high >= low'),
    (dict(a_bits=(8, 1)), ValueError, r'a_bits\[1\].*\[2, 8\]'),
    (dict(w_bits=9), ValueError, r'w_bits.*\[2, 8\], got 9'),
    (dict(act_quantizer=dict(type='UniformQuantizer', bits=3)), ValueError,
     'act_quantizer must not set bits'),
    (dict(weight_quantizer=dict(type='NoSuchQuantizer')), KeyError, 'NoSuchQuantizer'),
    (dict(branch_quantizers=dict(gelu=dict(type='UniformQuantizer'))), ValueError,
     r"unknown positions \['gelu'\]; valid: \('qkv_in', 'q', 'k', 'softmax', 'v'"),
    (dict(branch_quantizers=dict(fc2_in=dict(type='UniformQuantizer', bits=3))), ValueError,
     r'branch_quantizers.fc2_in must not set bits'),
    (dict(
        softmax_quantizer=dict(type='LogSqrt2Quantizer'),
        branch_quantizers=dict(softmax=dict(type='LogSqrt2Quantizer'))), ValueError,
     'softmax_quantizer or .*not both'),
    (dict(softmax_quantizer=dict(type='LogSqrt2Quantizer', bits=3)), ValueError,
     'softmax_quantizer must not set bits'),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        MixAQSwinTransformer(**NANO, **kwargs)


TWIN = dict(
    softmax=dict(type='TwinUniformQuantizer', mode='softmax'),
    fc2_in=dict(type='TwinUniformQuantizer', mode='gelu'))


def test_branch_quantizers_replace_single_positions_and_keep_the_keys():
    """A quantizer config per position: the twin uniform quantizers land exactly
    where they are named, in both branches at their bits, the other positions
    keep the defaults, and the keys change only where a quantizer was replaced
    (a twin uniform quantizer has no zero point)."""
    ref, default = _pair(a_bits=(8, 2))
    _, model = _pair(a_bits=(8, 2), branch_quantizers=TWIN)
    keys, default_keys = set(model.state_dict()), set(default.state_dict())
    assert set(ref.state_dict()) <= keys <= default_keys
    assert {k.split('.branches.')[1]
            for k in default_keys - keys} == {'high.fc2_in.zero_point', 'low.fc2_in.zero_point'}
    changed = {'av.quantizer_a': 'softmax', 'fc2_in': 'gelu'}
    for (name, q), (_, d) in zip(((n, m) for n, m in model.named_modules() if '.branches.' in n),
                                 ((n, m) for n, m in default.named_modules() if '.branches.' in n)):
        position = name.split('.branches.')[1].split('.', 1)
        if len(position) < 2 or not hasattr(q, 'bits'):
            continue
        branch, where = position
        assert q.bits == (8 if branch == 'high' else 2)
        if where in changed:
            assert type(q).__name__ == 'TwinUniformQuantizer' and q.mode == changed[where]
        else:
            assert type(q) is type(d) and q.settings() == d.settings()
    assert model.quantizer_summary()['TwinUniformQuantizer'] == 2 * 2 * 8


def test_ptq_with_twin_uniform_quantizers_runs_and_refuses_the_other_base():
    _, model = _pair(low_bit_ratios=0.5, a_bits=(8, 4), quant=True, branch_quantizers=TWIN)
    x = torch.randn(1, 3, 224, 448)  # two windows in the last stage: both branches see data
    assert _calibrate(model, x) == []
    with torch.no_grad():
        outs = model(x)
    assert all(torch.isfinite(o).all() for o in outs)
    _, repq = _pair(low_bit_ratios=0.5, a_bits=(8, 4), quant=True)
    with pytest.raises(ValueError, match=r"kind='twin_uniform' \(model: 'log_sqrt2'\)"):
        repq.load_state_dict(model.state_dict())


def test_set_ratios_validates_like_the_constructor():
    _, model = _pair(low_bit_ratios=0.3)
    with pytest.raises(ValueError, match='pair 2'):
        model.set_ratios([0.0, 0.0, 0.9, 0.0], [0.0, 0.0, 0.2, 0.0])
    assert model.low_bit_ratios == [0.3] * 4
    model.set_ratios([0.1, 0.2, 0.3, 0.4], 0.0)
    assert model.low_bit_ratios == [0.1, 0.2, 0.3, 0.4]


def test_scale_reparameterization_keeps_the_float_function():
    from mixaq_mmdet.quantization.reparam import record_channel_statistics, reparameterize
    ref, model = _pair(low_bit_ratios=0.5)
    for module in model.modules():  # give the LN copies different affines
        if isinstance(module, TwoBranchSwinBlock):
            module.norm1_low.weight.data.mul_(1.5)
    x = torch.randn(2, 3, 97, 131)  # padding in every stage
    with torch.no_grad():
        before = model(x)
        targets = model.reparam_targets()
        assert len(targets) == 2 * sum(NANO['depths']) + 3
        assert [t.bits for t in targets[:2]] == [4, 4]  # the lower of (8, 4)
        with record_channel_statistics(targets) as stats:
            model(torch.randn(2, 3, 97, 131))
        reparameterize(targets, stats)
        block = model.stages[0].blocks[0]
        assert block.reparam_pad.abs().sum() > 0
        assert not torch.equal(block.attn.w_msa.qkv.weight,
                               ref.stages[0].blocks[0].attn.w_msa.qkv.weight)
        assert _max_diff(before, model(x)) <= 1e-4
