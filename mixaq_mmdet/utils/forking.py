"""Runs in forked children of this process: the imports (seconds for mmdet)
are paid once, and the children run side by side on a machine's cores.

Two things do not survive a fork, and a process that forks keeps out of them:
GNU OpenMP's thread pool (the parent must not have run a parallel region: it
computes on one torch thread, :func:`torch_threads`) and inductor's pool of
compile workers (the tool that starts the process sets
``TORCHINDUCTOR_COMPILE_THREADS=1`` before anything compiles); see
:func:`~mixaq_mmdet.quantization.numerics.compile_kernels`. A third: a lock
another thread holds at the fork stays held in the child forever, so a
thread of this process that writes to its streams (whose objects the child's
loggers still hold) does it under :data:`OUTPUT_LOCK`, which every fork
takes."""
import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from typing import Callable, Iterator, NamedTuple, Optional

#: Held around every fork of :func:`fork_child` and by any other thread while it
#: writes to this process's streams (the table runner's progress reporter): a
#: fork in the middle of such a write would leave the stream's lock held in the
#: child, whose mmengine logger writes to the same stream object, and the child
#: would hang on its first log line.
OUTPUT_LOCK = threading.Lock()


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Compute on ``threads`` torch threads within the block, then on as many
    as before."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Child(NamedTuple):
    """A forked child: its pid, log file and start time (``perf_counter``)."""
    pid: int
    log_file: str
    start: float


class Exit(NamedTuple):
    """How a child ended: ``ok`` (exit 0), its wall seconds, resource usage
    (``os.wait4``'s, e.g. ``ru_maxrss``) and, if not ok, why."""
    ok: bool
    wall_s: float
    usage: object
    error: str


def fork_child(target: Callable[[], None], log_file: str, threads: Optional[int] = None) -> Child:
    """Run ``target`` in a forked child with stdout and stderr to ``log_file``
    (and, with ``threads``, that many torch threads); the child exits 0 if
    ``target`` returns, 1 if it raises (the traceback in the log)."""
    start = time.perf_counter()
    with OUTPUT_LOCK:
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            # the streams too: a parent's sys.stdout may be no file of fd 1 (pytest)
            sys.stdout = open(1, 'w', buffering=1, closefd=False)
            sys.stderr = open(2, 'w', buffering=1, closefd=False)
            if threads is not None:
                import torch
                torch.set_num_threads(threads)
            target()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return Child(pid, log_file, start)


def poll_child(child: Child, block: bool = False) -> Optional[Exit]:
    """``child``'s exit if it has ended (waiting for it with ``block``), else None."""
    waited, status, usage = os.wait4(child.pid, 0 if block else os.WNOHANG)
    if waited != child.pid:
        return None
    code = os.waitstatus_to_exitcode(status)
    return Exit(code == 0,
                time.perf_counter() - child.start, usage, '' if code == 0 else f'exit {code}')


def kill_child(child: Child) -> Exit:
    """Kill ``child`` and reap it."""
    os.kill(child.pid, signal.SIGKILL)
    ended = poll_child(child, block=True)
    return ended._replace(ok=False, error='killed')


def run_forked(target: Callable[[], None],
               log_file: str,
               timeout_s: float,
               threads: Optional[int] = None) -> Exit:
    """Run ``target`` in a forked child (:func:`fork_child`, on ``threads`` torch
    threads if given) and wait for it, killing it after ``timeout_s``."""
    child = fork_child(target, log_file, threads)
    deadline = child.start + timeout_s
    while True:
        ended = poll_child(child)
        if ended is not None:
            return ended
        if time.perf_counter() > deadline:
            return kill_child(child)._replace(error=f'killed after {timeout_s} s')
        time.sleep(0.2)
