"""Two gloo ranks calibrate on different data and must agree with one process on the union."""
import os
import socket
import time
from datetime import timedelta
from typing import Dict, List

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mixaq_mmdet.quantization import (LogSqrt2Quantizer, LSQQuantizer, UniformQuantizer,
                                      enable_calibration, enable_quantization)

TIMEOUT_S = 120


def build_model() -> nn.ModuleDict:
    return nn.ModuleDict(dict(
        minmax=UniformQuantizer(4),
        minmax_channel=UniformQuantizer(4, symmetric=True, per_channel=True, ch_axis=-1),
        hist=UniformQuantizer(8, calib='percentile_mse'),
        hist_channel=UniformQuantizer(4, per_channel=True, ch_axis=-1, calib='percentile_mse'),
        only_rank1=UniformQuantizer(6, calib='percentile_mse'),
        weight=UniformQuantizer(4, per_channel=True, calib='percentile_mse', static=True),
        lsq=LSQQuantizer(3, calib='percentile_mse'),
        softmax=LogSqrt2Quantizer(4),
    ))


def rank_batches(rank: int) -> List[torch.Tensor]:
    """Different data per rank: counts, scales (so histogram ranges) and tails differ."""
    gen = torch.Generator().manual_seed(100 + rank)
    if rank == 0:
        return [torch.randn(2, 30, 8, generator=gen) for _ in range(2)]
    return [torch.randn(3, 20, 8, generator=gen)**3 * 3 + 2]


def rank_weight(rank: int) -> torch.Tensor:
    """A weight replica; rank 1's has drifted, yet every rank must use rank 0's."""
    return torch.randn(6, 10, generator=torch.Generator().manual_seed(7)) * (1 + rank / 10)


def calibrate(model: nn.ModuleDict, batches: List[torch.Tensor], rank: int) -> None:
    weight = rank_weight(rank)
    enable_calibration(model)
    for x in batches:
        for name in ('minmax', 'minmax_channel', 'hist', 'hist_channel', 'lsq'):
            model[name](x)
        model['softmax'](x.softmax(-1))
        model['weight'](weight)
        model['only_rank1'](x if rank == 1 else x[:0])
    enable_quantization(model)


def qparams(model: nn.ModuleDict) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=2, timeout=timedelta(seconds=60))
    try:
        model = build_model()
        calibrate(model, rank_batches(rank), rank)
        torch.save(qparams(model), os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason='torch.distributed is not available')
def test_two_rank_calibration_equals_single_process_on_union(tmp_path):
    context = mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f'distributed calibration did not finish in {TIMEOUT_S} s')
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]

    single = build_model()
    union = rank_batches(0) + rank_batches(1)
    enable_calibration(single)
    for x in union:
        for name in ('minmax', 'minmax_channel', 'hist', 'hist_channel', 'lsq'):
            single[name](x)
        single['softmax'](x.softmax(-1))
        single['only_rank1'](x if x.shape[0] == 3 else x[:0])
    single['weight'](rank_weight(0))
    enable_quantization(single)
    expected = qparams(single)

    assert set(ranks[0]) == set(expected)
    for key, value in expected.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        assert torch.equal(ranks[0][key], value), key
    # The ranks' data differ: rank 0 alone calibrates differently from the union.
    alone = UniformQuantizer(4)
    for x in rank_batches(0):
        alone(x)
    alone.disable_observer()
    assert not torch.equal(alone.scale, expected['minmax.scale'])
    assert expected['hist_channel.scale'].shape == (8, )
