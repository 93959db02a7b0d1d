"""The table's job scheduler: dependencies, threads per job, failures."""
import os
import time

import pytest
import torch

from mixaq_mmdet.tables.scheduler import Job, check_jobs, run_jobs


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


def test_one_worker_runs_in_order_in_this_process():
    results = []
    jobs = [Job('a', _timed('a')), Job('b', _timed('b'), ('a', ))]
    run_jobs(jobs, lambda job, result: results.append(result))
    assert [r['name'] for r in results] == ['a', 'b']
    assert {r['pid'] for r in results} == {os.getpid()}


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
    assert sorted(os.listdir(tmp_path)) == ['first.log', 'last.log', 'left.log', 'right.log']


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
