"""Progress of running jobs read from mmengine's log lines, and the time the
table has left."""
import os
import time

import pytest

from mixaq_mmdet.tables.progress import (Estimate, JobProgress, estimate_left, estimate_text,
                                         format_seconds, job_progress, parse_line)

TRAIN = ('12/07 05:09:55 - mmengine - INFO - Epoch(train) [1][ 25/150]  base_lr: 2.4970e-04 '
         'lr: 2.4970e-04  eta: 0:24:45  time: 1.4495  data_time: 0.0257  loss: 3.2114')
TEST = ('12/07 05:31:01 - mmengine - INFO - Epoch(test) [25/25]    eta: 0:00:00  time: 2.2271  '
        'data_time: 0.8076')
VAL = '12/07 05:20:00 - mmengine - INFO - Epoch(val) [1][ 10/200]    eta: 0:00:30  time: 0.1'
ITER = '12/07 05:20:00 - mmengine - INFO - Iter(train) [  10/1000]  lr: 1e-4  eta: 1 day, 2:03:04'


def _log(work_dir, stamp, *lines, sub=None, age_s=0.0):
    folder = os.path.join(work_dir, *([sub] if sub else []), stamp)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, stamp + '.log')
    with open(path, 'w') as f:
        f.write('12/07 05:09:00 - mmengine - INFO - Config:\nmodel = dict()\n')
        f.write(''.join(line + '\n' for line in lines))
    if age_s:
        past = time.time() - age_s
        os.utime(path, (past, past))
    return path


def test_parse_mmengine_progress_lines():
    train = parse_line(TRAIN)
    assert (train.loop, train.mode, train.epoch, train.done, train.total) == \
        ('Epoch', 'train', 1, 25, 150)
    assert train.eta_s == 24 * 60 + 45 and train.eta == '0:24:45'
    test = parse_line(TEST)
    assert (test.loop, test.mode, test.epoch, test.done, test.total, test.eta_s) == \
        ('Epoch', 'test', None, 25, 25, 0.0)
    val = parse_line(VAL)
    assert (val.mode, val.epoch, val.done, val.total, val.eta_s) == ('val', 1, 10, 200, 30.0)
    it = parse_line(ITER)
    assert (it.loop, it.mode, it.epoch, it.done, it.total) == ('Iter', 'train', None, 10, 1000)
    assert it.eta_s == ((24 + 2) * 60 + 3) * 60 + 4
    assert parse_line('12/07 05:09:00 - mmengine - INFO - Checkpoints will be saved to x') is None
    assert parse_line('') is None


def test_job_progress_reads_the_newest_log_since_the_start(tmp_path):
    work_dir = str(tmp_path)
    since = time.time()
    assert job_progress([work_dir], since) is None
    # a log of an earlier run (older than the job's start) does not count
    _log(work_dir, '20261207_090000', TEST, age_s=3600)
    assert job_progress([work_dir], since) is None
    _log(work_dir, '20261207_101010', TRAIN)
    progress = job_progress([work_dir], since)
    assert progress.text == 'epoch 1, iteration 25/150, mmengine eta 0:24:45'
    assert progress.fraction is None and progress.eta_s == 24 * 60 + 45
    assert progress.run_start == pytest.approx(time.mktime((2026, 12, 7, 10, 10, 10, 0, 0, -1)))
    # a second run one level deeper (a row's <work_dir>/test/<stamp>), newer: it is reported
    newer = _log(work_dir, '20261207_111111', TEST, sub='test')
    later = time.time() + 5
    os.utime(newer, (later, later))
    progress = job_progress([work_dir], since)
    assert progress.text == 'run 2, test, iteration 25/25, mmengine eta 0:00:00'
    assert progress.fraction == 1.0 and progress.eta_s == 0.0


def test_job_progress_of_a_run_without_progress_lines_and_of_validation(tmp_path):
    since = time.time()
    _log(str(tmp_path / 'a'), '20261207_101010')
    progress = job_progress([str(tmp_path / 'a')], since)
    assert 'no progress line yet' in progress.text and progress.eta_s is None
    # a log not named as its folder is not mmengine's
    _log(str(tmp_path / 'b'), '20261207_101010')
    os.rename(tmp_path / 'b/20261207_101010/20261207_101010.log',
              tmp_path / 'b/20261207_101010/20261207_101011.log')
    assert job_progress([str(tmp_path / 'b')], since) is None
    # validation inside a training: the time left is the training's
    _log(str(tmp_path / 'c'), '20261207_101010', TRAIN, VAL)
    progress = job_progress([str(tmp_path / 'c')], since)
    assert progress.text.startswith('validation after epoch 1, iteration 10/200')
    assert 'mmengine training eta 0:24:45' in progress.text
    assert progress.eta_s == 24 * 60 + 45


def test_estimate_left_from_etas_fractions_and_previous_durations():
    now = 1000.0
    running = [
        (0.0, JobProgress('a', eta_s=600.0), None),
        # a quarter done in 100 s: 300 s left
        (0.0, JobProgress('b', fraction=0.25, run_start=900.0), None),
        (0.0, JobProgress('c'), None),  # no fraction, no eta
        (0.0, None, None),  # no log yet
    ]
    estimate = estimate_left(running, ['d', 'e'], {'d': 300.0, 'x': 1.0}, workers=2, now=now)
    assert estimate == Estimate((600 + 300 + 300) / 2, 3)
    # one worker: one after the other
    assert estimate_left(running[:2], ['d'], {'d': 300.0}, 1, now).seconds == 1200
    # never less than the longest running job
    assert estimate_left(running[:1], [], {}, 4, now) == Estimate(600.0, 0)
    # a fraction without a run start: since the job's start
    assert estimate_left([(500.0, JobProgress('f', fraction=0.5), None)], [], {}, 1,
                         now).seconds == 500
    # nothing logged yet: its previous duration less the time it has run (never below 0)
    assert estimate_left([(900.0, None, 250.0)], [], {}, 1, now) == Estimate(150.0, 0)
    assert estimate_left([(0.0, JobProgress('g'), 250.0)], [], {}, 1, now) == Estimate(0.0, 0)


def test_estimate_text_names_the_jobs_without_an_estimate():
    assert estimate_text(Estimate(23 * 60, 3), 2, 5) == \
        'about 23 min left (2 running, 5 waiting; 3 jobs with no estimate yet)'
    assert estimate_text(Estimate(40, 0), 1, 0) == 'about 40 s left (1 running, 0 waiting)'
    assert estimate_text(Estimate(0, 2), 1, 1) == \
        'time left unknown (1 running, 1 waiting; 2 jobs with no estimate yet)'
    assert format_seconds(3 * 3600) == '3.0 h'
