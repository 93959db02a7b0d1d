"""The stack fixes (runner checkpoints under torch >= 2.6's weights-only
loading, the pytorch launcher without CUDA) live in the plugin's runner and
tools; importing the plugin changes nothing else in the process."""
import os.path as osp
import pickle
import re

import mmdet
import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import CheckpointLoader, load_checkpoint
from packaging.version import Version
from torch.utils.data import Dataset

from mixaq_mmdet.compat import load_from_local_weights_only
from mixaq_mmdet.engine import MixAQRunner
from .conftest import FP_BENCH_CONFIG, REPO, data_root_options, run_tool

#: torch 2.6 made ``weights_only=True`` the default of ``torch.load``.
TORCH_LOADS_WEIGHTS_ONLY = Version(torch.__version__).release >= (2, 6)


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
    return MixAQRunner(
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
    # Weights-only loading refuses mmengine's runner checkpoint; torch >= 2.6
    # loads so by default, and then mmengine 0.10.7 by itself fails too.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, map_location='cpu', weights_only=True)
    if TORCH_LOADS_WEIGHTS_ONLY:
        with pytest.raises(pickle.UnpicklingError):
            CheckpointLoader.load_checkpoint(str(ckpt), map_location='cpu')
    loaded = load_from_local_weights_only(str(ckpt), map_location='cpu')
    assert loaded['meta']['epoch'] == 1
    hub = loaded['message_hub']['log_scalars']
    assert 'train/loss' in hub and len(hub['train/loss'].data[0]) > 0
    # the allowlist holds within the load only
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, map_location='cpu', weights_only=True)


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


SNAPSHOT = r"""
import inspect, json, os, pkgutil, sys, warnings
import numpy, torch, mmcv, mmdet, mmengine
import mmengine.dist, mmengine.runner, mmdet.models, mmdet.registry

PREFIXES = ('torch', 'numpy', 'mmengine', 'mmcv', 'mmdet', 'pycocotools')

def snapshot():
    state = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.split('.')[0] in PREFIXES:
            continue
        for attr, value in list(vars(module).items()):
            if inspect.ismodule(value):
                continue
            state[f'{name}.{attr}'] = id(value)
            if inspect.isclass(value) and value.__module__ == name:
                for key, member in list(vars(value).items()):
                    state[f'{name}.{attr}.{key}'] = id(member)
                    if type(member) is dict:
                        for k, v in list(member.items()):
                            state[f'{name}.{attr}.{key}[{k!r}]'] = id(v)
    state['os.environ'] = hash(tuple(sorted(os.environ.items())))
    state['torch threads'] = torch.get_num_threads()
    state['warnings.filters'] = hash(tuple(map(repr, warnings.filters)))
    state['torch safe globals'] = hash(tuple(map(repr, torch.serialization.get_safe_globals())))
    return state

before = snapshot()
import mixaq_mmdet
for info in pkgutil.walk_packages(mixaq_mmdet.__path__, 'mixaq_mmdet.'):
    __import__(info.name)
after = snapshot()
changed = sorted(k for k in before if k in after and before[k] != after[k])
added = sorted(k for k in after if k not in before and k.rsplit('.', 1)[0] in before)
print(json.dumps(dict(changed=changed, added=added)))
"""


def test_importing_the_plugin_changes_nothing_else():
    """Every module of the plugin imported: no function, class member or
    registered scheme of torch, numpy, mmengine, mmcv or mmdet is replaced,
    and the environment, thread count, warning filters and torch's
    weights-only allowlist are as before."""
    import json
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, '-c', SNAPSHOT],
                          cwd=REPO,
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == dict(changed=[], added=[])


def test_the_pytorch_launcher_without_cuda_refuses_nccl_by_name(monkeypatch):
    from mixaq_mmdet.compat import init_process_group_without_cuda
    with pytest.raises(ValueError, match=r"backend='nccl' needs CUDA.*backend='gloo'"):
        init_process_group_without_cuda(backend='nccl')
    with pytest.raises(ValueError, match=r"init_backend='deepspeed'.*valid: 'torch'"):
        init_process_group_without_cuda(backend='gloo', init_backend='deepspeed')


MMDET_TOOLS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools')


def test_mmdets_own_tools_run_the_plugin_through_custom_imports(tiny_shapes, tmp_path):
    """mmdet 3.3.0's tools/train.py and tools/test.py (as installed with mmdet)
    on the benchmark config, which names the plugin in ``custom_imports`` and
    its runner in ``runner_type``: a training, its resume from the runner
    checkpoint (numpy and message-hub state, weights-only loading under torch
    >= 2.6) and a COCO evaluation of it."""
    work_dir = str(tmp_path / 'work')
    options = [
        *data_root_options(tiny_shapes), 'train_dataloader.batch_size=4',
        'default_hooks.logger.interval=1', 'param_scheduler.0.end=2'
    ]

    def epochs(n):
        return [
            f'train_cfg.max_epochs={n}', f'train_cfg.val_interval={n}', f'param_scheduler.1.end={n}'
        ]

    train = osp.join(MMDET_TOOLS, 'train.py')
    run_tool(
        [train, FP_BENCH_CONFIG, '--work-dir', work_dir, '--cfg-options', *options, *epochs(1)])
    proc = run_tool([
        train, FP_BENCH_CONFIG, '--work-dir', work_dir, '--resume', '--cfg-options', *options,
        *epochs(2)
    ])
    assert 'resumed epoch: 1, iter: 2' in proc.stdout + proc.stderr
    proc = run_tool([
        osp.join(MMDET_TOOLS, 'test.py'), FP_BENCH_CONFIG,
        osp.join(work_dir, 'epoch_2.pth'), '--work-dir', work_dir, '--cfg-options',
        *data_root_options(tiny_shapes)
    ])
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', proc.stdout + proc.stderr)
