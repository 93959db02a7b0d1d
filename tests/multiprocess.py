"""Run a worker in gloo ranks spawned by ``torch.multiprocessing`` and fail,
never hang, when one of them stalls."""
import faulthandler
import os
import os.path as osp
import socket
import tempfile
import time
from datetime import timedelta
from typing import Callable

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
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=world_size, timeout=COLLECTIVE_TIMEOUT)


def finish_gloo() -> None:
    """Leave together: a rank that tears down the store while another still
    talks to it would leave that one waiting."""
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()


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


def spawn_ranks(worker: Callable[[int, int, str], None], out_dir: str, nprocs: int = 2,
                timeout_s: float = 300) -> None:
    """Run ``worker(rank, port, out_dir)`` in ``nprocs`` processes.

    A rank that raises fails the test with its traceback (torch's
    ``ProcessRaisedException``); ranks still running after ``timeout_s`` are
    killed and the test fails with every thread's Python stack of each rank."""
    stack_dir = tempfile.mkdtemp(prefix='stacks-', dir=out_dir)
    deadline = time.time() + timeout_s  # the ranks dump their stacks then
    context = mp.spawn(_traced, args=(worker, free_port(), out_dir, stack_dir, deadline),
                       nprocs=nprocs, join=False)
    while not context.join(timeout=1):
        if time.time() > deadline + 3:
            for process in context.processes:
                process.kill()
            stacks = []
            for name in sorted(os.listdir(stack_dir)):
                with open(osp.join(stack_dir, name)) as f:
                    stacks.append(f'--- {name}\n{f.read() or "(no dump)"}')
            pytest.fail(f'{worker.__name__} did not finish in {timeout_s} s; stacks:\n'
                        + '\n'.join(stacks))
