"""Run a results table: the embedded benchmark (``make demo``) or the paper's
COCO table, through one runner (:mod:`mixaq_mmdet.tables`).

1. the benchmark generates its data if absent;
2. trains the models the asked-for rows need, unless their checkpoints are there
   for the same inputs (an interrupted training resumes);
3. evaluates every row with COCO mAP on val: PTQ rows calibrate the FP model on
   training images, QAT rows evaluate a trained checkpoint at the row's window
   ratios and order; the ratio searches run on the search split;
4. checks the table's claims (paired differences with their val noise);
5. writes ``<work-dir>/results.json`` (each row with the commands that
   computed it) and the plots, and prints the table and the claims.

A row whose merged config, checkpoint content, code and data are unchanged is
taken from the previous results.json; ``--rows`` computes some rows and keeps
the others (marked stale if their inputs changed). A trained model is reused
while its config, its parent checkpoint and the training data are unchanged;
a model trained by other code than the checkout's is reused too, and its rows
say so, unless ``--retrain-changed-code``.

Without ``--gpus`` every run is in this process, or with ``--jobs J`` in up to
J forked children side by side (each on 1/J of the torch threads; a training
every other run waits for gets them all; logs in ``<work-dir>/logs``); ``make
demo`` runs 2 jobs, which gets about 1.5x the work through 2 CPU cores. With
``--gpus N`` each run is the project's tool, launched on N GPUs
(``tools/dist_train.sh``, ``dist_test.sh``, torchrun for the search; N = 0 or
1: one process). ``--dry-run`` prints them. Configs are logged and dumped
unformatted (``format_config=False``, a second or more a run) unless
``--cfg-options format_config=True``. Every minute a ``[table] progress:`` line per running job
says how far its mmengine run is, and one line how long the table has left.

    python tools/run_demo.py [--work-dir work_dirs/demo] [--data-root data/shapes_coco] [--jobs 2]
    python tools/run_demo.py --table coco --data-root data/coco --gpus 8 \\
        [--checkpoint mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_20210906_131725-bacf6f7b.pth]
    python tools/run_demo.py --table ptq-papers --data-root data/coco --gpus 8 \\
        [--checkpoint fp_mask-rcnn_swin-t=mask_rcnn_swin_tiny_patch4_window7.pth ...]
"""
import warnings

# Before anything imports it: the pinned stack's deprecation of setuptools'
# pkg_resources (mmengine's package checks); every other warning still shows.
warnings.filterwarnings('ignore', 'pkg_resources is deprecated as an API', UserWarning)

import argparse
import dataclasses
import os
import os.path as osp
from typing import Dict, Optional, Sequence

from mmengine.config import DictAction

import mixaq_mmdet  # noqa: F401  (registries)
from mixaq_mmdet.tables import (TABLES, LaunchExecutor, LocalExecutor, SearchSettings, Table,
                                TableRunner, format_table, format_targets, published_figures)
from mixaq_mmdet.tables.configs import quick_options
from mixaq_mmdet.tables.report import plot_table
from mixaq_mmdet.utils.config import FORMAT_CONFIG_KEY


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--table', choices=sorted(TABLES), default='benchmark')
    parser.add_argument(
        '--work-dir',
        help='default: work_dirs/demo (benchmark), '
        'work_dirs/<table>_table (others)')
    parser.add_argument('--data-root', help="default: the table's (data/shapes_coco, data/coco)")
    parser.add_argument(
        '--gpus',
        type=int,
        default=None,
        help='launch each run as a tool on this many GPUs (0: CPU)')
    parser.add_argument(
        '--jobs',
        type=int,
        default=1,
        help='in-process runs: how many run side by side in forked children')
    parser.add_argument(
        '--dry-run', action='store_true', help='with --gpus: print the commands, run nothing')
    parser.add_argument(
        '--checkpoint',
        nargs='+',
        metavar='[MODEL=]FILE',
        help="given models' checkpoints (file or URL) instead of the table's releases: "
        'MODEL=FILE for a training of the table (ptq-papers: fp_<detector>), or FILE alone '
        "where the table has one given model (COCO: mmdet's 3x release)")
    parser.add_argument('--rows', nargs='+', metavar='ROW', help='only these rows (default: all)')
    parser.add_argument(
        '--num-train',
        type=int,
        default=600,
        help='a table on generated data (benchmark): train images to generate if absent')
    parser.add_argument(
        '--num-val',
        type=int,
        default=200,
        help='a table on generated data (benchmark): val images to generate if absent')
    parser.add_argument(
        '--num-search',
        type=int,
        default=100,
        help='a table on generated data (benchmark): search-split images to generate if '
        'absent')
    parser.add_argument(
        '--max-epochs', type=int, default=None, help='override the FP config (a quick run)')
    parser.add_argument(
        '--qat-epochs', type=int, default=None, help='override the quantized configs (a quick run)')
    parser.add_argument(
        '--calib-images',
        type=int,
        default=None,
        help='override the calibration size of PTQ and QAT')
    parser.add_argument(
        '--search-images',
        type=int,
        default=None,
        help="search-split images of the ratio searches (default: the table's)")
    parser.add_argument(
        '--seeds',
        type=int,
        nargs='+',
        default=None,
        help="training seeds of the seeded trainings (default: the table's; "
        'benchmark: 0 1 2)')
    parser.add_argument('--search-pop', type=int, default=None, help='NSGA-II population')
    parser.add_argument('--search-gens', type=int, default=None, help='NSGA-II generations')
    parser.add_argument(
        '--retrain-changed-code',
        action='store_true',
        help='train anew the models trained by other code than this checkout (by default '
        'they are reused and their rows say so)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        default={},
        help='override settings of every config, key=value pairs')
    args = parser.parse_args()
    if args.dry_run and args.gpus is None:
        parser.error('--dry-run prints the launched commands: give --gpus')
    if args.jobs < 1:
        parser.error(f'--jobs must be 1 or more, got {args.jobs}')
    if args.jobs > 1 and args.gpus is not None:
        parser.error('--jobs runs in-process runs side by side; with --gpus each launched '
                     'run takes all the devices: leave --jobs out')
    return args


def given_checkpoints(table: Table, entries: Sequence[str]) -> Optional[Dict[str, str]]:
    """``--checkpoint``'s entries as training -> file; a bare file is the
    checkpoint of the table's one given model."""
    given = [t.name for t in table.trainings if t.checkpoint is not None]
    checkpoints = {}
    for entry in entries:
        name, sep, path = entry.partition('=')
        if not sep or '://' in name:
            if len(given) != 1:
                raise SystemExit(f'--checkpoint {entry}: table {table.name} has {len(given)} '
                                 f'given models ({", ".join(given)}); name one as MODEL=FILE')
            name, path = given[0], entry
        if name not in given:
            raise SystemExit(f'--checkpoint {entry}: {name!r} is not a given model of table '
                             f'{table.name}; valid: {", ".join(given)}')
        checkpoints[name] = path
    return checkpoints or None


def main() -> None:
    args = parse_args()
    # the forked jobs compile kernels of their own: inductor must compile in
    # their process, not through a pool of compile workers of this one
    os.environ.setdefault('TORCHINDUCTOR_COMPILE_THREADS', '1')
    table = TABLES[args.table]
    if args.seeds is not None:
        table = dataclasses.replace(table, seeds=tuple(args.seeds))
    work_dir = args.work_dir or table.default_work_dir
    data_root = args.data_root or table.data_root
    if table.generate_data is not None:
        table.generate_data(data_root,
                            dict(train=args.num_train, val=args.num_val, search=args.num_search))
    executor = LocalExecutor(table) if args.gpus is None else \
        LaunchExecutor(table, args.gpus, dry_run=args.dry_run)
    defaults = table.search_settings
    search = SearchSettings(args.search_pop or defaults.pop, args.search_gens or defaults.gens,
                            args.search_images or defaults.images)
    given = given_checkpoints(table, args.checkpoint or ())
    options = quick_options(args.max_epochs, args.qat_epochs, args.calib_images, {
        FORMAT_CONFIG_KEY: False,
        **args.cfg_options
    })
    runner = TableRunner(table, work_dir, executor, args.data_root, args.rows, options, given,
                         search, args.jobs, args.retrain_changed_code)
    rows, targets = runner.run()
    if args.dry_run:
        return
    plot_table(table, rows, work_dir)
    bases = ', '.join(f'{base} for {method} rows' for method, (base, _) in table.plots.items())
    print(f'\n[table] {table.name}: results on the val split of {data_root} (speedup: BitOPs '
          f'of the base row / BitOPs of the row, backbone at {table.img_shape[0]}x'
          f'{table.img_shape[1]}; bases: {bases}, or the row named in results.json):')
    print(format_table(rows, published_figures(table)))
    seeded = [t.name for t in table.trainings if t.seeded]
    if seeded and len(table.seeds) > 1:
        print(f'[table] rows on {", ".join(seeded)}: mean over the training seeds '
              f'{list(table.seeds)} (each seed\'s row in results.json as <row>@seed<s>)')
    if targets:
        print('\n[table] targets (paired differences on val, averaged over the seeds of seeded '
              'rows; standard error from 5 folds of the val images and the spread over the '
              'seeds; met: holds beyond two standard errors, within noise: holds only as the '
              'point estimate):')
        print(format_targets(targets))
    print(f"[table] written: {osp.join(work_dir, 'results.json')}")


if __name__ == '__main__':
    main()
