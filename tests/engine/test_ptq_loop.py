"""PTQ through tools/test.py: calibrate, save, evaluate; and its failure modes."""
import json
import math
import os
import os.path as osp
import pickle
import re
import subprocess
import sys

import pytest
import torch
from mmdet.registry import HOOKS, MODELS
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import init_default_scope

from mixaq_mmdet.analysis import paired_difference
from mixaq_mmdet.datasets import generate
from mixaq_mmdet.quantization import integer_kernels
from mixaq_mmdet.quantization.reparam import DEFAULT_REPARAM_RANGE, REPARAM_RANGES
from ..conftest import FP_BENCH_CONFIG, REPO, data_root_options, ptq_options, run_tool
from ..multiprocess import free_port

PTQ = osp.join(REPO, 'configs/benchmark/ptq')


def _metrics(log):
    return {k: float(v) for k, v in re.findall(r'(coco/\w+_mAP): (-?[0-9.]+)', log)}


def _qparams(path):
    state = torch.load(path, weights_only=False)['state_dict']
    return {k: v for k, v in state.items() if k.endswith(('.scale', '.zero_point'))}


def test_ptq_calibrates_saves_and_reevaluates_identically(tiny_shapes, fp_checkpoint, tmp_path):
    config = osp.join(PTQ, 'ptq_mixaq_w4a8a4_shapes.py')
    first = run_tool([
        'tools/test.py', config, fp_checkpoint, '--work-dir',
        str(tmp_path / 'a'), '--out',
        str(tmp_path / 'a.pkl'), '--cfg-options', *ptq_options(tiny_shapes)
    ])
    log = first.stdout + first.stderr
    assert 'PTQ: calibrated' in log and ('on 4 images (backbone scope, reparam=True, '
                                         f'reparam_range={DEFAULT_REPARAM_RANGE!r})') in log
    # BitOpsHook: the speedup at the evaluated sizes, logged with the mAP
    speedup = re.search(r'mixaq/bitops_speedup: ([0-9.]+)', log)
    assert speedup and 1.3 < float(speedup.group(1)) < 1.4
    calibrated = tmp_path / 'a' / 'calibrated.pth'
    assert calibrated.is_file()
    qparams = _qparams(calibrated)
    assert any('branches.low' in k for k in qparams)
    assert any('branches.high' in k for k in qparams)
    again = run_tool([
        'tools/test.py', config,
        str(calibrated), '--work-dir',
        str(tmp_path / 'b'), '--out',
        str(tmp_path / 'b.pkl'), '--cfg-options', *ptq_options(tiny_shapes)
    ])
    log_again = again.stdout + again.stderr
    assert 'is calibrated; evaluating it as it is' in log_again
    assert 'PTQ: calibrated' not in log_again
    assert _metrics(log) == _metrics(log_again) and 'coco/segm_mAP' in _metrics(log)
    preds_a = pickle.load(open(tmp_path / 'a.pkl', 'rb'))
    preds_b = pickle.load(open(tmp_path / 'b.pkl', 'rb'))
    assert len(preds_a) == 4
    for a, b in zip(preds_a, preds_b):
        assert torch.equal(a['pred_instances']['bboxes'], b['pred_instances']['bboxes'])


def test_quantized_predictions_differ_from_float(tiny_shapes, fp_checkpoint, tmp_path):
    """The PTQ run really quantizes: W4A4 predictions are not the FP ones."""
    run_tool([
        'tools/test.py', FP_BENCH_CONFIG, fp_checkpoint, '--work-dir',
        str(tmp_path / 'fp'), '--out',
        str(tmp_path / 'fp.pkl'), '--cfg-options', *data_root_options(tiny_shapes)
    ])
    run_tool([
        'tools/test.py',
        osp.join(PTQ, 'ptq_uniform_w4a4_shapes.py'), fp_checkpoint, '--work-dir',
        str(tmp_path / 'q'), '--out',
        str(tmp_path / 'q.pkl'), '--cfg-options', *ptq_options(tiny_shapes)
    ])
    fp = pickle.load(open(tmp_path / 'fp.pkl', 'rb'))
    q = pickle.load(open(tmp_path / 'q.pkl', 'rb'))
    assert any(a['pred_instances']['scores'].shape != b['pred_instances']['scores'].shape
               or not torch.equal(a['pred_instances']['scores'], b['pred_instances']['scores'])
               for a, b in zip(fp, q))


def test_two_gloo_processes_agree_with_one(tiny_shapes, fp_checkpoint, tmp_path):
    config = osp.join(PTQ, 'ptq_mixaq_w4a8a4_shapes.py')
    options = ptq_options(
        tiny_shapes, calib_images=8) + [
            'test_cfg.calib_dataloader.batch_size=1', 'env_cfg.dist_cfg.backend=gloo'
        ]
    # one thread, as each of the two ranks: the qparams are compared bit for bit,
    # and a thread count of its own could round the activations differently
    run_tool([
        'tools/test.py', config, fp_checkpoint, '--work-dir',
        str(tmp_path / 'one'), '--cfg-options', *options
    ],
             threads=1)
    env = dict(
        os.environ,
        PYTHONPATH=REPO,
        PYTHON=sys.executable,
        PORT=str(free_port()),
        OMP_NUM_THREADS='1')
    proc = subprocess.run([
        'bash', 'tools/dist_test.sh', config, fp_checkpoint, '2', '--work-dir',
        str(tmp_path / 'two'), '--cfg-options', *options
    ],
                          cwd=REPO,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert 'on 8 images (backbone scope, reparam=True' in proc.stdout + proc.stderr
    one = _qparams(tmp_path / 'one' / 'calibrated.pth')
    two = _qparams(tmp_path / 'two' / 'calibrated.pth')
    assert one.keys() == two.keys() and len(one) > 100
    for key in one:
        assert torch.equal(one[key], two[key]), key


def test_ptq_rejects_a_checkpoint_of_another_model(tiny_shapes, tmp_path):
    bad = tmp_path / 'resnet.pth'
    torch.save(dict(state_dict={'backbone.conv1.weight': torch.zeros(64, 3, 7, 7)}), bad)
    proc = run_tool([
        'tools/test.py',
        osp.join(PTQ, 'ptq_uniform_w4a8_shapes.py'),
        str(bad), '--work-dir',
        str(tmp_path), '--cfg-options', *ptq_options(tiny_shapes)
    ],
                    check=False)
    assert proc.returncode != 0
    # refused when the runner loads it, before mmengine's non-strict load would
    # keep the random Swin weights: no Swin key of either layout
    assert re.search(
        r'checkpoint .*resnet\.pth is in neither layout that MaskRCNN( \([^)]*\))? loads: its 1 '
        r'backbone keys \(e\.g\. backbone\.conv1\.weight\) are not', proc.stderr)


def _config(data_root, config='ptq_uniform_w4a8_shapes.py', model=None, **test_cfg):
    cfg = Config.fromfile(osp.join(PTQ, config))
    root = data_root.rstrip('/') + '/'
    cfg.test_dataloader.dataset.data_root = root
    cfg.test_dataloader.num_workers = 0
    cfg.test_dataloader.persistent_workers = False
    cfg.test_evaluator.ann_file = root + 'annotations/instances_val.json'
    cfg.test_cfg.calib_dataloader.dataset.data_root = root
    cfg.test_cfg.calib_dataloader.num_workers = 0
    cfg.test_cfg.update(test_cfg)
    if model:
        cfg.merge_from_dict(dict(model=model))
    return cfg


def _runner(data_root,
            work_dir,
            load_from,
            config='ptq_uniform_w4a8_shapes.py',
            model=None,
            **test_cfg):
    from mixaq_mmdet.engine import MixAQRunner
    cfg = _config(data_root, config, model, **test_cfg)
    cfg.work_dir = str(work_dir)
    cfg.load_from = load_from
    return MixAQRunner.from_cfg(cfg)


def test_ptq_without_checkpoint_is_an_error(tiny_shapes, tmp_path):
    with pytest.raises(ValueError, match='PTQ needs a checkpoint'):
        _runner(tiny_shapes, tmp_path, None).test()


def test_empty_and_short_calibration_sets(tiny_shapes, fp_checkpoint, tmp_path):
    empty = tmp_path / 'empty'
    generate(str(empty), num_train=1, num_val=1)
    ann = empty / 'annotations' / 'instances_train.json'
    coco = json.load(open(ann))
    coco['images'], coco['annotations'] = [], []
    json.dump(coco, open(ann, 'w'))
    with pytest.raises(
            ValueError,
            match=r'the calibration set is empty: CocoDataset '
            r'\(.*instances_train.json\) has 0 images'):
        _runner(
            tiny_shapes,
            tmp_path / 'e',
            fp_checkpoint,
            calib_dataloader=dict(dataset=dict(data_root=str(empty) + '/'))).test()
    runner = _runner(tiny_shapes, tmp_path / 's', fp_checkpoint, calib_images=50)
    runner.test()
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert '50 calibration images asked, the calibration set has only 8' in log
    assert 'on 8 images' in log


@pytest.mark.parametrize('kwargs, match', [
    (dict(calib_images=0), 'calib_images must be a positive int, got 0'),
    (dict(scope='detector'), r"test_cfg.scope='detector': the quantization scope is a "
     r"property of the model: set model=dict\(type='QuantizedDetector'"),
    (dict(compile=dict(fullgrpah=True)), r"compile has unknown torch.compile argument\(s\) "
     r"\['fullgrpah'\]; valid: fullgraph, dynamic, backend"),
    (dict(execution='int8'), r"test_cfg.execution must be one of \('fake_quant', 'integer'\), "
     r"got 'int8'"),
    (dict(reparam_range='zero'), r"test_cfg.reparam_range must be one of "
     r"\('repq_vit', 'with_zero'\), got 'zero'"),
])
def test_bad_loop_settings(tiny_shapes, fp_checkpoint, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _runner(tiny_shapes, tmp_path, fp_checkpoint, **kwargs).test()


def test_float_model_cannot_run_ptq(tiny_shapes, fp_checkpoint, tmp_path):
    from mixaq_mmdet.engine import MixAQRunner
    cfg = _config(tiny_shapes)
    cfg.model.type = 'MaskRCNN'
    for key in ('detector', 'quant_scope'):
        cfg.model.pop(key)
    cfg.model.backbone.type = 'SwinTransformer'
    for key in ('w_bits', 'a_bits', 'low_bit_ratios', 'prune_ratios', 'window_score',
                'window_order', 'quant'):
        cfg.model.backbone.pop(key)
    cfg.work_dir = str(tmp_path)
    cfg.load_from = fp_checkpoint
    with pytest.raises(ValueError, match='MaskRCNN has no quantizers'):
        MixAQRunner.from_cfg(cfg).test()


def test_quant_scope_must_be_known():
    init_default_scope('mmdet')
    cfg = Config.fromfile(osp.join(PTQ, 'ptq_uniform_w4a8_shapes.py'))
    cfg.model.quant_scope = 'neck'
    with pytest.raises(
            ValueError, match=r"quant_scope must be one of \('backbone', "
            r"'detector'\), got 'neck'"):
        MODELS.build(cfg.model)


def test_detector_scope_is_built_with_the_model_and_follows_it_to_a_device(
        tiny_shapes, fp_checkpoint, tmp_path):
    """Quantizers of the neck and heads exist when the config builds the model, so
    moving the model (the meta device stands in for a GPU) moves them too."""
    from mixaq_mmdet.quantization import QuantConv2d, QuantLinear
    runner = _runner(
        tiny_shapes, tmp_path / 'meta', fp_checkpoint, model=dict(quant_scope='detector'))
    model = runner.model
    assert isinstance(model.neck.lateral_convs[0].conv, QuantConv2d)
    assert isinstance(model.roi_head.bbox_head.shared_fcs[0], QuantLinear)
    assert isinstance(model.roi_head.mask_head.conv_logits, QuantConv2d)
    assert type(model.roi_head.mask_head.upsample).__name__ == 'ConvTranspose2d'
    assert model.rpn_head.rpn_conv.weight_quantizer.bits == 4
    assert model.neck.lateral_convs[0].conv.input_quantizer.fake_quant_enabled
    model.to('meta')
    runner.test_loop  # built after the move: the loop must not move anything back
    devices = {t.device.type for t in list(model.parameters()) + list(model.buffers())}
    assert devices == {'meta'}

    runner = _runner(
        tiny_shapes,
        tmp_path / 'cpu',
        fp_checkpoint,
        model=dict(quant_scope='detector'),
        calib_images=4)
    runner.test()
    assert runner.model.neck.lateral_convs[0].conv.input_quantizer.is_calibrated
    assert runner.model.roi_head.bbox_head.shared_fcs[0].input_quantizer.is_calibrated


def _calibrated_checkpoint(tiny_shapes, fp_checkpoint, work_dir, **model):
    runner = _runner(tiny_shapes, work_dir, fp_checkpoint, model=model, calib_images=4)
    runner.test()
    return osp.join(work_dir, 'calibrated.pth')


@pytest.fixture(scope='module')
def calibrated_w4a8(tiny_shapes, fp_checkpoint, tmp_path_factory):
    return _calibrated_checkpoint(tiny_shapes, fp_checkpoint, str(tmp_path_factory.mktemp('w4a8')))


def test_compiled_evaluation_gives_the_eager_metrics(tiny_shapes, calibrated_w4a8, tmp_path):
    import torch._dynamo as dynamo
    eager = _runner(tiny_shapes, tmp_path / 'eager', calibrated_w4a8).test()
    dynamo.reset()
    # aot_eager: the traced graph on eager kernels, so the numbers are the same bits
    runner = _runner(
        tiny_shapes, tmp_path / 'compiled', calibrated_w4a8, compile=dict(backend='aot_eager'))
    compiled = runner.test()
    dynamo.reset()
    assert runner.model.backbone._compiled_call_impl is not None
    for metrics in (compiled, eager):
        metrics.pop('mixaq/backbone_ms')  # a measured time
    assert compiled == eager and 'coco/bbox_mAP' in compiled
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert "backbone compiled with torch.compile({'backend': 'aot_eager'})" in log


def test_integer_execution_evaluates_compiled_or_not(tiny_shapes, calibrated_w4a8, tmp_path):
    """``test_cfg.execution='integer'`` converts the calibrated model before
    evaluating; compiled (aot_eager: the traced graph on eager kernels) it
    gives the eager integer metrics; the backbone's measured time per image is
    reported with them."""
    import torch._dynamo as dynamo
    runner = _runner(tiny_shapes, tmp_path / 'eager', calibrated_w4a8, execution='integer')
    eager = runner.test()
    assert set(integer_kernels(runner.model.backbone).values()) == {'onednn'}
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert 'PTQ: quantized products run on integer kernels (onednn)' in log
    assert eager['mixaq/backbone_ms'] > 0 and 'mixaq/backbone_ms' in log
    dynamo.reset()
    compiled_runner = _runner(
        tiny_shapes,
        tmp_path / 'compiled',
        calibrated_w4a8,
        execution='integer',
        compile=dict(backend='aot_eager'))
    compiled = compiled_runner.test()
    dynamo.reset()
    assert compiled_runner.model.backbone._compiled_call_impl is not None
    metrics = [k for k in eager if k.startswith('coco/')]
    assert metrics and all(compiled[k] == eager[k] for k in metrics)


def test_calibrated_checkpoint_records_its_setting(calibrated_w4a8):
    meta = torch.load(calibrated_w4a8, weights_only=False)['meta']
    assert meta['mixaq'] == dict(
        w_bits=4,
        a_bits=[8, 8],
        low_bit_ratios=[0.0] * 4,
        prune_ratios=[0.0] * 4,
        window_score='l2',
        window_order='importance',
        window_seed=0,
        quant_scope='backbone',
        reparam=True,
        reparam_range=DEFAULT_REPARAM_RANGE)
    assert meta['calib_images'] == 4


def _other_range(reparam_range):
    return next(r for r in REPARAM_RANGES if r != reparam_range)


def test_calibrated_checkpoint_under_another_reparam_range_is_refused(tiny_shapes, calibrated_w4a8,
                                                                      tmp_path):
    other = _other_range(DEFAULT_REPARAM_RANGE)
    runner = _runner(tiny_shapes, tmp_path, calibrated_w4a8, reparam_range=other)
    with pytest.raises(
            ValueError,
            match=f"was calibrated for another setting \\(reparam_range: checkpoint "
            f"'{DEFAULT_REPARAM_RANGE}', config '{other}'\\)"):
        runner.test()


def test_checkpoint_without_reparam_range_was_calibrated_with_zero(tiny_shapes, calibrated_w4a8,
                                                                   tmp_path):
    """A checkpoint written before ``reparam_range`` existed folded the ranges
    widened to include 0: it passes the check under 'with_zero' only."""
    checkpoint = torch.load(calibrated_w4a8, weights_only=False)
    del checkpoint['meta']['mixaq']['reparam_range']
    old = str(tmp_path / 'old.pth')
    torch.save(checkpoint, old)
    runner = _runner(tiny_shapes, tmp_path / 'ok', old, reparam_range='with_zero')
    runner.load_checkpoint(old)
    assert runner.test_loop.check_checkpoint()
    runner = _runner(tiny_shapes, tmp_path / 'refused', old, reparam_range='repq_vit')
    runner.load_checkpoint(old)
    with pytest.raises(
            ValueError, match="reparam_range: checkpoint 'with_zero', config 'repq_vit'"):
        runner.test_loop.check_checkpoint()


def test_calibrated_checkpoint_under_other_bits_is_refused(tiny_shapes, calibrated_w4a8, tmp_path):
    runner = _runner(tiny_shapes, tmp_path, calibrated_w4a8, 'ptq_uniform_w4a4_shapes.py')
    with pytest.raises(
            ValueError,
            match=r"UniformQuantizer 'backbone\.patch_embed\."
            r"projection\.input_quantizer': the checkpoint was calibrated for "
            r"kind='uniform', bits=8.*this model has kind='uniform', bits=4"):
        runner.test()


@pytest.mark.parametrize('model, match', [
    (dict(backbone=dict(w_bits=3)), r"the checkpoint was calibrated for .*bits=4"),
    (dict(quant_scope='detector'),
     r"calibrated with quant_scope='backbone'\) does not fit the model "
     r"\(quant_scope='detector'\): it has no state for \d+ of the model's quantizers"),
])
def test_calibrated_checkpoint_under_another_setting_is_refused(tiny_shapes, calibrated_w4a8,
                                                                tmp_path, model, match):
    runner = _runner(tiny_shapes, tmp_path, calibrated_w4a8, model=model)
    with pytest.raises(ValueError, match=match):
        runner.test()


def test_detector_scope_checkpoint_under_backbone_scope_is_refused(tiny_shapes, fp_checkpoint,
                                                                   tmp_path):
    checkpoint = _calibrated_checkpoint(
        tiny_shapes, fp_checkpoint, str(tmp_path / 'det'), quant_scope='detector')
    runner = _runner(tiny_shapes, tmp_path / 'bb', checkpoint)
    with pytest.raises(
            ValueError,
            match=r"calibrated with quant_scope='detector'\) does not "
            r"fit the model \(quant_scope='backbone'\): it has \d+ quantizers the "
            r"model does not have \(e.g. neck\."):
        runner.test()


class _CountCalls:

    def __init__(self):
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1


def test_evaluating_a_calibrated_checkpoint_builds_no_calibration_data(
        tiny_shapes, calibrated_w4a8, tmp_path):
    """The calibration set is never built, so a missing one is no error."""
    runner = _runner(
        tiny_shapes,
        tmp_path,
        calibrated_w4a8,
        calib_dataloader=dict(dataset=dict(ann_file='missing.json')))
    metrics = runner.test()
    assert 'coco/bbox_mAP' in metrics


def test_other_ratios_are_logged_and_an_uncalibrated_branch_raises(tiny_shapes, calibrated_w4a8,
                                                                   tmp_path):
    """Ratios and the window order may change after calibration; windows routed
    to a branch that was never calibrated (here: the low branch of a uniform
    model) raise."""
    runner = _runner(
        tiny_shapes,
        tmp_path,
        calibrated_w4a8,
        model=dict(backbone=dict(low_bit_ratios=0.5, window_order='reverse')))
    with pytest.raises(
            RuntimeError,
            match=r"'backbone\.stages\.\d\.blocks\.\d\.branches\."
            r"low\..*': fake quantization is on but the quantizer is not "
            r"calibrated"):
        runner.test()
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert ("low_bit_ratios=[0.5, 0.5, 0.5, 0.5] differs from the checkpoint's "
            "([0.0, 0.0, 0.0, 0.0])") in log
    assert "window_order='reverse' differs from the checkpoint's ('importance')" in log


def test_backbone_scope_calibration_runs_only_the_backbone(tiny_shapes, fp_checkpoint, tmp_path):
    runner = _runner(tiny_shapes, tmp_path, fp_checkpoint, calib_images=4)
    loop = runner.test_loop
    runner.load_checkpoint(fp_checkpoint)
    backbone, neck = _CountCalls(), _CountCalls()
    runner.model.backbone.register_forward_hook(backbone)
    runner.model.neck.register_forward_hook(neck)
    assert loop.calibrate() == 4
    assert backbone.calls == 2 and neck.calls == 0  # 4 images, batch 4, two passes


@HOOKS.register_module(force=True)
class _RecordCalibrationState(Hook):
    """Records whether any quantizer was calibrated when before_test_epoch ran."""
    seen = []

    def before_test_epoch(self, runner) -> None:
        from mixaq_mmdet.quantization import quantizers_of
        type(self).seen.append(any(q.is_calibrated for q in quantizers_of(runner.model)))


def test_calibration_runs_after_the_before_test_hooks(tiny_shapes, fp_checkpoint, tmp_path):
    """A hook that swaps weights before testing (EMA) acts before the fold."""
    from mixaq_mmdet.engine import MixAQRunner
    cfg = _config(tiny_shapes, calib_images=4)
    cfg.custom_hooks = cfg.custom_hooks + [dict(type='_RecordCalibrationState')]
    cfg.work_dir = str(tmp_path)
    cfg.load_from = fp_checkpoint
    _RecordCalibrationState.seen.clear()
    MixAQRunner.from_cfg(cfg).test()
    assert _RecordCalibrationState.seen == [False]


def test_child_config_overrides_the_calibration_dataloader(tmp_path):
    child = tmp_path / 'child.py'
    child.write_text(f"_base_ = '{osp.join(PTQ, 'ptq_uniform_w4a4_shapes.py')}'\n"
                     'test_cfg = dict(calib_dataloader=dict(batch_size=1), calib_images=8)\n')
    cfg = Config.fromfile(str(child))
    assert cfg.test_cfg.calib_dataloader.batch_size == 1
    assert cfg.test_cfg.calib_images == 8
    assert cfg.test_cfg.calib_dataloader.dataset.ann_file == 'annotations/instances_train.json'
    assert 'calib_dataloader' not in cfg


@pytest.fixture(scope='module')
def trained_small(tmp_path_factory):
    """A briefly trained benchmark model (96 train / 24 val images, 8 epochs)."""
    root = str(tmp_path_factory.mktemp('shapes_small'))
    generate(root, num_train=96, num_val=24, seed=1)
    work_dir = str(tmp_path_factory.mktemp('train_small'))
    run_tool([
        'tools/train.py', FP_BENCH_CONFIG, '--work-dir', work_dir, '--cfg-options',
        *data_root_options(root), 'train_cfg.max_epochs=8', 'train_cfg.val_interval=8',
        'param_scheduler.1.end=8', 'default_hooks.checkpoint.interval=8'
    ],
             timeout=1200)
    return root, osp.join(work_dir, 'epoch_8.pth')


def _neck_features(model, batch):
    with torch.no_grad():
        inputs = model.data_preprocessor(batch, False)['inputs']
        return list(model.extract_feat(inputs))


def test_w8a8_ptq_stays_close_to_fp(trained_small, tmp_path):
    """W8A8 PTQ of a trained model computes nearly the FP function, measured so
    that neither the machine's float rounding nor the noise of a 24-image val
    split decides the outcome (a fixed 1-point mAP tolerance failed on one
    machine at 37.6 FP against 36.3 W8A8).

    Fidelity (the sharp check): the SQNR of the neck's features (every FPN
    level, summed) of the calibrated W8A8 model against the FP checkpoint's,
    per val image, ``-10 log10(mean |f_q - f_fp|^2 / |f_fp|^2)``. It covers the
    reparameterization fold and every quantizer of the backbone. Its noise:
    float rounding moves it by less than 1e-4 dB (1 and 2 threads agree to 4
    decimals); six W8A8 calibrations (models of training seeds 0, 1, 2, i.e.
    what another machine's rounding may train, and three more calibration
    draws of model 0) measured 31.7 to 36.9 dB, mean 33.3, standard deviation
    1.9. The threshold, 24 dB (noise power at most 0.4 % of the features'),
    lies 5 deviations below that mean. Broken quantization falls below it:
    W4A4 PTQ of model 0 measures 15.0 dB and W4A8 18.3 (4-bit weights; 24.6 and
    25.2 on models 1 and 2), an uncalibrated or wrongly folded quantizer far less.

    Accuracy (the task-level claim, a guard against breakage): the paired bbox
    mAP difference W8A8 - FP on the same 24 val images (:func:`paired_difference`,
    standard error from 5 folds of about 5 images) must lie within
    ``4.6 * std_error + 2`` points. 4.6 is the two-sided 99 % quantile of
    Student's t with the folds' 4 degrees of freedom (the standard error is
    itself estimated from 5 values). The 2-point floor covers the noise the
    folds do not see, the calibration draw and the trained model: over the four
    calibration draws of model 0, models 1 and 2 and the failing machine's model
    the difference was 0.01, 0.22, 0.19, 0.99, -0.26, -0.08 and -1.3 points
    (root mean square 0.64; the floor is 3 of it). On 24 images mAP barely
    separates moderate quantization noise (W4A4 lost 0.2 points where its SQNR
    lost 18 dB), so this check is for a broken model (mAP near 0, from about
    37), and the SQNR for fidelity.
    """
    root, checkpoint = trained_small
    fp = run_tool([
        'tools/test.py', FP_BENCH_CONFIG, checkpoint, '--work-dir',
        str(tmp_path / 'fp'), '--cfg-options', *data_root_options(root),
        f'test_evaluator.outfile_prefix={tmp_path}/fp'
    ])
    q = run_tool([
        'tools/test.py',
        osp.join(PTQ, 'ptq_uniform_w8a8_shapes.py'), checkpoint, '--work-dir',
        str(tmp_path / 'w8a8'), '--cfg-options', *ptq_options(root, calib_images=16),
        f'test_evaluator.outfile_prefix={tmp_path}/w8a8'
    ])
    fp_map = _metrics(fp.stdout + fp.stderr)['coco/bbox_mAP']
    q_map = _metrics(q.stdout + q.stderr)['coco/bbox_mAP']
    # 0.05 is far below what 8 epochs reach (about 0.37): the model detects shapes
    assert fp_map > 0.05, f'the briefly trained model must detect something ({fp_map})'

    ann = osp.join(root, 'annotations', 'instances_val.json')
    diff = paired_difference(ann, json.load(open(tmp_path / 'w8a8.bbox.json')),
                             json.load(open(tmp_path / 'fp.bbox.json')))
    # the predictions the logged mAPs came from (those are rounded to 0.001)
    assert diff.mean == pytest.approx(100 * (q_map - fp_map), abs=0.11)
    bound = 4.6 * diff.std_error + 2.0
    assert abs(diff.mean) <= bound, (fp_map, q_map, diff, bound)

    # fidelity: the calibrated W8A8 model, loaded as tools/test.py loads it
    from mmengine.runner import load_checkpoint

    from mixaq_mmdet.compat import checkpoint_types_allowed
    from mixaq_mmdet.engine import MixAQRunner, prepare_test_loop
    cfg = _config(root, 'ptq_uniform_w8a8_shapes.py')
    cfg.work_dir, cfg.load_from = str(tmp_path / 'fidelity'), str(tmp_path / 'w8a8' /
                                                                  'calibrated.pth')
    loop = prepare_test_loop(MixAQRunner.from_cfg(cfg))
    quantized = loop.model.eval()
    init_default_scope('mmdet')
    float_model = MODELS.build(Config.fromfile(FP_BENCH_CONFIG).model)
    with checkpoint_types_allowed():  # a runner checkpoint, loaded outside the runner
        load_checkpoint(float_model, checkpoint, map_location='cpu')
    float_model.eval()
    ratios = []
    for batch in loop.dataloader:
        err = energy = 0
        for f_q, f in zip(_neck_features(quantized, batch), _neck_features(float_model, batch)):
            err = err + (f_q - f).double().pow(2).flatten(1).sum(1)
            energy = energy + f.double().pow(2).flatten(1).sum(1)
        ratios.extend((err / energy).tolist())
    assert len(ratios) == 24
    sqnr = -10 * math.log10(sum(ratios) / len(ratios))
    print(f'W8A8: bbox mAP {q_map} vs FP {fp_map}, paired {diff}, bound {bound:.2f}; '
          f'neck SQNR {sqnr:.2f} dB')
    assert sqnr >= 24.0, (sqnr, fp_map, q_map, diff)
