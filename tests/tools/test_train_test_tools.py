"""tools/train.py, tools/test.py and the demo, end to end as subprocesses."""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
from mmengine.config import Config

from ..conftest import FP_BENCH_CONFIG, REPO, data_root_options, run_tool

TINY = [
    'train_dataloader.batch_size=4', 'default_hooks.logger.interval=1',
    'default_hooks.checkpoint.max_keep_ckpts=3', 'param_scheduler.0.end=2'
]


def _epochs(n):
    return [
        f'train_cfg.max_epochs={n}', f'train_cfg.val_interval={n}', f'param_scheduler.1.end={n}'
    ]


@pytest.fixture(scope='module')
def trained(tiny_shapes, tmp_path_factory):
    """One epoch (2 iterations) of the benchmark model on the tiny split."""
    work_dir = str(tmp_path_factory.mktemp('train'))
    run_tool([
        'tools/train.py', FP_BENCH_CONFIG, '--work-dir', work_dir, '--cfg-options',
        *data_root_options(tiny_shapes), *TINY, *_epochs(1)
    ])
    return tiny_shapes, work_dir


def test_train_writes_checkpoint(trained):
    _, work_dir = trained
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))
    assert open(osp.join(work_dir, 'last_checkpoint')).read().strip().endswith('epoch_1.pth')


def test_test_tool_prints_coco_metrics(trained, tmp_path):
    data_root, work_dir = trained
    out = str(tmp_path / 'preds.pkl')
    proc = run_tool([
        'tools/test.py', FP_BENCH_CONFIG,
        osp.join(work_dir, 'epoch_1.pth'), '--work-dir',
        str(tmp_path), '--out', out, '--cfg-options', *data_root_options(data_root)
    ])
    log = proc.stdout + proc.stderr
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        match = re.search(rf'{key}: (-?[0-9.]+)', log)
        assert match, f'{key} missing from the test log'
        assert -1.0 <= float(match.group(1)) <= 1.0
    assert osp.getsize(out) > 0


def test_resume_continues_training(trained, tmp_path):
    data_root, work_dir = trained
    proc = run_tool([
        'tools/train.py', FP_BENCH_CONFIG, '--work-dir', work_dir, '--resume', '--cfg-options',
        *data_root_options(data_root), *TINY, *_epochs(2)
    ])
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 1, iter: 2' in log
    assert 'Epoch(train) [2]' in log and 'Epoch(train) [1]' not in log
    assert osp.isfile(osp.join(work_dir, 'epoch_2.pth'))


def test_test_tool_loads_a_url_and_runs_test_time_augmentation(trained, tmp_path, monkeypatch):
    """As mmdet's tools/test.py: an http(s) checkpoint, and --tta (flips)."""
    import functools
    import http.server
    import threading
    data_root, work_dir = trained
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=work_dir)
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    try:
        url = f'http://127.0.0.1:{server.server_address[1]}/epoch_1.pth'
        # mmdet's DetTTAModel merges boxes only: evaluate the detector without its mask head
        proc = run_tool([
            'tools/test.py', FP_BENCH_CONFIG, url, '--tta', '--work-dir',
            str(tmp_path), '--cfg-options', *data_root_options(data_root),
            'model.roi_head.mask_roi_extractor=None', 'model.roi_head.mask_head=None',
            'test_evaluator.metric=[bbox]'
        ])
    finally:
        server.shutdown()
    log = proc.stdout + proc.stderr
    assert re.search(r'coco/bbox_mAP: [0-9.]+', log) and "type='DetTTAModel'" in log
    assert re.search(r'mixaq/backbone_ms: [0-9.]+', log)  # timed inside the TTA wrapper
    assert 'missing keys in source state_dict' not in log  # the URL's weights loaded


def test_importing_and_plotting_leave_the_matplotlib_backend_alone(tmp_path):
    code = ('import matplotlib\n'
            'import mixaq_mmdet, mixaq_mmdet.analysis\n'
            'from mixaq_mmdet.analysis import plot_pareto\n'
            f"plot_pareto([dict(name='a', speedup=1.0, bbox_mAP=1.0)], '{tmp_path}/p.png')\n"
            'print(matplotlib.get_backend())\n')
    env = dict(os.environ, MPLBACKEND='template', PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, '-c', code],
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == 'template'
    assert osp.getsize(tmp_path / 'p.png') > 1000


def test_test_tool_rejects_missing_checkpoint(tmp_path):
    proc = run_tool(['tools/test.py', FP_BENCH_CONFIG, str(tmp_path / 'none.pth')], check=False)
    assert proc.returncode != 0
    assert f'checkpoint {tmp_path}/none.pth does not exist' in proc.stderr


def _results(work_dir):
    return json.load(open(osp.join(work_dir, 'results.json')))


def test_demo_sweep_writes_results_table_and_plot(tiny_shapes, tmp_path):
    work_dir = str(tmp_path / 'demo')
    args = [
        'tools/run_demo.py', '--work-dir', work_dir, '--data-root', tiny_shapes, '--max-epochs',
        '1', '--qat-epochs', '1', '--calib-images', '4', '--search-images', '4', '--search-pop',
        '4', '--search-gens', '1', '--seeds', '0', '--rows', 'fp', 'uniform_w4a8', 'mixaq_w4a8a4',
        'qat_uniform_w4a4', 'qat_mixaq_w4a4a2_1.35x', 'qat_no_saqa_1.35x', 'qat_mixaq_random_1.35x',
        'policy_w4a8a2_reverse_0.25', 'policy_w4a8a2_reverse_0.75', 'search_1.35x',
        'uniform_ratio_1.35x'
    ]
    proc = run_tool(args)
    results = _results(work_dir)
    rows = {r['name']: r for r in results['rows']}
    # a seeded model's rows: their mean over the seeds (one here), then each seed
    assert [n for n in rows if '@seed' not in n] == args[-11:]
    assert rows['qat_uniform_w4a4@seed0']['bbox_mAP'] == rows['qat_uniform_w4a4']['bbox_mAP']
    for row in rows.values():
        assert 0 <= row['bbox_mAP'] <= 100 and 0 <= row['segm_mAP'] <= 100
    assert rows['uniform_w4a8']['speedup'] == 1.0
    # FP is 32x32 everywhere; W4A8 is 4x8 in linear layers and 8x8 in the two
    # attention products: the FP row lies between those two ratios
    assert 4 * 8 / (32 * 32) < rows['fp']['speedup'] < 8 * 8 / (32 * 32)
    mixaq = rows['mixaq_w4a8a4']
    assert 1.3 < mixaq['speedup'] < 1.4 and mixaq['method'] == 'PTQ'
    assert mixaq['low_bit_ratios'] == [0.5] * 4 and mixaq['a_bits'] == [8, 4]
    assert 4 < mixaq['act_bits'] < 8 and mixaq['calib_images'] == 4
    assert mixaq['scope'] == 'backbone' and mixaq['window_score'] == 'l2'
    assert osp.getsize(osp.join(work_dir, 'pareto.png')) > 10_000
    assert re.search(r'mixaq_w4a8a4\s+[0-9.]+\s+[0-9.]+\s+1\.3[0-9]+x', proc.stdout)
    # QAT rows: speedups over uniform W4A4 QAT, A4/A2 windows from the SAQA model
    assert rows['qat_uniform_w4a4']['speedup'] == 1.0
    qat = rows['qat_mixaq_w4a4a2_1.35x']
    assert qat['method'] == 'QAT' and qat['a_bits'] == [4, 2] and qat['calib_images'] == 0
    assert 1.3 < qat['speedup'] < 1.4 and qat['low_bit_ratios'] == [0.55] * 4
    assert rows['qat_mixaq_random_1.35x']['window_order'] == 'random'
    assert rows['qat_no_saqa_1.35x']['model'] == 'qat_saqa_w4a4a2:init'
    assert osp.isfile(osp.join(work_dir, 'qat_saqa_w4a4a2@seed0', 'qat_init.pth'))
    assert osp.getsize(osp.join(work_dir, 'pareto_qat.png')) > 10_000
    # the window-policy sweep: one calibration of the reverse order, two ratios
    sweep = [rows[f'policy_w4a8a2_reverse_{r}'] for r in ('0.25', '0.75')]
    assert [r['low_bit_ratios'] for r in sweep] == [[0.25] * 4, [0.75] * 4]
    assert all(r['window_order'] == 'reverse' and r['a_bits'] == [8, 2] for r in sweep)
    assert 1.1 < sweep[0]['speedup'] < sweep[1]['speedup'] < 2.5
    assert proc.stdout.count('policy_w4a8a2_reverse: calibrating') == 1
    assert osp.getsize(osp.join(work_dir, 'policy_curve.png')) > 10_000
    # the search: per-pair ratios in the 1.35x band, against one ratio for all
    searched, base = rows['search_1.35x'], rows['uniform_ratio_1.35x']
    assert abs(searched['speedup'] - 1.35) <= 0.02 and base['speedup'] <= searched['speedup']
    assert len(set(base['low_bit_ratios'])) == 1 and searched['search_candidates'] >= 4
    searched_cfg = Config.fromfile(osp.join(work_dir, 'search_1.35x', 'searched_1.35x.py'))
    assert searched_cfg.model.backbone.low_bit_ratios == searched['low_bit_ratios']
    claims = {t['claim']: t for t in results['targets']}
    assert len(claims) == 3  # the targets whose two rows were computed
    for target in claims.values():
        assert target['std_error'] >= 0 and target['folds'] == 4
        # met only beyond two standard errors
        expected = dict(
            noise=target['diff'] > 2 * target['std_error'],
            not_worse=target['diff'] >= -2 * target['std_error'],
            gt=target['diff'] > 2 * target['std_error'])[target['test']]
        assert target['met'] == expected and (target['status'] == 'met') == expected
    assert re.search(r'\[(met|within noise|MISSED)\] 1\.35x: importance order above random',
                     proc.stdout)
    # a rerun trains nothing and reuses every unchanged row
    proc = run_tool(args)
    assert proc.stdout.count('(cached)') == 3 and proc.stdout.count('unchanged') == 11
    assert _results(work_dir) == results
    # --rows computes some rows and keeps the others
    proc = run_tool(args[:-11] + ['uniform_w4a8'])
    assert proc.stdout.count('unchanged') == 1 and 'trained in' not in proc.stdout
    assert _results(work_dir)['rows'] == results['rows']
    # a change of the data invalidates the rows computed from it
    ann = osp.join(tiny_shapes, 'annotations', 'instances_val.json')
    original = open(ann).read()
    try:
        open(ann, 'w').write(original + ' ')
        proc = run_tool(args[:-11] + ['uniform_w4a8'])
    finally:
        open(ann, 'w').write(original)
    assert 'unchanged' not in proc.stdout and 'uniform_w4a8: evaluating' in proc.stdout
    assert re.search(r'mixaq_w4a8a4 .*\(stale: inputs changed since\)', proc.stdout)
