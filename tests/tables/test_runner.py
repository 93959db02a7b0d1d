"""One runner, two ways to run: rows computed in process and rows launched as
the project's tools give the same results, and a moved table keeps its keys."""
import json
import os
import shutil

from mmengine.config import Config

from mixaq_mmdet.tables import fingerprint
from ..conftest import run_tool

ROWS = [
    'fp', 'uniform_w4a8', 'uniform_w4a8_integer', 'qat_uniform_w4a4', 'policy_w4a8a2_reverse_0.25'
]


def test_a_moved_table_keeps_its_keys(tmp_path):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'weights')

    def key(root):
        cfg = Config(
            dict(work_dir=f'{root}/row', test_evaluator=dict(outfile_prefix=f'{root}/row/preds')))
        return fingerprint(cfg, str(checkpoint), 'v', work_dir=root)

    assert key('/a/table') == key('/b/elsewhere')
    assert key('/a/table') != fingerprint(
        Config(dict(work_dir='/a/table/row')), str(checkpoint), 'v', work_dir='/a/table')


def _rows(work_dir):
    with open(os.path.join(work_dir, 'results.json')) as f:
        return {r['name']: r for r in json.load(f)['rows']}


def test_launched_rows_equal_rows_computed_in_process(tiny_shapes, tmp_path):
    args = [
        'tools/run_demo.py', '--data-root', tiny_shapes, '--max-epochs', '1', '--qat-epochs', '1',
        '--calib-images', '4', '--seeds', '0', '--rows', *ROWS
    ]
    local = str(tmp_path / 'local')
    run_tool(args + ['--work-dir', local])
    launched = str(tmp_path / 'launched')
    shutil.copytree(local, launched)
    os.remove(os.path.join(launched, 'results.json'))
    proc = run_tool(args + ['--work-dir', launched, '--gpus', '0'])
    # the trainings moved with the folder and are reused: fp, W4A4 QAT
    assert proc.stdout.count('(cached)') == 2 and 'trained in' not in proc.stdout
    expected, computed = _rows(local), _rows(launched)
    # the table's order; a seeded model's row is its seeds' mean, then each seed
    assert list(computed) == ROWS[:3] + ['qat_uniform_w4a4', 'qat_uniform_w4a4@seed0'] + ROWS[4:]
    for name in ROWS[:3] + ['qat_uniform_w4a4@seed0'] + ROWS[4:]:
        for field in ('bbox_mAP', 'segm_mAP', 'bitops_G', 'a_bits', 'low_bit_ratios',
                      'window_order', 'calib_images', 'model', 'fingerprint', 'execution'):
            assert computed[name][field] == expected[name][field], (name, field)
    # the integer row: the same model on integer kernels; every backbone's time measured
    assert [computed[n]['execution'] for n in ROWS[:3]] == [None, 'fake_quant', 'integer']
    assert all(computed[n]['backbone_ms'] > 0 for n in ROWS[:3])
    assert 'test_cfg.execution=integer' in computed['uniform_w4a8_integer']['commands'][0]
    # both write the command a user would type
    command = computed['uniform_w4a8']['commands'][0]
    assert command.startswith(
        'python tools/test.py configs/benchmark/ptq/ptq_uniform_w4a8_shapes.py '
        f'{launched}/fp/epoch_1.pth --work-dir {launched}/uniform_w4a8 ')
    assert expected['uniform_w4a8']['commands'][0].replace(local, launched) == command
    # the commands that trained each model
    with open(os.path.join(local, 'results.json')) as f:
        trainings = json.load(f)['trainings']
    qat = trainings['qat_uniform_w4a4@seed0']['commands']
    assert len(qat) == 1 and qat[0].startswith(
        'python tools/train.py configs/benchmark/qat/qat_uniform_w4a4_shapes.py --work-dir '
        f'{local}/qat_uniform_w4a4@seed0 --cfg-options ')
    # the benchmark's trainings skip their own validation: each model is a row
    assert qat[0].endswith(
        f'randomness.seed=0 train_cfg.val_begin=2 load_from={local}/fp/epoch_1.pth')
    assert computed['qat_uniform_w4a4']['bbox_mAP'] == computed['qat_uniform_w4a4@seed0'][
        'bbox_mAP'] and computed['qat_uniform_w4a4']['seeds'] == [0]
    # a row calibrated once and evaluated at another ratio: two test runs
    sweep = computed['policy_w4a8a2_reverse_0.25']['commands']
    assert len(sweep) == 2 and f'{launched}/policy_w4a8a2_reverse/calibrated.pth' in sweep[1]
    assert 'model.backbone.low_bit_ratios=0.25' in sweep[1]


def test_jobs_side_by_side_give_the_rows_of_one_process(tiny_shapes, tmp_path):
    """``--jobs 2``: the trainings, rows and search of the table run in forked
    children, two at a time, after the jobs they need; on the same torch
    threads (one: ``OMP_NUM_THREADS=1``) every row equals the in-process run's."""
    rows = ROWS + ['search_1.35x', 'uniform_ratio_1.35x']
    args = [
        'tools/run_demo.py', '--data-root', tiny_shapes, '--max-epochs', '1', '--qat-epochs', '1',
        '--calib-images', '4', '--seeds', '0', '1', '--search-pop', '4', '--search-gens', '1',
        '--search-images', '2', '--rows', *rows
    ]
    one = str(tmp_path / 'one')
    run_tool(args + ['--work-dir', one], threads=1)
    two = str(tmp_path / 'two')
    proc = run_tool(args + ['--work-dir', two, '--jobs', '2'], threads=1)
    out = proc.stdout
    # two seeds of W4A4 QAT trained side by side once the FP model is there
    assert out.index('train fp: done') < out.index('train qat_uniform_w4a4@seed0: started')
    assert out.index('train qat_uniform_w4a4@seed1: started') < out.index(
        'train qat_uniform_w4a4@seed0: done')
    assert out.index('train qat_uniform_w4a4@seed0: done') < out.index(
        'eval qat_uniform_w4a4@seed0: started')
    # the rows of one calibration are one job; each job has its log
    assert 'eval policy_w4a8a2_reverse: started' in out
    logs = os.listdir(os.path.join(two, 'logs'))
    assert 'train_fp.log' in logs and 'search_search.log' in logs
    expected, computed = _rows(one), _rows(two)
    assert list(computed) == list(expected)  # the table's order, whatever order jobs ended in
    for name, row in expected.items():
        for field in ('bbox_mAP', 'segm_mAP', 'bitops_G', 'low_bit_ratios', 'calib_images', 'model',
                      'config'):
            assert computed[name][field] == row[field], (name, field)
    # a second run with the same inputs takes every training and row as it was
    run_tool(args + ['--work-dir', two, '--jobs', '2'], threads=1)
    with open(os.path.join(two, 'logs', 'train_qat_uniform_w4a4@seed1.log')) as f:
        assert '(cached)' in f.read()
    with open(os.path.join(two, 'logs', 'eval_uniform_w4a8.log')) as f:
        assert 'unchanged, taken from results.json' in f.read()
    assert _rows(two) == computed


def test_the_coco_table_on_8_gpus_prints_its_commands_in_order(tmp_path):
    """``--table coco --gpus 8 --dry-run``: the QAT trainings continue the
    given FP release (no job of the table), each before what continues it and
    before the rows evaluated on it."""
    out = run_tool([
        'tools/run_demo.py', '--table', 'coco', '--gpus', '8', '--dry-run', '--work-dir',
        str(tmp_path)
    ]).stdout
    commands = [line.split('$ ', 1)[1] for line in out.splitlines() if line.startswith('[table] $')]
    first = commands[0]
    assert first.startswith('bash tools/dist_train.sh configs/mixaq/qat/'
                            'qat_uniform_w4a4_swin-t_coco.py 8 ')
    assert first.endswith('load_from=https://download.openmmlab.com/mmdetection/v2.0/swin/'
                          'mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco/mask_rcnn_swin-t-p4-w7_'
                          'fpn_ms-crop-3x_coco_20210906_131725-bacf6f7b.pth')
    trained = [c for c in commands if 'dist_train.sh' in c]
    w4a4 = next(i for i, c in enumerate(commands)
                if f'--work-dir {tmp_path}/qat_uniform_w4a4 ' in c)
    continued = [i for i, c in enumerate(commands) if f'{tmp_path}/qat_uniform_w4a4/epoch_' in c]
    assert continued and min(continued) > w4a4
    # every training comes before the first evaluation
    assert commands.index(trained[-1]) < min(i for i, c in enumerate(commands)
                                             if 'dist_train.sh' not in c)
