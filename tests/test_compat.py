"""Local checkpoint loading under torch >= 2.6 (weights_only) with mmengine."""
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import CheckpointLoader, Runner, load_checkpoint
from torch.utils.data import Dataset

import mixaq_mmdet  # noqa: F401
from mixaq_mmdet.compat import load_from_local_weights_only


class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 1)

    def forward(self, x, y=None, mode='tensor'):
        out = self.fc(x)
        if mode == 'loss':
            return dict(loss=((out - y)**2).mean())
        return out


class ToyData(Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(x=torch.randn(3, generator=g), y=torch.randn(1, generator=g))


def _runner(work_dir, max_epochs, resume=False):
    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=ToyData(),
            batch_size=4,
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', milestones=[1]),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        resume=resume,
        randomness=dict(seed=0))


def test_runner_checkpoint_needs_the_fix_and_loads(tmp_path):
    _runner(tmp_path, max_epochs=1).train()
    ckpt = tmp_path / 'epoch_1.pth'
    # What mmengine 0.10.7 does by itself under torch 2.13: fails.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, map_location='cpu')
    loaded = CheckpointLoader.load_checkpoint(str(ckpt), map_location='cpu')
    assert loaded['meta']['epoch'] == 1
    hub = loaded['message_hub']['log_scalars']
    assert 'train/loss' in hub and len(hub['train/loss'].data[0]) > 0


def test_resume_continues_from_runner_checkpoint(tmp_path):
    _runner(tmp_path, max_epochs=1).train()
    first = torch.load(tmp_path / 'epoch_1.pth', weights_only=False)
    runner = _runner(tmp_path, max_epochs=2, resume=True)
    runner.train()
    assert runner.epoch == 2 and runner.iter == 4
    second = torch.load(tmp_path / 'epoch_2.pth', weights_only=False)
    assert second['meta']['epoch'] == 2
    assert not torch.equal(first['state_dict']['fc.weight'], second['state_dict']['fc.weight'])


def test_plain_state_dict(tmp_path):
    model = nn.Linear(4, 2)
    torch.save(model.state_dict(), tmp_path / 'sd.pth')
    other = nn.Linear(4, 2)
    load_checkpoint(other, str(tmp_path / 'sd.pth'), map_location='cpu')
    assert torch.equal(other.weight, model.weight)
    assert torch.equal(other.bias, model.bias)


def test_numpy_payloads(tmp_path):
    payload = dict(
        arr=np.arange(6, dtype=np.float32).reshape(2, 3), scalar=np.float64(2.5), count=np.int64(3))
    torch.save(payload, tmp_path / 'np.pth')
    loaded = load_from_local_weights_only(str(tmp_path / 'np.pth'))
    assert np.array_equal(loaded['arr'], payload['arr'])
    assert loaded['scalar'] == 2.5 and loaded['count'] == 3


class Untrusted:

    def __reduce__(self):
        return (print, ('this must never run', ))


def test_untrusted_type_is_refused_with_a_clear_error(tmp_path, capsys):
    torch.save({'x': Untrusted()}, tmp_path / 'bad.pth')
    with pytest.raises(RuntimeError, match=r'bad\.pth.*add_checkpoint_safe_globals'):
        load_from_local_weights_only(str(tmp_path / 'bad.pth'))
    assert 'this must never run' not in capsys.readouterr().out


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'nope.pth'))
