"""QAT and SAQA as mmdet training runs: initialization, optimizer groups,
random ratios, resume, DDP, and their failure modes."""
import os.path as osp
import re

import pytest
import torch
from mmdet.registry import HOOKS
from mmengine.config import Config
from mmengine.hooks import Hook

from mixaq_mmdet.engine import MixAQRunner, SAQAHook
from mixaq_mmdet.quantization import LSQQuantizer, quantizers_of
from ..conftest import FP_BENCH_CONFIG, REPO, data_root_options, run_tool
from ..multiprocess import free_port

QAT = osp.join(REPO, 'configs/benchmark/qat')


def _config(data_root: str,
            work_dir,
            load_from,
            config='qat_uniform_w4a4_shapes.py',
            epochs: int = 1) -> Config:
    """A QAT benchmark config on the tiny split: 2 iterations per epoch, no
    workers, 4 calibration images, no validation."""
    cfg = Config.fromfile(osp.join(QAT, config))
    root = data_root.rstrip('/') + '/'
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = root
        loader.num_workers = 0
        loader.persistent_workers = False
    cfg.val_evaluator.ann_file = cfg.test_evaluator.ann_file = \
        root + 'annotations/instances_val.json'
    for hook in cfg.custom_hooks:
        if hook.type == 'QATInitHook':
            hook.calib_dataloader.dataset.data_root = root
            hook.calib_dataloader.num_workers = 0
            hook.calib_images = 4
    cfg.test_cfg.calib_dataloader.dataset.data_root = root
    cfg.test_cfg.calib_dataloader.num_workers = 0
    cfg.train_cfg.max_epochs = epochs
    cfg.train_cfg.val_interval = 100
    cfg.param_scheduler[0].end = 1
    cfg.param_scheduler[1].end = epochs
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.max_keep_ckpts = 5
    cfg.optim_wrapper.optimizer.lr = 1e-3  # visible changes in 2 iterations
    cfg.work_dir = str(work_dir)
    cfg.load_from = load_from
    return cfg


@HOOKS.register_module(force=True)
class _RecordState(Hook):
    """Records the model's state after the QAT initialization, and the
    backbone's ratios in every training iteration."""

    priority = 'LOW'
    records = {}

    def before_train(self, runner):
        model = runner.model
        type(self).records['init'] = {
            k: v.detach().clone()
            for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)
        }
        type(self).records['iters'] = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        type(self).records['iters'].append(list(runner.model.backbone.low_bit_ratios))


@pytest.fixture(scope='module')
def qat_run(tiny_shapes, fp_checkpoint, tmp_path_factory):
    """Uniform W4A4 QAT from the FP checkpoint: 1 epoch, 2 iterations."""
    work_dir = tmp_path_factory.mktemp('qat')
    cfg = _config(tiny_shapes, work_dir, fp_checkpoint)
    cfg.custom_hooks.append(dict(type='_RecordState'))
    runner = MixAQRunner.from_cfg(cfg)
    runner.train()
    return runner, dict(_RecordState.records)


def test_qat_calibrates_new_quantizers_then_learns_them(qat_run):
    runner, records = qat_run
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert 'QAT: calibrated 104 quantizers on 4 images (backbone scope' in log
    model = runner.model
    high = [q for q in quantizers_of(model) if '.low.' not in q.name]
    assert high and all(q.is_calibrated for q in high)
    assert all(isinstance(q, LSQQuantizer) for q in high if q.kind == 'uniform')
    state = model.state_dict()
    init = {k: v for k, v in records['init'].items() if k.endswith(('.scale', '.zero_point'))}
    assert init and set(init) <= set(state)
    learned = [k for k in init if not torch.equal(init[k], state[k])]
    # gradients reached the step sizes (and zero points) of both weights and activations
    assert any('weight_quantizer' in k for k in learned)
    assert any('branches.high' in k for k in learned)


def test_quantizer_parameters_get_no_weight_decay(qat_run):
    """Quantizer parameters get none; the others follow mmdet's Swin groups
    (no decay for norms and position tables, the configured decay elsewhere)."""
    runner, _ = qat_run
    optimizer = runner.optim_wrapper.optimizer
    decays = {id(p): g['weight_decay'] for g in optimizer.param_groups for p in g['params']}
    quant_params = {id(p) for q in quantizers_of(runner.model) for p in q.parameters()}
    assert quant_params and all(decays[i] == 0.0 for i in quant_params)
    named = dict(runner.model.named_parameters())
    assert decays[id(named['backbone.stages.0.blocks.0.attn.w_msa.qkv.weight'])] == 0.05
    assert decays[id(named['backbone.stages.0.blocks.0.norm1_low.weight'])] == 0.0
    assert len(decays) == len(named)  # every parameter in exactly one group


def test_checkpoints_record_the_setting_and_test_tool_evaluates_them(qat_run, tiny_shapes,
                                                                     tmp_path):
    runner, _ = qat_run
    path = osp.join(runner.work_dir, 'epoch_1.pth')
    meta = torch.load(path, weights_only=False)['meta']
    assert meta['mixaq']['a_bits'] == [4, 4] and meta['mixaq']['reparam'] is False
    assert 'random_state' in meta
    config = osp.join(QAT, 'qat_uniform_w4a4_shapes.py')
    root = tiny_shapes.rstrip('/') + '/'
    proc = run_tool([
        'tools/test.py', config, path, '--work-dir',
        str(tmp_path), '--cfg-options', *data_root_options(tiny_shapes),
        f'test_cfg.calib_dataloader.dataset.data_root={root}'
    ])
    log = proc.stdout + proc.stderr
    assert 'is calibrated; evaluating it as it is' in log
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log)
    # the W4A3 config refuses the W4A4 checkpoint, naming the bits
    other = run_tool([
        'tools/test.py',
        osp.join(QAT, 'qat_uniform_w4a3_shapes.py'), path, '--work-dir',
        str(tmp_path / 'w4a3'), '--cfg-options', *data_root_options(tiny_shapes),
        f'test_cfg.calib_dataloader.dataset.data_root={root}'
    ],
                     check=False)
    assert other.returncode != 0 and 'bits=4 (model: 3)' in other.stderr


def test_saqa_from_the_qat_checkpoint(qat_run, tiny_shapes, tmp_path):
    """The low branch starts from the high LayerNorms and is calibrated; the
    high branch keeps its learned step sizes; ratios change every iteration and
    the configured ones are back afterwards."""
    qat_runner, _ = qat_run
    w4a4 = osp.join(qat_runner.work_dir, 'epoch_1.pth')
    cfg = _config(tiny_shapes, tmp_path, w4a4, 'qat_saqa_w4a4a2_shapes.py')
    cfg.custom_hooks.append(dict(type='_RecordState'))
    runner = MixAQRunner.from_cfg(cfg)
    runner.train()
    init = _RecordState.records['init']
    loaded = torch.load(w4a4, weights_only=False)['state_dict']
    high = [k for k in init if 'branches.high' in k or 'weight_quantizer' in k]
    assert high and all(torch.equal(init[k], loaded[k]) for k in high)
    model = runner.model
    assert all(q.is_calibrated for q in quantizers_of(model))
    low_bits = {q.bits for q in quantizers_of(model) if '.low.' in q.name}
    assert low_bits == {2}
    for key in ('norm1', 'norm2'):
        prefix = f'backbone.stages.0.blocks.0.{key}'
        assert torch.equal(init[f'{prefix}_low.weight'], init[f'{prefix}.weight'])
        assert not torch.equal(init[f'{prefix}_low.weight'], loaded[f'{prefix}_low.weight'])
    draws = _RecordState.records['iters']
    assert len(draws) == 2 and draws[0] != draws[1]
    assert all(0 <= r <= 0.8 for d in draws for r in d)
    # the config names no SAQA seed: the draws follow the run's randomness.seed
    assert [h.seed for h in runner.hooks if isinstance(h, SAQAHook)] == [runner.seed] == [0]
    assert draws[0] == SAQAHook(seed=0).ratios(model.backbone.num_pairs, 0)[0]
    assert model.backbone.low_bit_ratios == [0.0] * 4  # configured, restored


class _Interrupted(Exception):
    pass


@HOOKS.register_module(force=True)
class _InterruptAfterFirstEpoch(Hook):
    """Stops training after the first epoch's checkpoint is written."""

    priority = 'LOWEST'  # after CheckpointHook

    def after_train_epoch(self, runner):
        raise _Interrupted


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(qat_run, tiny_shapes, tmp_path):
    """SAQA (random ratios, random flips, RoI sampling) over 2 epochs, straight
    through and interrupted after epoch 1."""
    w4a4 = osp.join(qat_run[0].work_dir, 'epoch_1.pth')

    def config(work_dir):
        return _config(tiny_shapes, work_dir, w4a4, 'qat_saqa_w4a4a2_shapes.py', epochs=2)

    straight = MixAQRunner.from_cfg(config(tmp_path / 'a'))
    straight.train()
    cfg = config(tmp_path / 'b')
    cfg.custom_hooks.append(dict(type='_InterruptAfterFirstEpoch'))
    with pytest.raises(_Interrupted):
        MixAQRunner.from_cfg(cfg).train()
    cfg = config(tmp_path / 'b')
    cfg.resume, cfg.load_from = True, None  # tools/train.py --resume
    resumed = MixAQRunner.from_cfg(cfg)
    resumed.train()
    log = open(osp.join(resumed.log_dir, f'{resumed.timestamp}.log')).read()
    assert 'resumed epoch: 1, iter: 2' in log and 'random generators restored' in log
    assert 'QAT: resumed at iteration 2; quantizers as saved' in log
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    different = [k for k in a if isinstance(a[k], torch.Tensor) and not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    changed = [
        k for k, v in torch.load(w4a4, weights_only=False)['state_dict'].items()
        if k.endswith('.scale') and 'branches.high' in k and not torch.equal(v, a[k])
    ]
    assert changed  # the runs trained something


def test_saqa_trains_under_ddp_with_two_gloo_processes(qat_run, tiny_shapes, tmp_path):
    """tools/train.py --launcher pytorch with mmengine's DDP defaults
    (find_unused_parameters=False) while the ratios change every iteration."""
    w4a4 = osp.join(qat_run[0].work_dir, 'epoch_1.pth')
    root = tiny_shapes.rstrip('/') + '/'
    proc = run_tool([
        '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
        str(free_port()), 'tools/train.py',
        osp.join(QAT, 'qat_saqa_w4a4a2_shapes.py'), '--launcher', 'pytorch', '--work-dir',
        str(tmp_path), '--cfg-options', *data_root_options(tiny_shapes), f'load_from={w4a4}',
        f'custom_hooks.0.calib_dataloader.dataset.data_root={root}',
        'custom_hooks.0.calib_dataloader.num_workers=0', 'custom_hooks.0.calib_images=4',
        'train_dataloader.batch_size=2', 'train_cfg.max_epochs=2', 'train_cfg.val_interval=100',
        'param_scheduler.0.end=1', 'param_scheduler.1.end=2'
    ],
                    threads=1)
    log = proc.stdout + proc.stderr
    assert 'QAT: calibrated 64 quantizers on 4 images' in log
    assert 'Epoch(train) [2][2/2]' in log
    state = torch.load(tmp_path / 'epoch_2.pth', weights_only=False)['state_dict']
    assert any('branches.low' in k and k.endswith('.scale') for k in state)


def test_non_learnable_quantizers_and_float_models_are_refused(tiny_shapes, fp_checkpoint,
                                                               tmp_path):
    cfg = _config(tiny_shapes, tmp_path / 'u', fp_checkpoint)
    cfg.model.backbone.act_quantizer = dict(type='UniformQuantizer', calib='percentile_mse')
    with pytest.raises(
            ValueError,
            match=r"quantizers cannot learn their step size \(e.g. "
            r"UniformQuantizer 'backbone.*' is a UniformQuantizer\): QAT needs"):
        MixAQRunner.from_cfg(cfg).train()
    cfg = _config(tiny_shapes, tmp_path / 'f', fp_checkpoint)
    cfg.model.backbone.quant = False
    with pytest.raises(
            ValueError,
            match='fake quantization off .* QAT would train the '
            'float model; build the backbone with quant=True'):
        MixAQRunner.from_cfg(cfg).train()


def test_load_from_another_model_is_refused(tiny_shapes, tmp_path):
    bad = tmp_path / 'resnet.pth'
    torch.save(dict(state_dict={'backbone.conv1.weight': torch.zeros(64, 3, 7, 7)}), bad)
    cfg = _config(tiny_shapes, tmp_path / 'r', str(bad))
    with pytest.raises(
            ValueError,
            match=r'resnet\.pth does not fit MaskRCNN: \d+ of its '
            r'\d+ float weights are missing'):
        MixAQRunner.from_cfg(cfg).train()


def test_saqa_needs_two_branch_blocks_and_a_calibrated_low_branch(tiny_shapes, qat_run,
                                                                  fp_checkpoint, tmp_path):
    cfg = _config(tiny_shapes, tmp_path / 'w', fp_checkpoint)
    cfg.custom_hooks.append(dict(type='SAQAHook'))  # low branch never calibrated
    with pytest.raises(
            ValueError,
            match=r'quantizers are not calibrated \(e.g. '
            r".*branches.low.*\): set QATInitHook.calib_low_bit_ratios"):
        MixAQRunner.from_cfg(cfg).train()
    cfg = Config.fromfile(FP_BENCH_CONFIG)
    root = tiny_shapes.rstrip('/') + '/'
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = root
    cfg.work_dir = str(tmp_path / 'fp')
    cfg.custom_hooks = [dict(type='SAQAHook')]
    runner = MixAQRunner.from_cfg(cfg)
    with pytest.raises(
            ValueError,
            match="SAQAHook needs a backbone with Two-Branch blocks "
            r"\(type='MixAQSwinTransformer'\), got SwinTransformer"):
        runner.call_hook('before_train')


@pytest.mark.parametrize('kwargs, match', [
    (dict(max_ratio=0.9), r'max_ratio must be in \(0, 0.8\], got 0.9'),
    (dict(prune_max_ratio=1.0), r'prune_max_ratio: max_ratio must be in \(0, 0.8\], got 1.0'),
    (dict(concentration=-1), 'concentration must be positive, got -1'),
])
def test_bad_saqa_settings_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SAQAHook(**kwargs)


def test_saqa_prune_ratios_leave_room_for_the_low_ratios():
    hook = SAQAHook(seed=3, prune_max_ratio=0.4)
    for it in range(200):
        low, prune = hook.ratios(4, it)
        assert max(prune) <= 0.4 and max(low) <= 0.8
        assert all(r + p <= 1.0 + 1e-12 for r, p in zip(low, prune))
    assert hook.ratios(4, 7) == SAQAHook(seed=3, prune_max_ratio=0.4).ratios(4, 7)
    assert SAQAHook(seed=3).ratios(4, 7)[1] == [0.0] * 4


def test_optimizer_constructor_settings():
    from mixaq_mmdet.engine import QATOptimWrapperConstructor
    with pytest.raises(
            ValueError,
            match=r'paramwise_cfg.quantizer_decay_mult must be a '
            r'non-negative number, got -1'):
        QATOptimWrapperConstructor(
            dict(optimizer=dict(type='SGD', lr=0.1)), dict(quantizer_decay_mult=-1))
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), LSQQuantizer(4))
    wrapper = QATOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1, weight_decay=0.01)),
        dict(quantizer_lr_mult=0.5))(
            model)
    groups = {id(p): g for g in wrapper.optimizer.param_groups for p in g['params']}
    for p in model[1].parameters():
        assert groups[id(p)]['weight_decay'] == 0 and groups[id(p)]['lr'] == 0.05
    assert groups[id(model[0].weight)]['weight_decay'] == 0.01
