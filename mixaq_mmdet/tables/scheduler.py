"""Runs a table's jobs (trainings, groups of rows, searches) in the order
their dependencies allow: in this process one after the other, or side by
side in forked children.

On a CPU, two runs on one thread each get through about 1.5x the work of one
run on two threads (``make demo``'s training steps on 2 cores: 0.88 s a step
on one thread, 0.66 s on two, and two one-thread runs at once each keep 0.88
s): small kernels, and mmcv's RoIAlign on one thread, leave a second thread
of a run idle much of the time."""
import json
import os
import os.path as osp
import pickle
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..utils.forking import OUTPUT_LOCK, Child, fork_child, poll_child
from .progress import estimate_left, estimate_text, job_progress

#: Seconds between looks at the running children.
POLL_S = 0.5
#: What the progress lines start with.
PROGRESS = '[table] progress:'
#: The file in ``log_dir`` with each job's seconds in the last run that finished it.
DURATIONS = 'durations.json'


@dataclass(frozen=True)
class Job:
    """``run`` (its result is handed to the scheduler's ``done``) once the
    jobs named in ``needs`` have finished; its mmengine runs log under
    ``work_dirs`` (where the progress lines read how far it is). A ``light``
    job only looks results up (rows not asked for): it runs in this process
    as soon as it can, without a worker, a log, a line or a duration."""
    name: str
    run: Callable[[], Any]
    needs: Tuple[str, ...] = ()
    work_dirs: Tuple[str, ...] = ()
    light: bool = False


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
             cores: Optional[int] = None,
             progress_s: Optional[float] = 60.0) -> None:
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

    Every ``progress_s`` seconds (None: never) while jobs run, a line per
    running job says how far its mmengine run is (:func:`.progress.job_progress`)
    and one line how long the table has left (:func:`.progress.estimate_left`,
    from each job's duration in a previous run: ``<log_dir>/durations.json``,
    updated as jobs finish; without a ``log_dir`` none are kept).
    """
    check_jobs(jobs)
    if workers < 1:
        raise ValueError(f'workers must be 1 or more, got {workers}')
    if progress_s is not None and progress_s <= 0:
        raise ValueError(f'progress_s must be above 0 or None, got {progress_s}')
    if workers == 1:
        _run_here(jobs, done, log_dir, progress_s)
        return
    if log_dir is None:
        raise ValueError('run_jobs with more than one worker needs a log_dir')
    os.makedirs(log_dir, exist_ok=True)
    cores = cores or torch.get_num_threads()
    previous = load_durations(log_dir)
    durations = dict(previous)
    pending: List[Job] = list(jobs)
    running: Dict[str, Tuple[Job, Child, str]] = {}
    starts: Dict[str, float] = {}
    finished = set()
    failed: Optional[Tuple[Job, str, str]] = None
    last_progress = time.monotonic()
    while pending or running:
        ready = [j for j in pending if all(n in finished for n in j.needs)]
        while failed is None and any(j.light for j in ready):
            for job in [j for j in ready if j.light]:
                pending.remove(job)
                done(job, job.run())
                finished.add(job.name)
            ready = [j for j in pending if all(n in finished for n in j.needs)]
        while ready and len(running) < workers and failed is None:
            job = ready.pop(0)
            pending.remove(job)
            alone = not running and not ready
            threads = cores if alone else max(1, cores // workers)
            starts[job.name] = time.time()
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
            durations[name] = ended.wall_s
            save_durations(log_dir, durations)
            done(job, result)
        if progress_s is not None and running and \
                time.monotonic() - last_progress >= progress_s:
            last_progress = time.monotonic()
            waiting = [j.name for j in pending if not j.light] if failed is None else []
            print_progress([(j, starts[n]) for n, (j, _, _) in running.items()], waiting, previous,
                           workers)
    if failed is not None:
        job, log_file, error = failed
        with open(log_file, errors='replace') as f:
            tail = f.read()[-3000:]
        left = [j.name for j in pending]
        raise RuntimeError(f'job {job.name} failed ({error}); not started: {left}; the end of '
                           f'{log_file}:\n{tail}')


def print_progress(running: Sequence[Tuple[Job, float]], pending: Sequence[str],
                   durations: Dict[str, float], workers: int) -> None:
    """Print a ``[table] progress:`` line for each of the ``running`` jobs
    (with their start, a ``time.time()``) and one with the time the table
    has left."""
    now = time.time()
    progresses = []
    for job, start in running:
        progress = job_progress(job.work_dirs, start)
        progresses.append((start, progress, durations.get(job.name)))
        what = progress.text if progress is not None else 'no mmengine log yet'
        print(f'{PROGRESS} {job.name}: {(now - start) / 60:.1f} min, {what}', flush=True)
    estimate = estimate_left(progresses, pending, durations, workers, now)
    print(f'{PROGRESS} {estimate_text(estimate, len(running), len(pending))}', flush=True)


def load_durations(log_dir: Optional[str]) -> Dict[str, float]:
    """The seconds each job took in previous runs (``<log_dir>/durations.json``;
    empty if there is none or it is unreadable)."""
    path = osp.join(log_dir, DURATIONS) if log_dir else None
    if path is None or not osp.isfile(path):
        return {}
    try:
        with open(path) as f:
            durations = json.load(f)
        return {str(k): float(v) for k, v in durations.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def save_durations(log_dir: Optional[str], durations: Dict[str, float]) -> None:
    """Write ``durations`` to ``<log_dir>/durations.json`` (at once: a reader
    never sees half a file); nothing without a ``log_dir``."""
    if not log_dir:
        return
    path = osp.join(log_dir, DURATIONS)
    with open(path + '.tmp', 'w') as f:
        json.dump(durations, f, indent=1, sort_keys=True)
    os.replace(path + '.tmp', path)


def _run_here(jobs: Sequence[Job], done: Callable[[Job, Any], None], log_dir: Optional[str],
              progress_s: Optional[float]) -> None:
    """Run ``jobs`` in this process in order; a daemon thread prints the
    running one's progress every ``progress_s`` seconds."""
    if log_dir is not None:
        os.makedirs(log_dir, exist_ok=True)
    previous = load_durations(log_dir)
    durations = dict(previous)
    # the running job, its start and the jobs after it: one item, replaced at once
    current: List[Optional[Tuple[Job, float, List[str]]]] = [None]
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(progress_s):
            state = current[0]
            if state is None:
                continue
            job, start, rest = state
            # the job may fork (a launched run in the COCO smoke): never mid-write
            with OUTPUT_LOCK:
                try:
                    print_progress([(job, start)], rest, previous, 1)
                except Exception as exc:  # progress must not stop the table
                    print(f'{PROGRESS} failed: {exc!r}', flush=True)

    reporter = None
    if progress_s is not None:
        reporter = threading.Thread(target=report, name='table progress', daemon=True)
        reporter.start()
    try:
        for i, job in enumerate(jobs):
            if job.light:
                done(job, job.run())
                continue
            start = time.perf_counter()
            current[0] = (job, time.time(), [j.name for j in jobs[i + 1:] if not j.light])
            result = job.run()
            current[0] = None
            durations[job.name] = time.perf_counter() - start
            save_durations(log_dir, durations)
            done(job, result)
    finally:
        stop.set()
        if reporter is not None:
            reporter.join()


def _start(job: Job, log_dir: str, threads: int) -> Tuple[Job, Child, str]:
    base = osp.join(log_dir, file_name(job.name))
    result_file = base + '.result.pkl'

    def target() -> None:
        result = job.run()
        with open(result_file, 'wb') as f:
            pickle.dump(result, f)

    return job, fork_child(target, base + '.log', threads), result_file
