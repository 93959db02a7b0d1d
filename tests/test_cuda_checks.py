"""A GPU run with a CPU-only mmcv is an error at start, naming the build; the
set-up takes the CUDA path where a GPU is found and names what it lacks."""
import os
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from mixaq_mmdet.compat import check_mmcv_ops, run_mmcv_ops
from .conftest import FP_BENCH_CONFIG
from .test_setup_env import CPU_STAMP, SCRIPT, _bin_with


def test_a_cpu_only_mmcv_refuses_a_cuda_run():
    check_mmcv_ops('cpu')
    with pytest.raises(
            RuntimeError,
            match=r"mmcv 2.1.0 has no CUDA ops .*'not available'.*"
            r'on cuda:0.*MIXAQ_CUDA=1'):
        check_mmcv_ops(torch.device('cuda', 0))


def test_the_tools_check_the_device_before_building(monkeypatch):
    import mixaq_mmdet.utils.config as config
    monkeypatch.setattr(config, 'get_device', lambda: 'cuda')
    with pytest.raises(RuntimeError, match='has no CUDA ops'):
        config.build_runner(Config.fromfile(FP_BENCH_CONFIG))


def test_the_ops_check_runs_them(capsys):
    run_mmcv_ops('cpu')
    assert 'NMS and RoIAlign run on cpu' in capsys.readouterr().out


def _setup(tmp_path, bin_dir, **env):
    return subprocess.run(['/bin/bash', SCRIPT, str(tmp_path / 'venv')],
                          env=dict(os.environ, PYTHON=sys.executable, PATH=bin_dir, **env),
                          capture_output=True,
                          text=True,
                          timeout=60)


def test_a_gpu_machine_without_nvcc_is_told_before_any_build(tmp_path):
    fake_smi = tmp_path / 'nvidia-smi'
    fake_smi.write_text('#!/bin/sh\nexit 0\n')
    fake_smi.chmod(0o755)
    compiler = next(p for p in ('/usr/bin/g++', '/usr/bin/c++') if os.path.exists(p))
    bin_dir = _bin_with(tmp_path, **{'g++': compiler, 'nvidia-smi': str(fake_smi)})
    proc = _setup(tmp_path, bin_dir)
    assert proc.returncode == 1
    assert "missing: the CUDA compiler for mmcv's CUDA ops (nvcc" in proc.stderr
    assert not (tmp_path / 'venv').exists()


def test_a_cpu_environment_on_a_gpu_machine_is_an_error(tmp_path):
    (tmp_path / 'venv').mkdir()
    (tmp_path / 'venv' / CPU_STAMP).touch()
    proc = _setup(tmp_path, '/nonexistent', MIXAQ_CUDA='1')
    assert proc.returncode == 1 and 'was built for CPU' in proc.stderr
    assert _setup(tmp_path, '/nonexistent', MIXAQ_CUDA='0').returncode == 0
    proc = _setup(tmp_path, '/nonexistent', MIXAQ_CUDA='yes')
    assert proc.returncode == 1 and "MIXAQ_CUDA must be 0, 1 or unset" in proc.stderr
