"""tools/setup_env.sh: clear messages before the mmcv build, reuse of a built env."""
import os
import os.path as osp
import re
import subprocess
import sys

from .conftest import REPO

SCRIPT = osp.join(REPO, 'tools', 'setup_env.sh')
#: The marker of a built CPU environment, as the script names it.
CPU_STAMP = re.search(r'^CPU_STAMP="\$VENV/([^"]+)"', open(SCRIPT).read(), re.M).group(1)


def _run(tmp_path, python, path_dirs):
    env = dict(os.environ, PYTHON=python, PATH=os.pathsep.join(path_dirs))
    return subprocess.run(['/bin/bash', SCRIPT, str(tmp_path / 'venv')],
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=60)


def _bin_with(tmp_path, **tools):
    """A PATH directory holding only the named tools (links to the real ones)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    for name, target in tools.items():
        os.symlink(target, bin_dir / name)
    return str(bin_dir)


def test_missing_compiler_is_named_before_any_build(tmp_path):
    bin_dir = _bin_with(tmp_path, python3=sys.executable)
    proc = _run(tmp_path, 'python3', [bin_dir])
    assert proc.returncode == 1
    assert 'missing: a C++ compiler (g++' in proc.stderr
    assert 'cannot build mmcv mmcv==2.1.0 with its ops' in proc.stderr
    assert not (tmp_path / 'venv').exists()  # nothing was installed


def test_missing_python_headers_are_named(tmp_path):
    empty_include = tmp_path / 'include'
    empty_include.mkdir()
    fake = tmp_path / 'fake_python'
    fake.write_text('#!/bin/bash\n'
                    'case "$*" in\n'
                    f'  *sysconfig*) echo {empty_include} ;;\n'
                    '  *) echo 3.11 ;;\n'
                    'esac\n')
    fake.chmod(0o755)
    compiler = next(p for p in ('/usr/bin/g++', '/usr/bin/c++') if osp.exists(p))
    bin_dir = _bin_with(tmp_path, **{'g++': compiler})
    proc = _run(tmp_path, str(fake), [bin_dir])
    assert proc.returncode == 1
    assert f'missing: the Python headers ({empty_include}/Python.h' in proc.stderr


def test_a_built_environment_is_reused_at_once(tmp_path):
    venv = tmp_path / 'venv'
    venv.mkdir()
    (venv / CPU_STAMP).touch()
    proc = _run(tmp_path, 'no-such-python', ['/nonexistent'])
    assert proc.returncode == 0 and proc.stdout == '' and proc.stderr == ''
