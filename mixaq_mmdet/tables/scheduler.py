"""Runs a table's jobs (trainings, groups of rows, searches) in the order
their dependencies allow: in this process one after the other, or side by
side in forked children.

On a CPU, two runs on one thread each get through about 1.5x the work of one
run on two threads (``make demo``'s training steps on 2 cores: 0.88 s a step
on one thread, 0.66 s on two, and two one-thread runs at once each keep 0.88
s): small kernels, and mmcv's RoIAlign on one thread, leave a second thread
of a run idle much of the time."""
import os
import os.path as osp
import pickle
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..utils.forking import Child, fork_child, poll_child

#: Seconds between looks at the running children.
POLL_S = 0.5


@dataclass(frozen=True)
class Job:
    """``run`` (its result is handed to the scheduler's ``done``) once the
    jobs named in ``needs`` have finished."""
    name: str
    run: Callable[[], Any]
    needs: Tuple[str, ...] = ()


def check_jobs(jobs: Sequence[Job]) -> None:
    """Names are unique and each job needs only jobs listed before it."""
    seen = set()
    for job in jobs:
        if job.name in seen:
            raise ValueError(f'job {job.name!r} is listed twice')
        missing = [n for n in job.needs if n not in seen]
        if missing:
            raise ValueError(f'job {job.name!r} needs {missing}, which are not jobs '
                             'listed before it')
        seen.add(job.name)


def file_name(job: str) -> str:
    """``job`` as a file name."""
    return ''.join(c if c.isalnum() or c in '@._-' else '_' for c in job)


def run_jobs(jobs: Sequence[Job],
             done: Callable[[Job, Any], None],
             workers: int = 1,
             log_dir: Optional[str] = None,
             cores: Optional[int] = None) -> None:
    """Run ``jobs`` (each after the jobs it needs) and give each result to
    ``done`` in this process, in the order the jobs end.

    ``workers`` 1: in this process, in the listed order. More: up to
    ``workers`` forked children at a time (their output in
    ``<log_dir>/<job>.log``), each on ``cores // workers`` torch threads, or on
    all ``cores`` when it is the only job that can run (a first training that
    every other job waits for); ``cores`` defaults to this process's torch
    threads (``OMP_NUM_THREADS`` sets them). A job ready earlier in the list
    starts first. If a job fails, no new job starts, the running ones finish
    (their results kept) and a RuntimeError shows the end of the failed job's
    log.
    """
    check_jobs(jobs)
    if workers < 1:
        raise ValueError(f'workers must be 1 or more, got {workers}')
    if workers == 1:
        for job in jobs:
            done(job, job.run())
        return
    if log_dir is None:
        raise ValueError('run_jobs with more than one worker needs a log_dir')
    os.makedirs(log_dir, exist_ok=True)
    cores = cores or torch.get_num_threads()
    pending: List[Job] = list(jobs)
    running: Dict[str, Tuple[Job, Child, str]] = {}
    finished = set()
    failed: Optional[Tuple[Job, str, str]] = None
    while pending or running:
        ready = [j for j in pending if all(n in finished for n in j.needs)]
        while ready and len(running) < workers and failed is None:
            job = ready.pop(0)
            pending.remove(job)
            alone = not running and not ready
            threads = cores if alone else max(1, cores // workers)
            running[job.name] = _start(job, log_dir, threads)
            log_file = running[job.name][1].log_file
            print(
                f'[table] {job.name}: started, torch threads {threads}, log {log_file}', flush=True)
        if failed is not None and not running:
            break
        time.sleep(POLL_S)
        for name, (job, child, result_file) in list(running.items()):
            ended = poll_child(child)
            if ended is None:
                continue
            del running[name]
            if not ended.ok:
                print(
                    f'[table] {name}: FAILED ({ended.error}) after {ended.wall_s / 60:.1f} min',
                    flush=True)
                failed = failed or (job, child.log_file, ended.error)
                continue
            with open(result_file, 'rb') as f:
                result = pickle.load(f)
            os.remove(result_file)
            finished.add(name)
            print(f'[table] {name}: done in {ended.wall_s / 60:.1f} min', flush=True)
            done(job, result)
    if failed is not None:
        job, log_file, error = failed
        with open(log_file, errors='replace') as f:
            tail = f.read()[-3000:]
        left = [j.name for j in pending]
        raise RuntimeError(f'job {job.name} failed ({error}); not started: {left}; the end of '
                           f'{log_file}:\n{tail}')


def _start(job: Job, log_dir: str, threads: int) -> Tuple[Job, Child, str]:
    base = osp.join(log_dir, file_name(job.name))
    result_file = base + '.result.pkl'

    def target() -> None:
        result = job.run()
        with open(result_file, 'wb') as f:
            pickle.dump(result, f)

    return job, fork_child(target, base + '.log', threads), result_file
