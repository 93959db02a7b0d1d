"""QAT and SAQA under mixed precision: bf16 autocast on CPU (``CPUAmpOptimWrapper``),
the tested stand-in of mmengine's fp16 ``AmpOptimWrapper`` on GPU."""
import math
import os.path as osp

import pytest
import torch
from mmdet.registry import HOOKS, OPTIM_WRAPPERS
from mmengine.hooks import Hook
from torch import nn

from mixaq_mmdet.engine import CPUAmpOptimWrapper, MixAQRunner
from mixaq_mmdet.quantization import LSQQuantizer
from mixaq_mmdet.registry import QUANTIZERS
from .test_qat import _config

AMP = dict(type='CPUAmpOptimWrapper', loss_scale='dynamic')


@HOOKS.register_module(force=True)
class _RecordAmp(Hook):
    """Records the quantizer parameters before training, and every training
    iteration's loss and the dtypes a backbone linear computed in."""

    priority = 'LOW'
    records = {}

    def before_train(self, runner):
        model = runner.model
        type(self).records.update(
            init={
                n: p.detach().clone()
                for n, p in model.named_parameters() if n.endswith(('.scale', '.zero_point'))
            },
            losses=[],
            dtypes=set())
        self._dtypes = set()
        qkv = model.backbone.stages[0].blocks[0].attn.w_msa.qkv
        qkv.register_forward_hook(lambda m, i, o: self._dtypes.add(o.dtype))

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self._dtypes.clear()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        type(self).records['losses'].append(float(outputs['loss']))
        type(self).records['dtypes'] |= self._dtypes


def _amp_config(data_root, work_dir, load_from, config):
    cfg = _config(data_root, work_dir, load_from, config)
    cfg.optim_wrapper.type = 'CPUAmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.custom_hooks.append(dict(type='_RecordAmp'))
    return cfg


@pytest.fixture(scope='module')
def amp_runs(tiny_shapes, fp_checkpoint, tmp_path_factory):
    """W4A4 LSQ QAT from the FP checkpoint, then SAQA from it, both under bf16
    autocast with a dynamic loss scale: 2 iterations each."""
    runs = {}
    load_from = fp_checkpoint
    for name, config in (('qat', 'qat_uniform_w4a4_shapes.py'), ('saqa',
                                                                 'qat_saqa_w4a4a2_shapes.py')):
        work_dir = tmp_path_factory.mktemp(f'amp_{name}')
        runner = MixAQRunner.from_cfg(_amp_config(tiny_shapes, work_dir, load_from, config))
        runner.train()
        runs[name] = runner, dict(_RecordAmp.records)
        load_from = osp.join(work_dir, 'epoch_1.pth')
    return runs


@pytest.mark.parametrize('name', ['qat', 'saqa'])
def test_trains_under_bf16_autocast_with_float32_step_sizes(amp_runs, name):
    runner, records = amp_runs[name]
    assert isinstance(runner.optim_wrapper, CPUAmpOptimWrapper)
    assert records['dtypes'] == {torch.bfloat16}  # the backbone ran under autocast
    losses = records['losses']
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    params = dict(runner.model.named_parameters())
    init = records['init']
    assert init and all(params[n].dtype == torch.float32 for n in init)
    assert all(torch.isfinite(params[n]).all() for n in init)
    moved = [n for n in init if not torch.equal(init[n], params[n])]
    assert any('weight_quantizer' in n for n in moved)
    assert any('branches.high' in n for n in moved)
    if name == 'saqa':
        assert any('branches.low' in n for n in moved)
    assert runner.optim_wrapper.loss_scaler.get_scale() > 0


def _calibrated_lsq(x: torch.Tensor) -> LSQQuantizer:
    q = LSQQuantizer(4)
    q(x)
    q.calculate_qparams()
    q.enable_fake_quant()
    return q


def test_quantizers_compute_in_float32_inside_autocast():
    """Values and gradients under autocast are those of the float32 computation
    on the same (bf16) input; the output keeps the input's dtype."""
    x = torch.randn(64, 32).bfloat16()
    q = _calibrated_lsq(x.float())
    ref_in = x.float().requires_grad_()
    ref = q(ref_in)
    ref.sum().backward()
    ref_scale_grad = q.scale.grad.clone()
    q.scale.grad = None
    amp_in = x.clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = q(amp_in)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and q.scale.grad.dtype == torch.float32
    assert torch.equal(out, ref.bfloat16())
    assert torch.equal(amp_in.grad, ref_in.grad.bfloat16())
    assert torch.equal(q.scale.grad, ref_scale_grad)


@QUANTIZERS.register_module(force=True)
class _Float32OnlyQuantizer(LSQQuantizer):
    supports_autocast = False


def test_a_quantizer_without_autocast_support_is_refused_by_name():
    q = _Float32OnlyQuantizer(4)
    q.name = 'backbone.stages.0.blocks.0.attn.qkv_quantizer'
    x = torch.randn(16, 8)
    q(x)
    q.calculate_qparams()
    q.enable_fake_quant()
    assert q(x).dtype == torch.float32  # fine without autocast
    with torch.autocast(
            'cpu', dtype=torch.bfloat16), pytest.raises(
                RuntimeError,
                match=r"_Float32OnlyQuantizer 'backbone\.stages\.0\.blocks\.0\.attn\."
                r"qkv_quantizer' cannot compute under autocast"):
        q(x)


class _Toy(nn.Module):

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(x.shape[1], 1)
        self.quantizer = _calibrated_lsq(x)

    def forward(self, x):
        return self.linear(self.quantizer(x)).float().pow(2).mean()


def test_a_step_with_inf_gradients_is_skipped_and_leaves_step_sizes_unchanged():
    torch.manual_seed(0)
    x = torch.randn(32, 8)
    model = _Toy(x)
    wrapper = OPTIM_WRAPPERS.build(
        dict(AMP, autocast_scope=None, optimizer=torch.optim.SGD(model.parameters(), lr=0.1)))
    assert isinstance(wrapper, CPUAmpOptimWrapper)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scale = wrapper.loss_scaler.get_scale()
    with wrapper.optim_context(model):
        loss = model(x) * torch.tensor(float('inf'))
    wrapper.update_params(loss)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert wrapper.loss_scaler.get_scale() < scale  # backed off, as on GPU
    with wrapper.optim_context(model):
        loss = model(x)
    wrapper.update_params(loss)
    after = dict(model.named_parameters())
    assert not torch.equal(before['quantizer.scale'], after['quantizer.scale'])
    assert all(torch.isfinite(p).all() for p in after.values())


def test_autocast_scope_covers_its_submodule_only():
    """The default CPU scope: the backbone under autocast, its outputs and the
    rest of the model in float32 (mmcv's CPU kernels take float32 only)."""
    model = nn.Sequential()
    model.add_module('backbone', nn.Linear(4, 4))
    model.add_module('head', nn.Linear(4, 1))
    seen = {}
    for name, module in model.named_children():
        module.register_forward_hook(lambda m, i, o, name=name: seen.update({name: o.dtype}))
    wrapper = CPUAmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with wrapper.optim_context(model):
        out = model(torch.randn(2, 4))
    assert out.dtype == torch.float32 and seen == dict(backbone=torch.bfloat16, head=torch.float32)
    assert not torch.is_autocast_enabled('cpu')
    assert model(torch.randn(2, 4)).dtype == torch.float32  # hooks removed after
    bad = CPUAmpOptimWrapper(
        autocast_scope='neck', optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(
            ValueError,
            match=r"autocast_scope='neck' is not a submodule of "
            r'Sequential \(its children: backbone, head\)'):
        with bad.optim_context(model):
            pass


def test_state_dict_round_trips_the_loss_scale():
    model = _Toy(torch.randn(8, 8))
    wrapper = CPUAmpOptimWrapper(
        loss_scale=dict(init_scale=256.0, growth_interval=3),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    other = CPUAmpOptimWrapper(
        loss_scale='dynamic', optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    other.load_state_dict(wrapper.state_dict())
    assert other.loss_scaler.get_scale() == 256.0


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(dtype='float16'), ValueError, r'dtype must be bfloat16.*float16'),
    (dict(loss_scale='static'), TypeError, r"loss_scale must be None, 'dynamic'.*'static'"),
    (dict(loss_scale=True), TypeError, r'loss_scale must be.*True'),
])
def test_bad_settings_name_the_value(kwargs, error, match):
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(error, match=match):
        CPUAmpOptimWrapper(optimizer=optimizer, **kwargs)


def test_no_loss_scale_by_default():
    wrapper = CPUAmpOptimWrapper(optimizer=torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    assert not wrapper.loss_scaler.is_enabled()
    assert wrapper.cast_dtype == torch.bfloat16
