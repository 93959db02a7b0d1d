"""Run the COCO table and every config of ``configs/mixaq/`` at full size on CPU
(``make smoke-coco``): :mod:`mixaq_mmdet.tables.smoke`.

    python tools/smoke_coco.py [--work-dir work_dirs/smoke_coco] [--rows ROW ...]
"""
import argparse
import os
import sys

# Every module the runs import, imported before the first fork.
import mmdet.engine.hooks.utils  # noqa: F401
import mmdet.evaluation  # noqa: F401
import mmdet.models  # noqa: F401
import mmdet.utils  # noqa: F401

import mixaq_mmdet  # noqa: F401  (stack fixes, registries)
import mixaq_mmdet.search  # noqa: F401
from mixaq_mmdet.quantization.numerics import compile_kernels
from mixaq_mmdet.tables.smoke import run_smoke
from mixaq_mmdet.utils.config import FORMAT_CONFIG_ENV


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--work-dir',
        default='work_dirs/smoke_coco',
        help='fixture, checkpoints and logs (emptied first)')
    parser.add_argument(
        '--rows',
        nargs='+',
        metavar='ROW',
        help='only these table rows (and what they need), no other step')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # what every forked run would pay again: configs logged and dumped unformatted,
    # the fused fake-quantization kernels compiled once
    os.environ[FORMAT_CONFIG_ENV] = '0'
    compile_kernels()
    sys.exit(0 if run_smoke(args.work_dir, args.rows) else 1)


if __name__ == '__main__':
    main()
