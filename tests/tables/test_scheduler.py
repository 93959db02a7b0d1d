"""The table's job scheduler: dependencies, threads per job, failures,
progress lines."""
import io
import json
import os
import re
import sys
import time

import pytest
import torch

from mixaq_mmdet.tables.scheduler import Job, check_jobs, load_durations, run_jobs

TRAIN = ('12/07 05:09:55 - mmengine - INFO - Epoch(train) [1][ 25/150]  base_lr: 2.4970e-04 '
         'lr: 2.4970e-04  eta: 0:24:45  time: 1.4495  data_time: 0.0257  loss: 3.2114')
#: Waits for the progress line at most this long: a test that fails takes that.
WAIT_S = 20.0


def _timed(name: str, seconds: float = 0.0):

    def run():
        start = time.time()
        time.sleep(seconds)
        return dict(
            name=name,
            start=start,
            end=time.time(),
            pid=os.getpid(),
            threads=torch.get_num_threads())

    return run


def test_jobs_must_be_listed_after_what_they_need():
    with pytest.raises(ValueError, match=r"job 'b' needs \['a'\], which are not jobs listed"):
        check_jobs([Job('b', _timed('b'), ('a', )), Job('a', _timed('a'))])
    with pytest.raises(ValueError, match="job 'a' is listed twice"):
        check_jobs([Job('a', _timed('a')), Job('a', _timed('a'))])
    with pytest.raises(ValueError, match='workers must be 1 or more, got 0'):
        run_jobs([], lambda job, result: None, workers=0)
    with pytest.raises(ValueError, match='progress_s must be above 0 or None, got 0'):
        run_jobs([], lambda job, result: None, progress_s=0)


def test_one_worker_runs_in_order_in_this_process(capsys):
    results = []
    jobs = [Job('a', _timed('a')), Job('b', _timed('b'), ('a', ))]
    run_jobs(jobs, lambda job, result: results.append(result))
    assert [r['name'] for r in results] == ['a', 'b']
    assert {r['pid'] for r in results} == {os.getpid()}
    # short jobs: no progress line within the default 60 s
    assert '[table] progress:' not in capsys.readouterr().out


def test_two_workers_run_side_by_side_after_what_each_needs(tmp_path):
    results = {}
    jobs = [
        Job('first', _timed('first', 0.3)),
        Job('left', _timed('left', 1.0), ('first', )),
        Job('right', _timed('right', 1.0), ('first', )),
        Job('last', _timed('last'), ('left', )),
    ]
    run_jobs(
        jobs,
        lambda job, result: results.setdefault(job.name, result),
        workers=2,
        log_dir=str(tmp_path),
        cores=4)
    assert set(results) == {'first', 'left', 'right', 'last'}
    assert os.getpid() not in {r['pid'] for r in results.values()}
    # nothing else could run beside the first job: it got every core
    assert results['first']['threads'] == 4
    assert results['left']['threads'] == results['right']['threads'] == 2
    assert results['left']['start'] >= results['first']['end']
    assert results['right']['start'] >= results['first']['end']
    assert results['last']['start'] >= results['left']['end']
    # left and right ran at the same time
    assert results['right']['start'] < results['left']['end']
    assert sorted(os.listdir(tmp_path)) == [
        'durations.json', 'first.log', 'last.log', 'left.log', 'right.log'
    ]
    durations = load_durations(str(tmp_path))
    assert set(durations) == {'first', 'left', 'right', 'last'}
    assert durations['left'] >= 1.0


def test_a_failed_job_stops_what_needs_it_and_names_its_error(tmp_path):
    results = {}

    def fail():
        raise ValueError('the bad value')

    jobs = [
        Job('fails', fail),
        Job('independent', _timed('independent', 0.5)),
        Job('after', _timed('after'), ('fails', )),
    ]
    with pytest.raises(RuntimeError) as info:
        run_jobs(
            jobs,
            lambda job, result: results.setdefault(job.name, result),
            workers=2,
            log_dir=str(tmp_path))
    message = str(info.value)
    assert message.startswith('job fails failed (exit 1)')
    assert "not started: ['after']" in message and 'ValueError: the bad value' in message
    # the job running beside it finished and its result was kept
    assert set(results) == {'independent'}


def test_jobs_side_by_side_are_refused_where_each_run_takes_every_device(tmp_path):
    from mixaq_mmdet.tables import BENCHMARK, LaunchExecutor, TableRunner
    with pytest.raises(ValueError, match='jobs=2 runs jobs side by side'):
        TableRunner(BENCHMARK, str(tmp_path), LaunchExecutor(BENCHMARK, gpus=8), jobs=2)


class _Watched(io.StringIO):
    """sys.stdout for a test: keeps what is printed (a look at it empties
    nothing, unlike capsys from a second thread) and touches ``release``
    once a line has ``wanted``."""

    def __init__(self, wanted: str, release: str):
        super().__init__()
        self.wanted, self.release = wanted, release

    def write(self, text: str) -> int:
        if self.wanted in text:
            open(self.release, 'w').close()
        return super().write(text)


def _fake_mmengine_run(work_dir: str, release: str, *lines: str, wait_s: float = WAIT_S):
    """A job that writes an mmengine-like log with ``lines`` and waits until
    the progress line was printed (``release`` exists), at most ``wait_s``."""

    def run():
        stamp = '20261207_101010'
        os.makedirs(os.path.join(work_dir, stamp))
        with open(os.path.join(work_dir, stamp, stamp + '.log'), 'w') as f:
            f.write(''.join(line + '\n' for line in lines))
        deadline = time.monotonic() + wait_s
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.05)
        return os.path.exists(release)

    return run


def _stale_log(work_dir: str) -> None:
    """An earlier run's log, from before the job started: not its progress."""
    stamp = '20261207_090000'
    os.makedirs(os.path.join(work_dir, 'test', stamp))
    path = os.path.join(work_dir, 'test', stamp, stamp + '.log')
    with open(path, 'w') as f:
        f.write(TRAIN.replace('[ 25/150]', '[ 99/150]') + '\n')
    past = time.time() - 3600
    os.utime(path, (past, past))


@pytest.mark.parametrize('workers', [1, 2])
def test_running_jobs_report_their_mmengine_progress(tmp_path, monkeypatch, workers):
    work_dir, release = str(tmp_path / 'train'), str(tmp_path / 'release')
    _stale_log(work_dir)
    stdout = _Watched('iteration 25/150', release)
    monkeypatch.setattr(sys, 'stdout', stdout)
    results = {}
    jobs = [
        Job('train', _fake_mmengine_run(work_dir, release, TRAIN), work_dirs=(work_dir, )),
        Job('after', _timed('after'), ('train', )),
    ]
    run_jobs(
        jobs,
        lambda job, result: results.setdefault(job.name, result),
        workers=workers,
        log_dir=str(tmp_path / 'logs'),
        progress_s=0.3)
    out = stdout.getvalue()
    # the stale log is neither reported nor counted as a run before this one ('run 2, ')
    assert re.search(
        r'^\[table\] progress: train: [\d.]+ min, epoch 1, iteration 25/150, '
        r'mmengine eta 0:24:45$', out, re.M), out
    assert 'iteration 99/150' not in out
    # the job saw its progress printed (not a timeout)
    assert results['train'] is True
    # the job after it has no duration from an earlier run
    assert '[table] progress: about 25 min left (1 running, 1 waiting; 1 job with no estimate ' \
        'yet)' in out
    # the children's output is in their logs, the parent prints the progress
    if workers == 2:
        assert '[table] train: started' in out and '[table] train: done in' in out
        assert '[table] progress:' not in (tmp_path / 'logs' / 'train.log').read_text()


def test_the_time_left_counts_a_waiting_job_from_its_previous_duration(tmp_path, monkeypatch):
    work_dir, release, log_dir = str(tmp_path / 'train'), str(tmp_path /
                                                              'release'), tmp_path / 'logs'
    log_dir.mkdir()
    (log_dir / 'durations.json').write_text(json.dumps({'rows': 600.0, 'gone': 5.0}))
    stdout = _Watched('min left', release)
    monkeypatch.setattr(sys, 'stdout', stdout)
    jobs = [
        Job('train', _fake_mmengine_run(work_dir, release, TRAIN), work_dirs=(work_dir, )),
        Job('rows', _timed('rows'), ('train', )),
    ]
    run_jobs(jobs, lambda job, result: None, log_dir=str(log_dir), progress_s=0.3)
    # mmengine's 24:45 for the training and 10 min for the rows after it
    assert '[table] progress: about 35 min left (1 running, 1 waiting)' in stdout.getvalue()
    # this run's durations replace the previous ones, the others are kept
    durations = load_durations(str(log_dir))
    assert set(durations) == {'train', 'rows', 'gone'}
    assert durations['rows'] < 600 and durations['gone'] == 5.0


def test_no_progress_lines_without_progress_s(tmp_path, capsys):
    work_dir = str(tmp_path / 'train')
    never = str(tmp_path / 'never')
    jobs = [Job('train', _fake_mmengine_run(work_dir, never, TRAIN, wait_s=1.0), (), (work_dir, ))]
    run_jobs(jobs, lambda job, result: None, progress_s=None)
    assert '[table] progress:' not in capsys.readouterr().out


def test_light_jobs_run_here_without_a_worker(tmp_path, capsys):
    """Rows not asked for only keep their records: such a job runs in this
    process, prints no line and takes no worker, so a training ready beside
    it still gets every core."""
    results = {}
    jobs = [
        Job('kept', _timed('kept'), light=True),
        Job('train', _timed('train', 0.3)),
        Job('kept after', _timed('kept after'), ('train', ), light=True),
    ]
    run_jobs(
        jobs,
        lambda job, result: results.setdefault(job.name, result),
        workers=2,
        log_dir=str(tmp_path),
        cores=4,
        progress_s=None)
    out = capsys.readouterr().out
    assert results['kept']['pid'] == results['kept after']['pid'] == os.getpid()
    assert results['train']['pid'] != os.getpid() and results['train']['threads'] == 4
    assert 'kept: started' not in out and 'train: started, torch threads 4' in out
    assert results['kept after']['start'] >= results['train']['end']
    assert not any(name.startswith('kept') for name in os.listdir(tmp_path))
