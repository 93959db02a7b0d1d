"""tools/smoke_coco.py: every config of configs/mixaq/ at full size on the COCO
fixture (``make smoke-coco``), and the parts it is made of."""
import glob
import json
import os.path as osp
import runpy
import shutil

import pytest

from ..conftest import REPO, run_tool

SMOKE = runpy.run_path(osp.join(REPO, 'tools', 'smoke_coco.py'))
CONFIGS = osp.join(REPO, 'configs', 'mixaq')


def _configs():
    return sorted(osp.relpath(p, CONFIGS)
                  for p in glob.glob(osp.join(CONFIGS, '**', '*.py'), recursive=True))


def test_plan_runs_every_config_after_what_it_needs(tmp_path):
    steps = SMOKE['plan'](str(tmp_path), str(tmp_path / 'official.pth'))
    names = [s.name for s in steps]
    assert len(names) == len(set(names))
    for rel in _configs():
        path = osp.join(CONFIGS, rel)
        assert any(path in s.args for s in steps), f'{rel} is not smoke-run'
    for index, step in enumerate(steps):
        for need in step.needs:
            assert need in names[:index], f'{step.name} runs before {need}'
    by_name = {s.name: s for s in steps}
    # the 6-epoch continuations start from this smoke's W4A4 model, not a work_dirs path
    saqa = by_name['qat/qat_saqa_w4a4a2_swin-t_coco']
    assert saqa.needs == ['qat/qat_uniform_w4a4_swin-t_coco --resume']
    load_from = next(a for a in saqa.args if a.startswith('load_from='))
    assert load_from == 'load_from=' + osp.join(
        str(tmp_path), 'work_dirs', 'qat/qat_uniform_w4a4_swin-t_coco', 'epoch_2.pth')
    # a first-stage QAT config starts from the official-format checkpoint
    w4a3 = by_name['qat/qat_uniform_w4a3_swin-t_coco']
    assert f'load_from={tmp_path / "official.pth"}' in w4a3.args
    # an evaluation row tests the checkpoint of the QAT config it inherits
    row = by_name['qat/mixaq_w4a4a2-prune-1.82x_swin-t_coco']
    assert row.needs == ['qat/qat_saqa-prune_w4a4a2_swin-t_coco --resume']
    assert {'search --objective map', 'search --objective proxy'} <= set(names)
    resume = by_name['qat/qat_uniform_w4a4_swin-t_coco --resume']
    assert '--resume' in resume.args and 'train_cfg.max_epochs=2' in resume.args


def test_a_config_without_a_rule_is_an_error():
    with pytest.raises(ValueError, match=r'configs/mixaq/extra/new\.py: the smoke has no rule'):
        SMOKE['kind_of']('extra/new.py')


def test_qatinithook_overrides_follow_its_position():
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(CONFIGS, 'qat', 'qat_saqa_w4a4a2_swin-t_coco.py'))
    cfg.custom_hooks.insert(0, dict(type='EMAHook'))
    options = SMOKE['train_options'](cfg, 1)
    assert 'custom_hooks.1.calib_images=1' in options
    assert not any(o.startswith('custom_hooks.0.') for o in options)


def test_forked_step_reports_failure_and_peak_memory(tmp_path):
    def allocate():
        block = bytearray(300 * 2 ** 20)
        block[::4096] = b'x' * len(block[::4096])  # touch every page
        print('allocated')

    ok, _, usage, error = SMOKE['run_forked'](allocate, str(tmp_path / 'a.log'), 60)
    assert ok and error == '' and 'allocated' in open(tmp_path / 'a.log').read()
    assert usage.ru_maxrss / 1024 >= 300

    def fail():
        raise RuntimeError('the step broke')

    ok, _, _, error = SMOKE['run_forked'](fail, str(tmp_path / 'b.log'), 60)
    assert not ok and error == 'exit 1'
    assert 'RuntimeError: the step broke' in open(tmp_path / 'b.log').read()


def test_logged_times_are_read_from_mmengine_lines():
    log = ('Epoch(train) [1][1/2]  lr: 1e-05  eta: 0:00:03  time: 12.5000  data_time: 1.0\n'
           'Epoch(train) [1][2/2]  lr: 1e-05  eta: 0:00:00  time: 10.2500  data_time: 0.5\n'
           'Epoch(val) [1][2/2]    coco/bbox_mAP: 0.0000  data_time: 0.1  time: 4.0000\n'
           'PTQ: calibrated 170 quantizers on 2 images (backbone scope, reparam=True) in 31.5 s\n')
    assert SMOKE['logged_time'](log, 'train') == 10.25
    assert SMOKE['logged_time'](log, 'val') == 4.0
    assert SMOKE['logged_time'](log, 'test') is None
    assert SMOKE['calibration_seconds'](log) == 31.5


def test_smoke_coco_runs_every_config_at_full_size(tmp_path):
    """``make smoke-coco``: the real Swin-T Mask R-CNN at 800x1333, random weights,
    on the COCO-layout fixture; every config's step must succeed (17 minutes on
    2 cores)."""
    work = tmp_path / 'smoke'
    proc = run_tool(['tools/smoke_coco.py', '--work-dir', str(work)], timeout=2400)
    report = json.load(open(work / 'smoke.json'))
    results = {r['name']: r for r in report['results']}
    assert all(r['ok'] for r in results.values()), proc.stdout[-3000:]
    for rel in _configs():
        assert osp.splitext(rel)[0] in results, rel
    assert '| step | status |' in proc.stdout
    # PTQ calibrated and saved; QAT resumed where the first run stopped
    assert osp.isfile(work / 'work_dirs' / 'ptq' / 'ptq_uniform_w4a8_swin-t_coco' /
                      'calibrated.pth')
    resumed = open(results['qat/qat_uniform_w4a4_swin-t_coco --resume']['log_file']).read()
    assert 'resumed at iteration 1' in resumed and 'Epoch(val) [2][1/1]' in resumed
    for name, result in results.items():
        assert result['peak_rss_mb'] > 500, name  # the model alone is ~200 MB of weights
        if not name.startswith('search'):
            assert result['s_per_unit'] is not None, name
        if name.startswith('ptq/'):
            assert result['calib_s'] is not None, name
    print(proc.stdout[-4000:])
    shutil.rmtree(work)  # about 8 GB of checkpoints
