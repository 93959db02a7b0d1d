"""Two gloo ranks calibrate on different data and must agree with one process on the union."""
import os
from typing import Dict, List

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mixaq_mmdet.quantization import (LogSqrt2Quantizer, LSQQuantizer, QuantLinear,
                                      UniformQuantizer, disable_quantization, enable_calibration,
                                      finish_calibration)
from mixaq_mmdet.quantization.reparam import (ReparamTarget, record_channel_statistics,
                                              reparameterize)
from ..multiprocess import finish_gloo, init_gloo, single_thread, spawn_ranks


def build_model() -> nn.ModuleDict:
    return nn.ModuleDict(
        dict(
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
    finish_calibration(model)


def qparams(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    init_gloo(rank, port)
    try:
        model = build_model()
        calibrate(model, rank_batches(rank), rank)
        torch.save(qparams(model), os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        finish_gloo()


class LayerWithNorm(nn.Module):

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.norm = nn.LayerNorm(8)
        self.norm.weight.data = torch.exp(torch.randn(8))
        self.fc = QuantLinear(
            nn.Linear(8, 4),
            dict(type='UniformQuantizer', bits=4, per_channel=True, calib='percentile_mse'),
            dict(type='UniformQuantizer', bits=4, calib='percentile_mse'))

    def calibrate(self, batches: List[torch.Tensor]) -> None:
        """Reparameterize, then calibrate, on ``batches`` (possibly none)."""
        target = ReparamTarget([self.norm], self.fc, bits=4)
        disable_quantization(self)
        with record_channel_statistics([target]) as stats:
            for x in batches:
                self.fc(self.norm(x))
        reparameterize([target], stats)
        enable_calibration(self)
        for x in batches:
            self.fc(self.norm(x))
        finish_calibration(self)


def _uneven_worker(rank: int, port: int, out_dir: str) -> None:
    """Rank 1 sees no calibration data at all: it must take part in every
    collective (reparameterization ranges, weight and activation statistics)."""
    init_gloo(rank, port)
    try:
        layer = LayerWithNorm()
        layer.calibrate(rank_batches(0) if rank == 0 else [])
        torch.save(qparams(layer), os.path.join(out_dir, f'uneven{rank}.pt'))
    finally:
        finish_gloo()


def _qat_worker(rank: int, port: int, out_dir: str) -> None:
    """QAT as mmengine runs it: the model is wrapped in DDP and the optimizer
    built before the LSQ quantizers are calibrated (by a hook, before the first
    iteration); per-channel step sizes must already have their final shape."""
    init_gloo(rank, port)
    try:
        torch.manual_seed(0)
        lsq = dict(type='LSQQuantizer', bits=4, calib='percentile_mse')
        model = nn.Sequential(
            QuantLinear(nn.Linear(8, 6), dict(lsq, per_channel=True), lsq), nn.ReLU(),
            QuantLinear(nn.Linear(6, 3), dict(lsq, per_channel=True), lsq))
        ddp = DistributedDataParallel(model, find_unused_parameters=False)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01)
        gen = torch.Generator().manual_seed(rank)
        x = torch.randn(32, 8, generator=gen)
        enable_calibration(model)
        with torch.no_grad():
            model(x)
        finish_calibration(model)
        for _ in range(3):
            optimizer.zero_grad()
            ddp(x).square().mean().backward()
            optimizer.step()
        torch.save(qparams(model), os.path.join(out_dir, f'qat{rank}.pt'))
    finally:
        finish_gloo()


@pytest.mark.skipif(not dist.is_available(), reason='torch.distributed is not available')
def test_per_channel_lsq_trains_under_ddp_when_calibrated_after_wrapping(tmp_path):
    spawn_ranks(_qat_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f'qat{r}.pt') for r in range(2)]
    assert ranks[0]['0.weight_quantizer.scale'].shape == (6, )
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key


def test_per_channel_shape_is_fixed_when_the_layer_is_built():
    lsq = dict(type='LSQQuantizer', bits=4, per_channel=True)
    layer = QuantLinear(nn.Linear(8, 6), lsq, None)
    scale = layer.weight_quantizer.scale
    assert isinstance(scale, nn.Parameter) and scale.shape == (6, )
    enable_calibration(layer)
    layer(torch.randn(4, 8))
    finish_calibration(layer)
    assert layer.weight_quantizer.scale is scale  # calibrated in place
    other = QuantLinear(nn.Linear(8, 5), lsq, None)
    with pytest.raises(
            ValueError,
            match=r"LSQQuantizer 'weight_quantizer': the checkpoint "
            r"has \(6,\) scale values, the model's layer has 5 channels"):
        other.load_state_dict(layer.state_dict())


@pytest.mark.skipif(not dist.is_available(), reason='torch.distributed is not available')
def test_a_rank_without_data_takes_part_and_agrees(tmp_path):
    spawn_ranks(_uneven_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f'uneven{r}.pt') for r in range(2)]
    single = LayerWithNorm()
    with single_thread():  # rounds as the ranks do: compared bit for bit
        single.calibrate(rank_batches(0))
    expected = qparams(single)
    assert set(ranks[0]) == set(expected) and 'fc.input_quantizer.scale' in expected
    for key, value in expected.items():
        assert torch.equal(ranks[0][key], value), key
        assert torch.equal(ranks[1][key], value), key


@pytest.mark.skipif(not dist.is_available(), reason='torch.distributed is not available')
def test_two_rank_calibration_equals_single_process_on_union(tmp_path):
    spawn_ranks(_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]

    single = build_model()
    union = rank_batches(0) + rank_batches(1)
    with single_thread():  # rounds as the ranks do: compared bit for bit
        enable_calibration(single)
        for x in union:
            for name in ('minmax', 'minmax_channel', 'hist', 'hist_channel', 'lsq'):
                single[name](x)
            single['softmax'](x.softmax(-1))
            single['only_rank1'](x if x.shape[0] == 3 else x[:0])
        single['weight'](rank_weight(0))
        finish_calibration(single)
    expected = qparams(single)

    assert set(ranks[0]) == set(expected)
    for key, value in expected.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        assert torch.equal(ranks[0][key], value), key
    # The ranks' data differ: rank 0 alone calibrates differently from the union.
    alone = UniformQuantizer(4)
    for x in rank_batches(0):
        alone(x)
    alone.calculate_qparams()
    assert not torch.equal(alone.scale, expected['minmax.scale'])
    assert expected['hist_channel.scale'].shape == (8, )
