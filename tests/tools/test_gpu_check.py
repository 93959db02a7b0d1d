"""tools/make_gpu_bundle.sh and tools/gpu_check.sh on CPU and offline: the
dry-run bundle (the project wheel, the repository tarball, the script), the
check's dry run in a venv over this interpreter with pip given no index and a
proxy that answers nothing, and the bundle's size limit."""
import json
import os
import os.path as osp
import subprocess
import sys
import tarfile

import pytest
import torch

from ..conftest import REPO

MAKE_BUNDLE = osp.join(REPO, 'tools', 'make_gpu_bundle.sh')
#: Nothing may be fetched: pip has no index, every proxy is a closed port.
OFFLINE = dict(
    PIP_NO_INDEX='1',
    http_proxy='http://127.0.0.1:9',
    https_proxy='http://127.0.0.1:9',
    HTTP_PROXY='http://127.0.0.1:9',
    HTTPS_PROXY='http://127.0.0.1:9',
    no_proxy='',
    NO_PROXY='')
STEPS = [
    'setup', 'mmcv_cpu_build', 'env', 'cuda_tests', 'backbone_speed', 'integer_speed',
    'amp_backbone', 'backbone_compile', 'mmcv_cuda_build', 'amp_detector', 'smoke'
]
RUN_ON_CPU = [
    'setup', 'env', 'cuda_tests', 'backbone_speed', 'integer_speed', 'amp_backbone', 'amp_detector'
]


def _run(args, cwd=None, timeout=120, **env):
    variables = dict(os.environ, PYTHON=sys.executable, **OFFLINE, **env)
    for name in ('OUT', 'RESULTS', 'BUNDLE', 'GPU_CHECK_DRY_RUN'):
        if name not in env:
            variables.pop(name, None)
    return subprocess.run(
        args, cwd=cwd, env=variables, capture_output=True, text=True, timeout=timeout)


def _bundle(out, **env):
    return _run(['bash', MAKE_BUNDLE, '--dry-run', str(out)], **env)


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
    """The dry-run bundle and ``gpu_check.sh --dry-run`` run from it."""
    root = tmp_path_factory.mktemp('gpu_check')
    made = _bundle(root / 'bundle')
    assert made.returncode == 0, made.stderr
    proc = _run(['bash', str(root / 'bundle' / 'gpu_check.sh'), '--dry-run'],
                cwd=root,
                timeout=600,
                RESULTS=str(root / 'results'),
                GPU_CHECK_WORK=str(root / 'work'),
                GPU_CHECK_BUDGET_S='480')
    return root, proc


def test_the_dry_run_bundle_downloads_nothing(dry_run):
    root, _ = dry_run
    manifest = (root / 'bundle' / 'MANIFEST.txt').read_text()
    files = [line.split('\t')[1] for line in manifest.splitlines() if not line.startswith('#')]
    assert files == ['gpu_check.sh', 'repo.tar.gz', 'wheels/mixaq_mmdet-0.1.0-py3-none-any.whl']
    assert 'dry run (no downloads)' in manifest and '# total ' in manifest
    with tarfile.open(root / 'bundle' / 'repo.tar.gz') as tar:
        names = tar.getnames()
    for path in ('tests/test_cuda_numerics.py', 'benchmarks/backbone_speed.py',
                 'configs/benchmark/qat/qat_saqa_w4a4a2_shapes.py', 'tools/gpu_check_steps.py',
                 'tools/smoke_coco.py', 'pytest.ini'):
        assert path in names, path
    # the package comes as the wheel; no build output or cache travels
    assert not [n for n in names if n.startswith('mixaq_mmdet') or '__pycache__' in n]


def test_the_dry_run_passes_every_step_it_runs(dry_run):
    root, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = root / 'results'
    summary = json.loads((results / 'summary.json').read_text())
    assert summary['mode'] == 'dry-run' and summary['device'] == 'cpu' and summary['passed']
    steps = {s['name']: s for s in summary['steps']}
    assert [s['name'] for s in summary['steps']] == STEPS
    for name in RUN_ON_CPU:
        assert steps[name]['status'] == 'passed', steps[name]
        assert (results / f'{name}.log').exists()
    assert steps['mmcv_cpu_build']['reason'] == "dry run: the interpreter's mmcv"
    for name in set(STEPS) - set(RUN_ON_CPU) - {'mmcv_cpu_build'}:
        assert (steps[name]['status'], steps[name]['reason']) == ('skipped', 'dry run')
    # the CUDA tests are collected and skipped without CUDA
    tests = steps['cuda_tests']['tests']
    assert tests['tests'] > 10 and tests['failures'] == tests['errors'] == 0
    if not torch.cuda.is_available():
        assert tests['skipped'] == tests['tests']
    assert 'passed' in proc.stdout and 'PASSED' in proc.stdout
    speed = json.loads((results / 'backbone_speed.json').read_text())
    assert speed['device'] == 'cpu'
    rows = speed['rows']
    assert {r['precision'] for r in rows} == {'fp32', 'bf16'}
    assert {'mmdet_fp', 'mixaq_fq_low0.5'} <= {r['variant'] for r in rows}
    integer = json.loads((results / 'integer_speed.json').read_text())
    assert {'int_w8a8', 'int_mixaq_a8a4_0.5'} <= {r['variant'] for r in integer['rows']}
    for level in ('backbone', 'detector'):
        amp = json.loads((results / f'amp_{level}.json').read_text())
        assert amp['device'] == 'cpu' and set(amp['runs']) == {'qat', 'saqa'}
        for run in amp['runs'].values():
            assert run['level'] == level and run['optim_wrapper'] == 'CPUAmpOptimWrapper'
            assert run['dtypes'] == ['torch.bfloat16']
            assert not run['problems'] and run['moved'] > 0


def test_the_dry_run_uses_this_torch_and_fetches_nothing(dry_run):
    root, _ = dry_run
    results, work = root / 'results', root / 'work'
    setup = (results / 'setup.log').read_text()
    assert f'torch: {torch.__file__} (the interpreter\'s own)' in setup
    assert 'Downloading' not in setup and 'http' not in setup
    env = (results / 'env.txt').read_text()
    assert f'torch: {torch.__version__} ({osp.dirname(torch.__file__)})' in env
    site = next((work / 'venv' / 'lib').glob('python3*/site-packages'))
    assert not (site / 'torch').exists()  # never installed into the venv
    assert f'mixaq_mmdet: 0.1.0 ({site / "mixaq_mmdet"})' in env  # the bundle's wheel


def test_a_second_call_reuses_the_venv_and_runs_only_its_steps(dry_run):
    root, _ = dry_run
    proc = _run(['bash', str(root / 'bundle' / 'gpu_check.sh'), '--steps', 'env,smoke'],
                cwd=root,
                RESULTS=str(root / 'again'),
                GPU_CHECK_WORK=str(root / 'work'),
                GPU_CHECK_DRY_RUN='1')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = json.loads((root / 'again' / 'summary.json').read_text())['steps']
    assert [(s['name'], s['status']) for s in steps] == [('setup', 'passed'), ('env', 'passed'),
                                                         ('smoke', 'skipped')]
    assert steps[0]['reason'].startswith('reused ')


@pytest.mark.parametrize(
    'args, env, error',
    [(['--steps', 'env,mmcv'], {}, "unknown step 'mmcv' in --steps"),
     (['--dry-run'], dict(GPU_CHECK_BUDGET_S='12m'), "GPU_CHECK_BUDGET_S must be whole seconds, "
      "got '12m'"), ([], {}, 'no sdist/mmcv-2.1.0.tar.gz in BUNDLE=')])
def test_the_check_names_a_bad_argument_before_doing_anything(dry_run, args, env, error):
    root, _ = dry_run
    proc = _run(
        ['bash', str(root / 'bundle' / 'gpu_check.sh')] + args,
        cwd=root,
        GPU_CHECK_WORK=str(root / 'unused'),
        **env)
    assert proc.returncode == 2 and error in proc.stderr
    assert not (root / 'unused').exists()


def test_the_bundle_fails_over_its_size_limit(tmp_path):
    out = tmp_path / 'bundle'
    proc = _bundle(out, BUNDLE_LIMIT_MIB='0')
    assert proc.returncode == 1
    assert 'over BUNDLE_LIMIT_MIB=0 (0 bytes)' in proc.stderr
    assert 'wheels/mixaq_mmdet-0.1.0-py3-none-any.whl' in proc.stderr  # the largest files
    assert (out / 'MANIFEST.txt').exists()
    proc = _bundle(out, BUNDLE_LIMIT_MIB='6x')
    assert proc.returncode == 1
    assert "BUNDLE_LIMIT_MIB must be a whole number of MiB, got '6x'" in proc.stderr
    assert _bundle(out, BUNDLE_LIMIT_MIB='1').returncode == 0  # well under 1 MiB
    (tmp_path / 'other').mkdir()
    (tmp_path / 'other' / 'notes.txt').write_text('mine')
    proc = _bundle(tmp_path / 'other')
    assert proc.returncode == 1 and 'is a non-empty folder that is not a bundle' in proc.stderr
    assert (tmp_path / 'other' / 'notes.txt').exists()
