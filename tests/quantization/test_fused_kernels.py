"""The fused fake-quantization kernels are a setting of the model's config
(True / False / 'auto'), and 'auto' falls back to eager with one warning where
they cannot compile, with the same numbers."""
import json
import os
import subprocess
import sys

import pytest
import torch
from mmdet.registry import MODELS

from mixaq_mmdet.models import MixAQSwinTransformer
from mixaq_mmdet.quantization import enable_calibration, finish_calibration, numerics
from mixaq_mmdet.quantization.numerics import fake_quantize, fused_kernels, fused_kernels_mode
from ..conftest import REPO
from .test_recompute import NANO

QAT_QUANTIZERS = dict(
    act_quantizer=dict(type='LSQQuantizer', calib='minmax'),
    weight_quantizer=dict(type='LSQQuantizer', per_channel=True, calib='minmax'),
    softmax_quantizer=dict(type='LogSqrt2Quantizer', calib='fixed'))


def test_the_setting_is_checked_by_name():
    with pytest.raises(ValueError, match=r"fused_kernels must be True, False or 'auto', got 'on'"):
        with fused_kernels('on'):
            pass
    with pytest.raises(ValueError, match=r"fused_kernels must be True, False or 'auto', got 1"):
        MixAQSwinTransformer(**NANO, fused_kernels=1)
    assert fused_kernels_mode() == 'auto'
    with fused_kernels(False):
        assert fused_kernels_mode() is False
    assert fused_kernels_mode() == 'auto'


class KernelSpy(dict):
    """``numerics``' table of compiled kernels, recording which kernels run
    compiled (and running them eagerly, which computes the same)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __contains__(self, fn):
        return True

    def __getitem__(self, fn):

        def compiled(*args):
            self.calls.append(fn.__name__)
            return fn(*args)

        return compiled


@pytest.mark.parametrize('setting', [True, False, 'auto'])
def test_the_backbone_config_chooses_the_kernels_forward_and_backward(setting, monkeypatch):
    """A backbone built from a config with ``fused_kernels`` computes its
    quantizers, forward and backward (recomputation included), in that mode,
    whatever the mode around it."""
    torch.manual_seed(0)
    model = MODELS.build(
        dict(
            type='MixAQSwinTransformer',
            **NANO,
            low_bit_ratios=0.5,
            fused_kernels=setting,
            **QAT_QUANTIZERS))
    enable_calibration(model)
    with torch.no_grad():
        model(torch.randn(1, 3, 112, 112))
    finish_calibration(model)
    spy = KernelSpy()
    monkeypatch.setattr(numerics, '_COMPILED', spy)
    with fused_kernels(not setting if isinstance(setting, bool) else False):
        outs = model.train()(torch.randn(1, 3, 112, 112))
    forward_calls = len(spy.calls)
    sum(o.sum() for o in outs).backward()
    if setting is False:
        assert spy.calls == []
    else:
        assert forward_calls > 0 and '_lsq_forward' in spy.calls
        assert '_lsq_backward' in spy.calls[forward_calls:]


NO_COMPILER = r"""
import json, sys, warnings
import torch
from mmdet.registry import MODELS
from mixaq_mmdet.quantization import enable_calibration, finish_calibration
from mixaq_mmdet.quantization.numerics import fake_quantize, fused_kernels, fused_kernels_fallback

cfg = json.loads(sys.argv[1])
x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
results, caught = {}, []
for setting in (False, 'auto'):
    torch.manual_seed(0)
    model = MODELS.build(dict(cfg, fused_kernels=setting))
    enable_calibration(model)
    with torch.no_grad():
        model(x)
    finish_calibration(model)
    inputs = x.clone().requires_grad_()
    torch.manual_seed(1)  # drop path
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        outs = model.train()(inputs)
        sum((o * o).sum() for o in outs).backward()
        model(inputs)
    caught += [str(w.message) for w in seen if 'mixaq_mmdet' in str(w.message)]
    results[str(setting)] = [o.detach() for o in outs] + [inputs.grad]
same = all(torch.equal(a, b) for a, b in zip(results['False'], results['auto']))
try:
    with fused_kernels(True):
        fake_quantize(torch.rand(8), torch.ones(1), torch.zeros(1), 0, 15)
    strict = 'no error'
except Exception as err:
    strict = f'{type(err).__name__}: {err}'
print(json.dumps(dict(same=same, warnings=caught, fallback=fused_kernels_fallback(),
                      strict=strict[:300])))
"""


def test_auto_falls_back_to_eager_once_where_nothing_compiles(tmp_path):
    """A machine whose C++ compiler inductor cannot run (``CXX`` names none, a
    fresh inductor cache): 'auto' computes exactly what eager computes,
    outputs and input gradients, with one warning naming the compiler's
    error; True raises that error."""
    cfg = dict(type='MixAQSwinTransformer', **NANO, low_bit_ratios=0.5, **QAT_QUANTIZERS)
    env = dict(
        os.environ,
        CXX='/nonexistent/c++',
        TORCHINDUCTOR_CACHE_DIR=str(tmp_path / 'inductor'),
        PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, '-c', NO_COMPILER, json.dumps(cfg)],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['same']
    assert len(result['warnings']) == 1
    assert '/nonexistent/c++' in result['warnings'][0]
    assert "fused_kernels='auto' runs them eagerly" in result['warnings'][0]
    assert '/nonexistent/c++' in result['fallback']
    assert '/nonexistent/c++' in result['strict']


def test_compile_kernels_leaves_threads_and_environment_alone(monkeypatch):
    """The caller's thread count and variables stay as they were, and the
    compile workers are not chosen for it (inductor's own cache variables
    aside)."""
    monkeypatch.delenv('TORCHINDUCTOR_COMPILE_THREADS', raising=False)
    threads, environ = torch.get_num_threads(), dict(os.environ)
    numerics.compile_kernels()
    assert torch.get_num_threads() == threads
    assert {k: os.environ.get(k) for k in environ} == environ
    assert 'TORCHINDUCTOR_COMPILE_THREADS' not in os.environ


def test_an_error_of_the_inputs_is_raised_as_eagerly_and_does_not_switch_to_eager():
    with pytest.raises(RuntimeError, match='size'):
        fake_quantize(torch.rand(4, 3), torch.ones(5), torch.zeros(5), 0, 15, ch_axis=1)
    assert numerics.fused_kernels_fallback() is None
