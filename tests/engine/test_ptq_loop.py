"""PTQ through tools/test.py: calibrate, save, evaluate; and its failure modes."""
import json
import os
import os.path as osp
import pickle
import re
import subprocess
import sys

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mixaq_mmdet.datasets import generate

from ..conftest import FP_BENCH_CONFIG, REPO, data_root_options, run_tool

PTQ = osp.join(REPO, 'configs/benchmark/ptq')


def _ptq_options(data_root, calib_images=4):
    root = data_root.rstrip('/') + '/'
    return data_root_options(data_root) + [
        f'test_cfg.calib_dataloader.dataset.data_root={root}',
        f'test_cfg.calib_images={calib_images}',
        'test_cfg.calib_dataloader.num_workers=0',
    ]


def _metrics(log):
    return {k: float(v) for k, v in re.findall(r'(coco/\w+_mAP): (-?[0-9.]+)', log)}


def _qparams(path):
    state = torch.load(path, weights_only=False)['state_dict']
    return {k: v for k, v in state.items() if k.endswith(('.scale', '.zero_point'))}


@pytest.fixture(scope='module')
def fp_checkpoint(tmp_path_factory):
    """An FP benchmark detector with random weights (plumbing, not accuracy)."""
    path = str(tmp_path_factory.mktemp('fp') / 'fp.pth')
    init_default_scope('mmdet')
    cfg = Config.fromfile(FP_BENCH_CONFIG)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save(dict(state_dict=model.state_dict(), meta={}), path)
    return path


def test_ptq_calibrates_saves_and_reevaluates_identically(tiny_shapes, fp_checkpoint,
                                                          tmp_path):
    config = osp.join(PTQ, 'ptq_mixaq_w4a8a4_shapes.py')
    first = run_tool(['tools/test.py', config, fp_checkpoint, '--work-dir',
                      str(tmp_path / 'a'), '--out', str(tmp_path / 'a.pkl'),
                      '--cfg-options', *_ptq_options(tiny_shapes)])
    log = first.stdout + first.stderr
    assert 'PTQ: calibrated' in log and 'on 4 images (backbone scope, reparam=True)' in log
    # BitOpsHook: the speedup at the evaluated sizes, logged with the mAP
    speedup = re.search(r'mixaq/bitops_speedup: ([0-9.]+)', log)
    assert speedup and 1.3 < float(speedup.group(1)) < 1.4
    calibrated = tmp_path / 'a' / 'calibrated.pth'
    assert calibrated.is_file()
    qparams = _qparams(calibrated)
    assert any('branches.low' in k for k in qparams)
    assert any('branches.high' in k for k in qparams)
    again = run_tool(['tools/test.py', config, str(calibrated), '--work-dir',
                      str(tmp_path / 'b'), '--out', str(tmp_path / 'b.pkl'),
                      '--cfg-options', *_ptq_options(tiny_shapes)])
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
    run_tool(['tools/test.py', FP_BENCH_CONFIG, fp_checkpoint, '--work-dir',
              str(tmp_path / 'fp'), '--out', str(tmp_path / 'fp.pkl'),
              '--cfg-options', *data_root_options(tiny_shapes)])
    run_tool(['tools/test.py', osp.join(PTQ, 'ptq_uniform_w4a4_shapes.py'), fp_checkpoint,
              '--work-dir', str(tmp_path / 'q'), '--out', str(tmp_path / 'q.pkl'),
              '--cfg-options', *_ptq_options(tiny_shapes)])
    fp = pickle.load(open(tmp_path / 'fp.pkl', 'rb'))
    q = pickle.load(open(tmp_path / 'q.pkl', 'rb'))
    assert any(a['pred_instances']['scores'].shape != b['pred_instances']['scores'].shape
               or not torch.equal(a['pred_instances']['scores'], b['pred_instances']['scores'])
               for a, b in zip(fp, q))


def test_two_gloo_processes_agree_with_one(tiny_shapes, fp_checkpoint, tmp_path):
    config = osp.join(PTQ, 'ptq_mixaq_w4a8a4_shapes.py')
    options = _ptq_options(tiny_shapes, calib_images=8) + [
        'test_cfg.calib_dataloader.batch_size=1', 'env_cfg.dist_cfg.backend=gloo']
    run_tool(['tools/test.py', config, fp_checkpoint, '--work-dir', str(tmp_path / 'one'),
              '--cfg-options', *options])
    env = dict(os.environ, PYTHONPATH=REPO, PYTHON=sys.executable, PORT='29517',
               OMP_NUM_THREADS='1')
    proc = subprocess.run(['bash', 'tools/dist_test.sh', config, fp_checkpoint, '2',
                           '--work-dir', str(tmp_path / 'two'), '--cfg-options', *options],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'on 8 images (backbone scope, reparam=True)' in proc.stdout + proc.stderr
    one = _qparams(tmp_path / 'one' / 'calibrated.pth')
    two = _qparams(tmp_path / 'two' / 'calibrated.pth')
    assert one.keys() == two.keys() and len(one) > 100
    for key in one:
        assert torch.equal(one[key], two[key]), key


def test_ptq_rejects_a_checkpoint_of_another_model(tiny_shapes, tmp_path):
    bad = tmp_path / 'resnet.pth'
    torch.save(dict(state_dict={'backbone.conv1.weight': torch.zeros(64, 3, 7, 7)}), bad)
    proc = run_tool(['tools/test.py', osp.join(PTQ, 'ptq_uniform_w4a8_shapes.py'), str(bad),
                     '--work-dir', str(tmp_path), '--cfg-options',
                     *_ptq_options(tiny_shapes)], check=False)
    assert proc.returncode != 0
    assert re.search(r'checkpoint .*resnet\.pth does not fit MaskRCNN: \d+ of its \d+ '
                     r'float weights are missing', proc.stderr)


def _runner(data_root, work_dir, load_from, **test_cfg):
    from mmengine.runner import Runner
    cfg = Config.fromfile(osp.join(PTQ, 'ptq_uniform_w4a8_shapes.py'))
    root = data_root.rstrip('/') + '/'
    cfg.test_dataloader.dataset.data_root = root
    cfg.test_dataloader.num_workers = 0
    cfg.test_dataloader.persistent_workers = False
    cfg.test_evaluator.ann_file = root + 'annotations/instances_val.json'
    cfg.test_cfg.calib_dataloader.dataset.data_root = root
    cfg.test_cfg.calib_dataloader.num_workers = 0
    cfg.test_cfg.update(test_cfg)
    cfg.work_dir = str(work_dir)
    cfg.load_from = load_from
    return Runner.from_cfg(cfg)


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
    with pytest.raises(ValueError, match=r'the calibration set is empty: CocoDataset '
                       r'\(.*instances_train.json\) has 0 images'):
        _runner(tiny_shapes, tmp_path / 'e', fp_checkpoint,
                calib_dataloader=dict(dataset=dict(data_root=str(empty) + '/'))).test()
    runner = _runner(tiny_shapes, tmp_path / 's', fp_checkpoint, calib_images=50)
    runner.test()
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert '50 calibration images asked, the calibration set has only 8' in log
    assert 'on 8 images' in log


@pytest.mark.parametrize('kwargs, match', [
    (dict(calib_images=0), 'calib_images must be a positive int, got 0'),
    (dict(scope='neck'), "scope must be one of .*got 'neck'"),
])
def test_bad_loop_settings(tiny_shapes, fp_checkpoint, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _runner(tiny_shapes, tmp_path, fp_checkpoint, **kwargs).test()


def test_float_model_cannot_run_ptq(tiny_shapes, fp_checkpoint, tmp_path):
    from mmengine.runner import Runner
    cfg = Config.fromfile(osp.join(PTQ, 'ptq_uniform_w4a8_shapes.py'))
    cfg.model.backbone.type = 'SwinTransformer'
    for key in ('w_bits', 'a_bits', 'low_bit_ratios', 'prune_ratios', 'window_score',
                'window_order', 'quant'):
        cfg.model.backbone.pop(key)
    cfg.work_dir = str(tmp_path)
    cfg.test_cfg.calib_dataloader.dataset.data_root = tiny_shapes + '/'
    cfg.test_dataloader.dataset.data_root = tiny_shapes + '/'
    cfg.test_evaluator.ann_file = tiny_shapes + '/annotations/instances_val.json'
    cfg.load_from = fp_checkpoint
    with pytest.raises(ValueError, match='MaskRCNN has no quantizers'):
        Runner.from_cfg(cfg).test()


def test_detector_scope_quantizes_neck_and_heads(tiny_shapes, fp_checkpoint, tmp_path):
    from mixaq_mmdet.quantization import QuantConv2d, QuantLinear
    runner = _runner(tiny_shapes, tmp_path, fp_checkpoint, scope='detector', calib_images=4)
    runner.test()
    model = runner.model
    assert isinstance(model.neck.lateral_convs[0].conv, QuantConv2d)
    assert isinstance(model.roi_head.bbox_head.shared_fcs[0], QuantLinear)
    assert isinstance(model.roi_head.mask_head.conv_logits, QuantConv2d)
    assert type(model.roi_head.mask_head.upsample).__name__ == 'ConvTranspose2d'
    assert model.neck.lateral_convs[0].conv.input_quantizer.is_calibrated
    assert model.rpn_head.rpn_conv.weight_quantizer.bits == 4


@pytest.fixture(scope='module')
def trained_small(tmp_path_factory):
    """A briefly trained benchmark model (96 train / 24 val images, 8 epochs)."""
    root = str(tmp_path_factory.mktemp('shapes_small'))
    generate(root, num_train=96, num_val=24, seed=1)
    work_dir = str(tmp_path_factory.mktemp('train_small'))
    run_tool(['tools/train.py', FP_BENCH_CONFIG, '--work-dir', work_dir, '--cfg-options',
              *data_root_options(root), 'train_cfg.max_epochs=8', 'train_cfg.val_interval=8',
              'param_scheduler.1.end=8', 'default_hooks.checkpoint.interval=8'],
             timeout=1200)
    return root, osp.join(work_dir, 'epoch_8.pth')


def test_w8a8_ptq_stays_within_one_point_of_fp(trained_small, tmp_path):
    root, checkpoint = trained_small
    fp = run_tool(['tools/test.py', FP_BENCH_CONFIG, checkpoint, '--work-dir',
                   str(tmp_path / 'fp'), '--cfg-options', *data_root_options(root)])
    q = run_tool(['tools/test.py', osp.join(PTQ, 'ptq_uniform_w8a8_shapes.py'), checkpoint,
                  '--work-dir', str(tmp_path / 'w8a8'), '--cfg-options',
                  *_ptq_options(root, calib_images=16)])
    fp_map = _metrics(fp.stdout + fp.stderr)['coco/bbox_mAP']
    q_map = _metrics(q.stdout + q.stderr)['coco/bbox_mAP']
    assert fp_map > 0.05, f'the briefly trained model must detect something ({fp_map})'
    assert abs(fp_map - q_map) <= 0.01, (fp_map, q_map)
