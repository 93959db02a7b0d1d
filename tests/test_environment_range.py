"""setup.py declares the tested range: the running Python and torch lie within
it (a suite run outside it fails here instead of widening it silently), and its
lower bounds are the oldest row of docs/environment.md's "Tested range"."""
import ast
import os.path as osp
import re
import sys

import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from .conftest import REPO


def _setup_keywords() -> dict:
    """The literal keyword arguments of setup.py's ``setup(...)`` call."""
    literal = ('python_requires', 'install_requires')
    with open(osp.join(REPO, 'setup.py')) as f:
        tree = ast.parse(f.read())
    call = next(
        node for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'setup')
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in literal}


def _ranges():
    keywords = _setup_keywords()
    requirements = {Requirement(r).name: Requirement(r) for r in keywords['install_requires']}
    return SpecifierSet(keywords['python_requires']), requirements['torch'].specifier


def _lower_bound(specifier: SpecifierSet) -> str:
    return next(s.version for s in specifier if s.operator == '>=')


def test_this_python_and_torch_are_within_the_declared_range():
    python, torch_range = _ranges()
    here = '.'.join(map(str, sys.version_info[:3]))
    assert python.contains(here), f'Python {here} is outside python_requires {python}'
    version = Version(torch.__version__).base_version  # 2.13.0+cpu -> 2.13.0
    assert torch_range.contains(version), f'torch {version} is outside setup.py\'s {torch_range}'


def test_the_declared_lower_bounds_are_the_oldest_tested_row():
    python, torch_range = _ranges()
    with open(osp.join(REPO, 'docs', 'environment.md')) as f:
        text = f.read()
    row = re.search(r'^\| the oldest \(a one-off run\) \| ([0-9.]+) \| ([0-9.]+) ', text, re.M)
    assert row, 'docs/environment.md has no "the oldest" row in its tested range'
    assert Version(_lower_bound(python)) == Version(row.group(1))
    assert Version(_lower_bound(torch_range)).release[:2] == Version(row.group(2)).release[:2]
    assert torch_range.contains(row.group(2))
