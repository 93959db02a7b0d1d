"""Progress of a table's running jobs, read from the logs of their mmengine
runs, and an estimate of the time the whole table has left.

mmengine writes ``<work_dir>/<YYYYMMDD_HHMMSS>/<YYYYMMDD_HHMMSS>.log`` and in
it, every few iterations, a line such as
``Epoch(train) [1][ 25/150]  ...  eta: 0:24:45  time: 1.4495 ...``: the
scheduler (:func:`.scheduler.run_jobs`) prints what the newest such line of
each running job says, without touching mmengine's own logging."""
import datetime
import glob
import os
import os.path as osp
import re
import time
from dataclasses import dataclass
from typing import List, Mapping, NamedTuple, Optional, Sequence, Tuple

#: How much older than the job's start a log may look and still count: file
#: times come from a coarser clock than ``time.time()``.
MTIME_SLACK_S = 1.0
#: Bytes read from the end of a log to find its last progress lines.
TAIL_BYTES = 1 << 20

_STAMP = '[0-9]' * 8 + '_' + '[0-9]' * 6
_LINE = re.compile(r'\b(Epoch|Iter)\((train|val|test)\)\s*(?:\[\s*(\d+)\s*\])?'
                   r'\s*\[\s*(\d+)\s*/\s*(\d+)\s*\]')
_ETA = re.compile(r'\beta:\s*(?:(\d+) days?, )?(\d+):(\d\d):(\d\d)')


@dataclass(frozen=True)
class LogLine:
    """One mmengine progress line: ``Epoch`` or ``Iter`` loop, its mode
    (train, val, test), the epoch (Epoch loops of train and val), the
    iterations done and in all (of the epoch, of an Iter training, of a
    val or test pass) and mmengine's eta in seconds if the line has one."""
    loop: str
    mode: str
    epoch: Optional[int]
    done: int
    total: int
    eta_s: Optional[float]
    eta: str = ''


@dataclass(frozen=True)
class JobProgress:
    """A running job's progress: ``text`` for people; ``fraction`` of the
    current run done where the line tells it (an Iter training, a test pass;
    not an Epoch training, whose max epochs the lines do not give); ``eta_s``,
    mmengine's estimate of the current run's seconds left, where it gave one;
    ``run_start``, when the current run began (its log folder's time stamp)."""
    text: str
    fraction: Optional[float] = None
    eta_s: Optional[float] = None
    run_start: Optional[float] = None


class Estimate(NamedTuple):
    """Seconds the table has left over the jobs that have an estimate, and
    how many running or waiting jobs have none."""
    seconds: float
    unknown: int


def parse_line(line: str) -> Optional[LogLine]:
    """``line``'s progress if it is an mmengine ``Epoch(...)``/``Iter(...)``
    line, else None."""
    match = _LINE.search(line)
    if match is None:
        return None
    loop, mode, epoch, done, total = match.groups()
    eta = _ETA.search(line, match.end())
    eta_s, eta_text = None, ''
    if eta is not None:
        days, hours, minutes, seconds = (int(g or 0) for g in eta.groups())
        eta_s = float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
        eta_text = eta.group(0).split(':', 1)[1].strip()
    return LogLine(loop, mode,
                   int(epoch) if epoch is not None else None, int(done), int(total), eta_s,
                   eta_text)


def find_logs(work_dirs: Sequence[str], since: float) -> List[str]:
    """mmengine logs under ``work_dirs`` (``<dir>/<stamp>/<stamp>.log`` or
    ``<dir>/*/<stamp>/<stamp>.log``) modified after ``since`` (a
    ``time.time()``), oldest first."""
    found = {}
    for work_dir in work_dirs:
        for pattern in (osp.join(work_dir, _STAMP,
                                 _STAMP + '.log'), osp.join(work_dir, '*', _STAMP,
                                                            _STAMP + '.log')):
            for path in glob.glob(pattern):
                if osp.basename(path) != osp.basename(osp.dirname(path)) + '.log':
                    continue
                try:
                    mtime = os.stat(path).st_mtime
                except OSError:  # removed meanwhile
                    continue
                if mtime >= since - MTIME_SLACK_S:
                    found[path] = mtime
    return sorted(found, key=lambda p: (found[p], p))


def job_progress(job_work_dirs: Sequence[str], since: float) -> Optional[JobProgress]:
    """The progress of a job started at ``since`` (``time.time()``) whose
    mmengine runs log under ``job_work_dirs``, from the newest log written
    since then; None if there is none yet."""
    logs = find_logs(job_work_dirs, since)
    if not logs:
        return None
    log = logs[-1]
    run_start = _stamp_time(osp.basename(osp.dirname(log)))
    runs = f'run {len(logs)}, ' if len(logs) > 1 else ''
    last, train = _last_lines(log)
    if last is None:
        return JobProgress(f'{runs}mmengine run started, no progress line yet', None, None,
                           run_start)
    counts = f'iteration {last.done}/{last.total}'
    fraction = last.done / last.total if last.total else None
    if last.mode == 'train':
        eta = f', mmengine eta {last.eta}' if last.eta else ''
        if last.loop == 'Epoch':
            return JobProgress(f'{runs}epoch {last.epoch}, {counts}{eta}', None, last.eta_s,
                               run_start)
        return JobProgress(f'{runs}{counts}{eta}', fraction, last.eta_s, run_start)
    if last.mode == 'val':
        # validation inside a training: the time left is the training's
        epoch = f' after epoch {last.epoch}' if last.epoch is not None else ''
        text = f'{runs}validation{epoch}, {counts}'
        if train is not None and train.eta:
            text += f', mmengine training eta {train.eta} (at its last training line)'
        return JobProgress(text, None, train.eta_s if train is not None else None, run_start)
    eta = f', mmengine eta {last.eta}' if last.eta else ''
    return JobProgress(f'{runs}test, {counts}{eta}', fraction, last.eta_s, run_start)


def estimate_left(running: Sequence[Tuple[float, Optional[JobProgress], Optional[float]]],
                  pending: Sequence[str],
                  durations: Mapping[str, float],
                  workers: int,
                  now: Optional[float] = None) -> Estimate:
    """Seconds the table has left: ``running`` as (start, progress, seconds
    it took in a previous run or None) of each running job, ``pending`` the
    names of the jobs not started, ``durations`` the seconds each job took in
    a previous run.

    A running job has mmengine's eta left, else ``elapsed * (1 - f) / f``
    from a fraction ``f`` done (elapsed since its run began), else its
    previous duration less the time it has run, else no estimate; a pending
    job its previous duration, else none. The work is spread over
    ``workers``, but the table takes at least as long as its longest running
    job: a rough guide, not a schedule."""
    now = time.time() if now is None else now
    left: List[float] = []
    unknown = 0
    for start, progress, previous in running:
        seconds = _job_left(start, progress, now)
        if seconds is None and previous is not None:
            seconds = max(0.0, previous - (now - start))
        if seconds is None:
            unknown += 1
        else:
            left.append(seconds)
    longest = max(left, default=0.0)
    for name in pending:
        if name in durations:
            left.append(float(durations[name]))
        else:
            unknown += 1
    return Estimate(max(longest, sum(left) / max(1, workers)), unknown)


def estimate_text(estimate: Estimate, running: int, waiting: int) -> str:
    """``estimate`` for people, e.g. ``about 23 min left (2 running, 5
    waiting; 3 jobs with no estimate yet)``."""
    counts = f'{running} running, {waiting} waiting'
    if estimate.unknown:
        counts += f'; {estimate.unknown} job{"s" if estimate.unknown > 1 else ""} ' \
            'with no estimate yet'
    if estimate.unknown >= running + waiting:
        return f'time left unknown ({counts})'
    return f'about {format_seconds(estimate.seconds)} left ({counts})'


def format_seconds(seconds: float) -> str:
    """``seconds`` as ``40 s``, ``23 min`` or ``2.5 h``."""
    if seconds < 60:
        return f'{seconds:.0f} s'
    if seconds < 90 * 60:
        return f'{seconds / 60:.0f} min'
    return f'{seconds / 3600:.1f} h'


def _job_left(start: float, progress: Optional[JobProgress], now: float) -> Optional[float]:
    if progress is None:
        return None
    if progress.eta_s is not None:
        return progress.eta_s
    if progress.fraction:
        elapsed = now - (progress.run_start if progress.run_start is not None else start)
        return max(0.0, elapsed) * (1 - progress.fraction) / progress.fraction
    return None


def _stamp_time(stamp: str) -> Optional[float]:
    """A ``YYYYMMDD_HHMMSS`` folder name (mmengine's local time) as ``time.time()``."""
    try:
        return datetime.datetime.strptime(stamp, '%Y%m%d_%H%M%S').timestamp()
    except ValueError:
        return None


def _last_lines(log: str) -> Tuple[Optional[LogLine], Optional[LogLine]]:
    """The last progress line of ``log`` (its last ``TAIL_BYTES``) and its
    last training line."""
    try:
        with open(log, 'rb') as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - TAIL_BYTES))
            text = f.read().decode(errors='replace')
    except OSError:
        return None, None
    last = train = None
    for line in reversed(text.splitlines()):
        parsed = parse_line(line)
        if parsed is None:
            continue
        last = last or parsed
        if parsed.mode == 'train':
            train = parsed
        if last.mode != 'val' or train is not None:
            break
    return last, train
