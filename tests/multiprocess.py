"""Run a worker in gloo ranks spawned by ``torch.multiprocessing`` and fail,
never hang, when one of them stalls."""
import contextlib
import faulthandler
import os
import os.path as osp
import socket
import tempfile
import time
from datetime import timedelta
from typing import Callable, Iterator

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

#: gloo's own timeout: a collective that one rank never joins raises after this.
COLLECTIVE_TIMEOUT = timedelta(seconds=60)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def init_gloo(rank: int, port: int, world_size: int = 2) -> None:
    dist.init_process_group(
        'gloo',
        init_method=f'tcp://127.0.0.1:{port}',
        rank=rank,
        world_size=world_size,
        timeout=COLLECTIVE_TIMEOUT)


def finish_gloo() -> None:
    """Leave together: a rank that tears down the store while another still
    talks to it would leave that one waiting."""
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread inside the block, as every rank runs (see ``_traced``):
    a reference computed in the test process then rounds as the ranks do,
    whatever thread count the test process has (OMP_NUM_THREADS, the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _traced(rank: int, worker: Callable, port: int, out_dir: str, stack_dir: str,
            deadline: float) -> None:
    # One thread per rank, as torch.distributed.run sets: ranks x threads beyond
    # the cores make the busy-waiting BLAS threads starve gloo's.
    torch.set_num_threads(1)
    with open(osp.join(stack_dir, f'rank{rank}.txt'), 'w') as stacks:
        faulthandler.dump_traceback_later(max(deadline - time.time(), 0.1), file=stacks)
        try:
            worker(rank, port, out_dir)
        finally:
            faulthandler.cancel_dump_traceback_later()


#: How long past its deadline a stalled run waits for a late rank's stack dump.
STARTUP_GRACE_S = 120


def _stacks_dumped(context, stack_dir: str) -> bool:
    """Whether every rank still running has written its stack dump."""
    for rank, process in enumerate(context.processes):
        path = osp.join(stack_dir, f'rank{rank}.txt')
        if process.is_alive() and not (osp.exists(path) and osp.getsize(path) > 0):
            return False
    return True


def spawn_ranks(worker: Callable[[int, int, str], None],
                out_dir: str,
                nprocs: int = 2,
                timeout_s: float = 300) -> None:
    """Run ``worker(rank, port, out_dir)`` in ``nprocs`` processes.

    A rank that raises fails the test with its traceback (torch's
    ``ProcessRaisedException``); ranks still running after ``timeout_s`` are
    killed and the test fails with every thread's Python stack of each rank
    (waiting, past ``timeout_s``, until each rank still running has dumped it)."""
    stack_dir = tempfile.mkdtemp(prefix='stacks-', dir=out_dir)
    deadline = time.time() + timeout_s  # the ranks dump their stacks then
    context = mp.spawn(
        _traced,
        args=(worker, free_port(), out_dir, stack_dir, deadline),
        nprocs=nprocs,
        join=False)
    while not context.join(timeout=1):
        # Past the deadline, wait for the stack of every rank still running: on a
        # loaded machine a rank may start (import torch) after the deadline and
        # dump only then, 0.1 s after it started (at most STARTUP_GRACE_S more).
        now = time.time()
        if now > deadline + 3 and (now > deadline + STARTUP_GRACE_S
                                   or _stacks_dumped(context, stack_dir)):
            for process in context.processes:
                process.kill()
            stacks = []
            for name in sorted(os.listdir(stack_dir)):
                with open(osp.join(stack_dir, name)) as f:
                    stacks.append(f'--- {name}\n{f.read() or "(no dump)"}')
            pytest.fail(f'{worker.__name__} did not finish in {timeout_s} s; stacks:\n' +
                        '\n'.join(stacks))
