"""Run the COCO tables and every config under their config roots at full size
on CPU (``make smoke-coco``): :mod:`mixaq_mmdet.tables.smoke`.

    python tools/smoke_coco.py [--work-dir work_dirs/smoke_coco] [--tables coco ptq-papers]
        [--rows ROW ...]
"""
import warnings

# Before anything imports it: the pinned stack's deprecation of setuptools'
# pkg_resources (mmengine's package checks); every other warning still shows.
warnings.filterwarnings('ignore', 'pkg_resources is deprecated as an API', UserWarning)

import argparse
import os
import sys

# Every module the runs import, imported before the first fork.
import mmdet.engine.hooks.utils  # noqa: F401
import mmdet.evaluation  # noqa: F401
import mmdet.models  # noqa: F401
import mmdet.utils  # noqa: F401
import torch

import mixaq_mmdet  # noqa: F401  (registries)
import mixaq_mmdet.search  # noqa: F401
from mixaq_mmdet.quantization.numerics import compile_kernels
from mixaq_mmdet.tables.smoke import run_smoke
from mixaq_mmdet.utils.forking import torch_threads


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--work-dir',
        default='work_dirs/smoke_coco',
        help='fixture, checkpoints and logs (emptied first)')
    parser.add_argument(
        '--tables', nargs='+', metavar='TABLE', help='only these COCO tables (default: every one)')
    parser.add_argument(
        '--rows',
        nargs='+',
        metavar='ROW',
        help='a sample: a table that has some of these rows runs only them (and what they '
        'need), no other step; the other tables run in full')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # what every forked run would pay again: the fused fake-quantization kernels
    # compiled once, in this process (the runs compile more of their own). This
    # process computes on one thread throughout (its records count BitOPs on
    # built models): a parallel region here would hang the forked runs, which
    # get the threads it had. Converted releases go to the work dir's cache.
    os.environ.setdefault('TORCHINDUCTOR_COMPILE_THREADS', '1')
    os.environ['TORCH_HOME'] = os.path.join(os.path.abspath(args.work_dir), 'torch_home')
    cores = torch.get_num_threads()
    with torch_threads(1):
        compile_kernels()
        ok = run_smoke(args.work_dir, args.tables, args.rows, threads=cores)
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
