"""The spawn helper of the distributed tests fails with each rank's stack
instead of hanging, and passes a rank's exception on."""
import time

import pytest
from torch.multiprocessing import ProcessRaisedException

from .multiprocess import spawn_ranks


def _rank1_stalls(rank: int, port: int, out_dir: str) -> None:
    if rank == 1:
        time.sleep(120)


def _rank1_raises(rank: int, port: int, out_dir: str) -> None:
    if rank == 1:
        raise ValueError('rank 1 went wrong')


def test_a_stalled_rank_fails_with_its_stack(tmp_path):
    with pytest.raises(pytest.fail.Exception) as failure:
        spawn_ranks(_rank1_stalls, str(tmp_path), timeout_s=5)
    message = str(failure.value)
    assert '_rank1_stalls did not finish in 5 s' in message
    assert '--- rank1.txt' in message and 'in _rank1_stalls' in message


def test_a_raising_rank_fails_with_its_exception(tmp_path):
    with pytest.raises(ProcessRaisedException, match='rank 1 went wrong'):
        spawn_ranks(_rank1_raises, str(tmp_path), timeout_s=60)
