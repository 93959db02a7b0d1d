"""tools/smoke_coco.py: every config of configs/mixaq/ at full size on the COCO
fixture (``make smoke-coco``), and the parts it is made of."""
import glob
import json
import os.path as osp
import shutil

from mixaq_mmdet.tables import smoke
from ..conftest import REPO, run_tool

CONFIGS = osp.join(REPO, 'configs', 'mixaq')


def _configs():
    return sorted(
        osp.relpath(p, CONFIGS) for p in glob.glob(osp.join(CONFIGS, '**', '*.py'), recursive=True))


def test_the_smoke_rows_and_steps_cover_every_config():
    from mixaq_mmdet.tables import COCO
    rows = set(smoke.SMOKE_ROWS)
    assert rows <= set(COCO.row_names)
    used = {r.config for r in COCO.rows if r.name in rows}
    used |= {COCO.training(t).config for t in COCO.needed_trainings(sorted(rows))}
    used |= {s.config for s in COCO.searches if set(s.row_names()) & rows}
    used |= {smoke.FP_1X, COCO.training(smoke.RESUMED).config, smoke.AMP_QAT}
    assert sorted(used) == _configs()


def test_a_config_no_run_used_is_reported():
    Result = smoke.Result
    results = [
        Result(
            osp.splitext(rel)[0], osp.join('configs', 'mixaq', rel), '', True, 0, 0, 'image', 1,
            None, None, '') for rel in _configs()[1:]
    ]
    assert smoke.configs_not_run(results) == _configs()[:1]


def test_qatinithook_overrides_follow_its_position():
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(CONFIGS, 'qat', 'qat_saqa_w4a4a2_swin-t_coco.py'))
    cfg.custom_hooks.insert(0, dict(type='EMAHook'))
    options = dict(smoke.smoke_options(cfg))
    assert options['custom_hooks.1.calib_images'] == 1
    assert not any(key.startswith('custom_hooks.0.') for key in options)
    # a trained QAT model is evaluated on 1 val image, a PTQ config on both
    assert options['test_dataloader.dataset.indices'] == 1
    ptq = Config.fromfile(osp.join(CONFIGS, 'ptq', 'ptq_uniform_w4a8_swin-t_coco.py'))
    assert 'test_dataloader.dataset.indices' not in dict(smoke.smoke_options(ptq))


def test_forked_step_reports_failure_and_peak_memory(tmp_path):

    def allocate():
        block = bytearray(300 * 2**20)
        block[::4096] = b'x' * len(block[::4096])  # touch every page
        print('allocated')

    ok, _, usage, error = smoke.run_forked(allocate, str(tmp_path / 'a.log'), 60)
    assert ok and error == '' and 'allocated' in open(tmp_path / 'a.log').read()
    assert usage.ru_maxrss / 1024 >= 300

    def fail():
        raise RuntimeError('the step broke')

    ok, _, _, error = smoke.run_forked(fail, str(tmp_path / 'b.log'), 60)
    assert not ok and error == 'exit 1'
    assert 'RuntimeError: the step broke' in open(tmp_path / 'b.log').read()


def test_logged_times_are_read_from_mmengine_lines():
    log = ('Epoch(train) [1][1/2]  lr: 1e-05  eta: 0:00:03  time: 12.5000  data_time: 1.0\n'
           'Epoch(train) [1][2/2]  lr: 1e-05  eta: 0:00:00  time: 10.2500  data_time: 0.5\n'
           'Epoch(val) [1][2/2]    coco/bbox_mAP: 0.0000  data_time: 0.1  time: 4.0000\n'
           'PTQ: calibrated 170 quantizers on 2 images (backbone scope, reparam=True) in 31.5 s\n')
    assert smoke.logged_time(log, 'train') == 10.25
    assert smoke.logged_time(log, 'val') == 4.0
    assert smoke.logged_time(log, 'test') is None
    assert smoke.calibration_seconds(log) == 31.5
    assert smoke.logged_count(log, 'train') == 2
    assert smoke.logged_count('Epoch(test) [1/2]  time: 4.3\n', 'test') == 2
    assert smoke.logged_count(log, 'test') is None


def test_smoke_coco_runs_the_coco_table_and_every_config_at_full_size(tmp_path):
    """``make smoke-coco``: the COCO table's runner and every config on the real
    Swin-T Mask R-CNN at 800x1333, random weights, on the COCO-layout fixture;
    every run must succeed."""
    work = tmp_path / 'smoke'
    proc = run_tool(['tools/smoke_coco.py', '--work-dir', str(work)], timeout=2400)
    report = json.load(open(work / 'smoke.json'))
    assert report['failed'] == '' and proc.returncode == 0, proc.stdout[-3000:]
    results = {r['name']: r for r in report['results']}
    assert '| run | config | status |' in proc.stdout
    # the table: every smoke row computed, with the commands that computed it
    table = json.load(open(work / 'table' / 'results.json'))
    rows = {r['name']: r for r in table['rows']}
    assert set(rows) == set(smoke.SMOKE_ROWS)
    for row in rows.values():
        assert 0 <= row['bbox_mAP'] <= 100 and row['commands'], row['name']
    assert rows['qat_mixaq_w4a4a2_1.35x']['a_bits'] == [4, 2]
    assert 1.3 < rows['qat_mixaq_w4a4a2_1.35x']['speedup'] < 1.4
    assert rows['mixaq_w4a8a4_1.35x']['calib_images'] == 2
    assert rows['qat_no_saqa_1.35x']['model'] == 'qat_saqa_w4a4a2:init'
    searched = rows['qat_search_1.35x']
    assert abs(searched['speedup'] - 1.35) <= 0.05 and 'search_ratios.py' in \
        searched['commands'][0]
    # PTQ calibrated and saved; QAT resumed where the table's run stopped
    assert osp.isfile(work / 'table' / 'uniform_w4a8' / 'calibrated.pth')
    resumed = open(results['extra/resume (train)']['log_file']).read()
    assert 'resumed at iteration 1' in resumed and 'Epoch(val) [2][1/1]' in resumed
    # OFQ: annealing over the last iteration, the oscillation measure logged
    assert 'cga_frozen_rate' in resumed and 'weight_flip_rate' in resumed
    for name, result in results.items():
        assert result['peak_rss_mb'] > 500, name  # the model alone is ~200 MB of weights
        if '(search)' not in name:
            assert result['s_per_unit'] is not None, name
        if result['config'].startswith('configs/mixaq/ptq/'):
            assert result['calib_s'] is not None, name
    print(proc.stdout[-5000:])
    shutil.rmtree(work)  # about 8 GB of checkpoints
