"""The Two-Branch block trains like mmdet's SwinBlock: drop path, gradients, DDP."""
import os

import torch
from mmdet.models.backbones import SwinTransformer
from mmengine.config import ConfigDict
from torch.nn.parallel import DistributedDataParallel

from mixaq_mmdet.models import MixAQSwinTransformer, TwoBranchSwinBlock
from mixaq_mmdet.quantization import enable_calibration, finish_calibration
from ..multiprocess import finish_gloo, init_gloo, spawn_ranks

NANO = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)
LSQ = dict(type='LSQQuantizer', calib='percentile_mse')


def _blocks(model):
    return [m for m in model.modules() if isinstance(m, TwoBranchSwinBlock)]


def test_drop_path_draws_once_per_image_for_all_branches():
    """mmdet draws one keep/drop per image and sub-block: the high- and low-bit
    windows of an image are kept or dropped together."""
    torch.manual_seed(0)
    model = MixAQSwinTransformer(**NANO, drop_path_rate=0.5, quant=False, low_bit_ratios=0.5)
    model.init_weights()
    block = model.stages[0].blocks[1]
    for drop_path in (block.attn.drop, block.ffn.dropout_layer):
        drop_path.drop_prob = 0.7
    x = torch.randn(8, 28 * 28, 16)
    order = torch.stack([torch.randperm(16) for _ in range(8)])
    block.train()
    dropped_images = 0
    with torch.no_grad():
        for _ in range(20):
            out = block(x, (28, 28), order, 0.5, 0.0)
            unchanged = (out == x).all(-1)  # (B, L): token left as it was
            for image in unchanged:
                assert bool(image.all()) or not bool(image.any())
                dropped_images += int(image.all())
    assert dropped_images > 0  # both residuals dropped for some images


def _twin_models(**kwargs):
    torch.manual_seed(0)
    ref = SwinTransformer(**NANO, drop_path_rate=0.0)
    ref.init_weights()
    model = MixAQSwinTransformer(**NANO, drop_path_rate=0.0, quant=False, **kwargs)
    model.load_state_dict(ref.state_dict(), strict=False)
    ref.train()  # mmdet's train() returns None
    return ref, model.train()


def test_quant_off_gradients_equal_mmdets():
    ref, model = _twin_models(low_bit_ratios=[0.3, 0.6, 0.5, 0.0], prune_ratios=0.0)
    x = torch.randn(2, 3, 97, 131)
    grads = []
    for net in (ref, model):
        inp = x.clone().requires_grad_()
        outs = net(inp)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        grads.append((inp.grad, dict(net.named_parameters())))
    (ref_in, ref_params), (in_grad, params) = grads

    def assert_equal_up_to_rounding(grad, ref, name):
        # summation orders differ (windows gathered per group): float rounding only
        error = float((grad - ref).abs().max() / ref.abs().max())
        assert error <= 1e-5, f'{name}: relative error {error}'

    assert_equal_up_to_rounding(in_grad, ref_in, 'input')
    for name, p in ref_params.items():
        grad = params[name].grad
        low = name.replace('.norm1.', '.norm1_low.').replace('.norm2.', '.norm2_low.')
        if low != name:  # the two LayerNorm copies add up to mmdet's one
            grad = grad + params[low].grad
        assert_equal_up_to_rounding(grad, p.grad, name)


def test_empty_groups_keep_every_parameter_in_the_graph():
    """Stage 3 of a 100x164 image has one window: at ratio 0.5 its low group is
    empty, yet its LayerNorm copies and quantizers get (zero) gradients."""
    torch.manual_seed(0)
    model = MixAQSwinTransformer(
        **NANO,
        quant=True,
        low_bit_ratios=0.5,
        act_quantizer=LSQ,
        weight_quantizer=dict(type='LSQQuantizer', per_channel=True, calib='percentile_mse'))
    model.init_weights()
    x = torch.randn(1, 3, 100, 164)
    enable_calibration(model)
    with torch.no_grad():
        model.set_ratios(1.0, 0.0)  # reach every low branch once
        model(x)
        model.set_ratios(0.0, 0.0)
        model(x)
    finish_calibration(model)
    model.set_ratios(0.5, 0.0)
    model.train()
    sum(o.sum() for o in model(x)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    last = model.stages[3].blocks[0]
    assert float(last.norm1_low.weight.grad.abs().sum()) == 0.0
    assert float(last.branches['low'].qkv_in.scale.grad.abs().sum()) == 0.0
    assert float(last.norm1.weight.grad.abs().sum()) > 0.0
    model.eval()  # in inference an empty group costs nothing: no branch runs
    calls = []
    last.norm1_low.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        model(x)
    assert calls == []


def test_init_weights_keeps_the_low_copies_of_a_mixaq_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = MixAQSwinTransformer(**NANO, quant=False)
    source.init_weights()
    for block in _blocks(source):
        block.norm1_low.weight.data.fill_(3.0)
        block.norm2.weight.data.fill_(2.0)
    path = tmp_path / 'mixaq.pth'
    # a MixA-Q detector checkpoint (mmdet's Swin takes its 'backbone.' keys)
    torch.save(dict(state_dict={f'backbone.{k}': v for k, v in source.state_dict().items()}), path)
    model = MixAQSwinTransformer(
        **NANO, quant=False, init_cfg=ConfigDict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    for block in _blocks(model):
        assert bool((block.norm1_low.weight == 3).all())
        assert bool((block.norm2.weight == 2).all())
        assert bool((block.norm2_low.weight == 1).all())  # the source's, not norm2's


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    init_gloo(rank, port)
    try:
        torch.manual_seed(0)
        model = MixAQSwinTransformer(**NANO, quant=True, drop_path_rate=0.2, act_quantizer=LSQ)
        model.init_weights()
        gen = torch.Generator().manual_seed(rank)
        images = [torch.randn(1, 3, 100, 164, generator=gen) for _ in range(2)]
        enable_calibration(model)
        with torch.no_grad():
            for ratio in (0.0, 1.0):  # calibrate both branches of every pair
                model.set_ratios(ratio, 0.0)
                for x in images:
                    model(x)
        finish_calibration(model)
        model.train()
        # mmengine's defaults: MMDistributedDataParallel, find_unused_parameters=False
        ddp = DistributedDataParallel(model, find_unused_parameters=False)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01)
        ratios = torch.Generator().manual_seed(123)  # the same draws on both ranks
        for step in range(4):
            low = torch.rand(4, generator=ratios) * 0.8
            prune = torch.rand(4, generator=ratios) * 0.2 * (step % 2)
            model.set_ratios(low.tolist(), prune.tolist())
            optimizer.zero_grad()
            loss = sum(o.square().mean() for o in ddp(images[step % 2]))
            loss.backward()
            optimizer.step()
        state = {
            k: v.detach().clone()
            for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)
        }
        torch.save(state, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        finish_gloo()


def test_two_gloo_processes_train_while_ratios_change_every_iteration(tmp_path):
    spawn_ranks(_ddp_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
    assert any('branches.low' in k and k.endswith('.scale') for k in ranks[0])


def test_a_training_forward_quantizes_each_weight_once_for_both_groups():
    """Both groups of a block read one fake-quantized weight per layer (one
    autograd node), not one each."""
    torch.manual_seed(0)
    model = MixAQSwinTransformer(
        **NANO,
        quant=True,
        low_bit_ratios=0.5,
        act_quantizer=LSQ,
        weight_quantizer=dict(type='LSQQuantizer', per_channel=True, calib='percentile_mse'))
    model.init_weights()
    x = torch.randn(1, 3, 112, 112)
    enable_calibration(model)
    with torch.no_grad():
        model(x)
    finish_calibration(model, strict=False)  # the last stages' single windows stay high
    block = model.stages[0].blocks[0]
    calls = []
    for layer in block._linears():
        layer.weight_quantizer.register_forward_hook(lambda *args: calls.append(1))
    model.train()
    sum(o.sum() for o in model(x)).backward()
    assert len(calls) == 4
    assert block.attn.w_msa.qkv.weight_quantizer.scale.grad.abs().sum() > 0
    assert block.branches['low'].qkv_in.scale.grad.abs().sum() > 0
