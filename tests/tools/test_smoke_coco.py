"""tools/smoke_coco.py: every config of configs/mixaq/ at full size on the COCO
fixture (``make smoke-coco``), and the parts it is made of."""
import glob
import json
import os.path as osp
import shutil
import threading
import time

import pytest

from mixaq_mmdet.tables import COCO, COCO_TABLES, PTQ_PAPERS, Training, smoke
from mixaq_mmdet.utils.forking import OUTPUT_LOCK, fork_child, poll_child
from ..conftest import REPO, run_tool


def _configs(table):
    root = table.config_root
    return sorted(
        osp.relpath(p, root) for p in glob.glob(osp.join(root, '**', '*.py'), recursive=True)
        if '_base_' not in osp.relpath(p, root).split(osp.sep))


@pytest.mark.parametrize('table', COCO_TABLES, ids=lambda t: t.name)
def test_the_smoke_rows_and_steps_cover_every_config(table):
    rows = set(smoke.smoke_rows(table))
    assert rows <= set(table.row_names)
    used = {r.config for r in table.rows if r.name in rows}
    used |= {table.training(t).config for t in table.needed_trainings(sorted(rows))}
    used |= {s.config for s in table.searches if set(s.row_names()) & rows}
    if table.name == COCO.name:
        used |= {smoke.FP_1X, COCO.training(smoke.RESUMED).config, smoke.AMP_QAT}
    else:  # one row per config: a table without hand-picked rows needs no steps
        assert table.name not in smoke.EXTRAS and len(rows) == len(used)
    assert sorted(used) == _configs(table)


def test_a_table_without_hand_picked_rows_runs_the_first_row_of_each_config():
    rows = smoke.smoke_rows(PTQ_PAPERS)
    configs = [r.config for r in PTQ_PAPERS.rows]
    assert rows == tuple(
        r.name for r in PTQ_PAPERS.rows if configs.index(r.config) == PTQ_PAPERS.rows.index(r))


@pytest.mark.parametrize('table', COCO_TABLES, ids=lambda t: t.name)
def test_a_config_no_run_used_is_reported(table):
    Result = smoke.Result
    root = osp.relpath(table.config_root, REPO)
    results = [
        Result(
            osp.splitext(rel)[0], osp.join(root, rel), '', True, 0, 0, 'image', 1, None, None, '')
        for rel in _configs(table)[1:]
    ]
    assert smoke.configs_not_run(table, results) == _configs(table)[:1]


def test_every_given_model_has_a_fixture_writer_and_an_unknown_release_is_refused():
    for table in COCO_TABLES:
        for training in table.trainings:
            if training.checkpoint is not None:
                assert training.checkpoint.startswith(
                    ('https://download.openmmlab.com/', 'https://github.com/SwinTransformer/'))
    with pytest.raises(ValueError, match='no fixture writer for the release'):
        smoke.write_release_fixture(
            Training('fp', 'x.py', checkpoint='https://example.com/a.pth'), 'x.py', '/tmp/a.pth')


def test_qatinithook_overrides_follow_its_position():
    from mmengine.config import Config
    configs = COCO.config_root
    cfg = Config.fromfile(osp.join(configs, 'qat', 'qat_saqa_w4a4a2_swin-t_coco.py'))
    cfg.custom_hooks.insert(0, dict(type='EMAHook'))
    options = dict(smoke.smoke_options(COCO)(cfg))
    assert options['custom_hooks.1.calib_images'] == 1
    assert not any(key.startswith('custom_hooks.0.') for key in options)
    # a trained QAT model is evaluated on 1 val image, a PTQ config on both
    assert options['test_dataloader.dataset.indices'] == 1
    ptq = Config.fromfile(osp.join(configs, 'ptq', 'ptq_uniform_w4a8_swin-t_coco.py'))
    assert 'test_dataloader.dataset.indices' not in dict(smoke.smoke_options(COCO)(ptq))
    # another table's PTQ rows calibrate on 1 image and are evaluated on 1
    papers = Config.fromfile(
        osp.join(PTQ_PAPERS.config_root, 'ptq', 'ptq_uqvit_w4a4_mask-rcnn_swin-s.py'))
    options = dict(smoke.smoke_options(PTQ_PAPERS)(papers))
    assert options['test_dataloader.dataset.indices'] == 1
    assert options['test_cfg.calib_images'] == 1


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


def test_a_fork_waits_for_a_thread_that_writes_under_the_output_lock(tmp_path):
    """The runner's progress thread prints under OUTPUT_LOCK and every fork takes
    it: a child never starts with a stream's lock held by a thread it lacks (it
    hung on its first log line)."""
    released = []

    def hold():
        with OUTPUT_LOCK:
            time.sleep(0.5)
            released.append(time.perf_counter())

    writer = threading.Thread(target=hold)
    writer.start()
    time.sleep(0.1)
    log = tmp_path / 'child.log'
    child = fork_child(lambda: print(repr(time.perf_counter())), str(log))
    assert poll_child(child, block=True).ok
    writer.join()
    assert float(log.read_text()) > released[0]


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


#: The PTQ papers' table in CI: every detector's release converted and
#: evaluated, and a PTQ row on each detector that together take every base, both
#: bit widths and MixA-Q (268 s on 2 cores). ``make smoke-coco`` runs a row of
#: every config (about 20 minutes: a full-size detector-scope calibration takes
#: 15-60 s on one image); the configs themselves are all built and checked by
#: tests/test_coco_configs.py.
PAPERS_SAMPLE = ('mask-rcnn_swin-t_fp', 'mask-rcnn_swin-s_fp', 'cascade-mask-rcnn_swin-t_fp',
                 'cascade-mask-rcnn_swin-s_fp', 'mask-rcnn_swin-t_repqvit_w4a4',
                 'mask-rcnn_swin-s_uqvit_w6a6', 'cascade-mask-rcnn_swin-t_mixaq_w4a8a4_1.35x',
                 'cascade-mask-rcnn_swin-s_repqvit_w6a6')


def test_the_ci_sample_takes_every_detector_base_and_bit_width():
    from mixaq_mmdet.tables.ptq_papers import BASES, DETECTORS
    rows = {r.name: r for r in PTQ_PAPERS.rows}
    sample = [rows[name] for name in PAPERS_SAMPLE]
    assert {r.model for r in sample if r.method == 'FP'} == {t.name for t in PTQ_PAPERS.trainings}
    quantized = [r for r in sample if r.method == 'PTQ']
    assert {r.model for r in quantized} == {f'fp_{d.name}' for d in DETECTORS}
    configs = {osp.basename(r.config) for r in quantized}
    assert all(any(f'_{bits}_' in c for c in configs) for bits in ('w4a4', 'w6a6'))
    assert all(
        any(c.startswith(f'ptq_{base}_') for c in configs)
        for base in BASES if base != 'ptq4vit') and any(c.startswith('ptq_mixaq') for c in configs)


def test_smoke_coco_runs_the_coco_tables_at_full_size(tmp_path):
    """``make smoke-coco``: the paper's table's runner and every config of it
    on the real Swin-T Mask R-CNN at 800x1333, random weights, on the
    COCO-layout fixture, and the PTQ papers' table on :data:`PAPERS_SAMPLE`;
    every run must succeed."""
    work = tmp_path / 'smoke'
    proc = run_tool(['tools/smoke_coco.py', '--work-dir',
                     str(work), '--rows', *PAPERS_SAMPLE],
                    timeout=3600)
    report = json.load(open(work / 'smoke.json'))
    assert report['failed'] == '' and proc.returncode == 0, proc.stdout[-3000:]
    assert set(report['table_s']) == {t.name for t in COCO_TABLES}
    results = {r['name']: r for r in report['results']}
    assert '| run | config | status |' in proc.stdout
    # each table: every smoke row computed, with the commands that computed it
    tables = {}
    for table in COCO_TABLES:
        records = json.load(open(work / table.name / 'table' / 'results.json'))['rows']
        tables[table.name] = {r['name']: r for r in records}
        expected = PAPERS_SAMPLE if table is PTQ_PAPERS else smoke.smoke_rows(table)
        assert set(tables[table.name]) == set(expected), table.name
        for row in records:
            assert 0 <= row['bbox_mAP'] <= 100 and row['commands'], row['name']
    rows = tables[COCO.name]
    assert rows['qat_mixaq_w4a4a2_1.35x']['a_bits'] == [4, 2]
    assert 1.3 < rows['qat_mixaq_w4a4a2_1.35x']['speedup'] < 1.4
    assert rows['mixaq_w4a8a4_1.35x']['calib_images'] == 2
    assert rows['qat_no_saqa_1.35x']['model'] == 'qat_saqa_w4a4a2:init'
    searched = rows['qat_search_1.35x']
    assert abs(searched['speedup'] - 1.35) <= 0.05 and 'search_ratios.py' in \
        searched['commands'][0]
    # the PTQ papers' table: the Microsoft-layout checkpoints loaded, every
    # detector quantized whole, on 1 calibration image
    papers = tables[PTQ_PAPERS.name]
    for name, row in papers.items():
        if row['method'] == 'PTQ':
            assert row['calib_images'] == 1 and row['scope'] == 'detector', name
    assert papers['mask-rcnn_swin-s_uqvit_w6a6']['a_bits'] == [6, 6]
    mixaq = papers['cascade-mask-rcnn_swin-t_mixaq_w4a8a4_1.35x']
    assert mixaq['a_bits'] == [8, 4] and set(mixaq['low_bit_ratios']) == {0.53}
    # PTQ calibrated and saved; QAT resumed where the table's run stopped
    assert osp.isfile(work / 'coco' / 'table' / 'uniform_w4a8' / 'calibrated.pth')
    resumed = open(results['coco/extra/resume (train)']['log_file']).read()
    assert 'resumed at iteration 1' in resumed and 'Epoch(val) [2][1/1]' in resumed
    # OFQ: annealing over the last iteration, the oscillation measure logged
    assert 'cga_frozen_rate' in resumed and 'weight_flip_rate' in resumed
    for name, result in results.items():
        assert result['peak_rss_mb'] > 500, name  # the model alone is ~200 MB of weights
        if '(search)' not in name:
            assert result['s_per_unit'] is not None, name
        if '/ptq/' in result['config']:
            assert result['calib_s'] is not None, name
    print(proc.stdout[-9000:])  # the runs' table and the seconds per table
    shutil.rmtree(work)  # many GB of checkpoints
