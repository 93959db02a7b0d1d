"""The COCO tables and every config under their config roots at full size on
CPU, on a COCO-layout fixture (``make smoke-coco``, ``tools/smoke_coco.py``).

The data is a COCO-layout fixture (:mod:`mixaq_mmdet.datasets.coco_fixture`:
COCO's 80 category ids, 640x480 / 480x640 images, a train2017 file listing 2000
images of which the first few are written) and each given FP checkpoint a
random-weight one in its release's format (:func:`write_release_fixture`:
mmdet's official 3x release, :mod:`mixaq_mmdet.utils.official_checkpoint`; the
Swin-Transformer-Object-Detection releases the PTQ papers use). The models are
the real detectors at 800x1333.

For each table of :data:`~mixaq_mmdet.tables.COCO_TABLES`:

1. The table's runner (:mod:`mixaq_mmdet.tables`, what ``tools/run_demo.py
   --table <name> --gpus N`` runs) computes its smoke rows
   (:func:`smoke_rows`), each run launched as the tool command it prints, with
   1-2 images per run. The paper's table ('coco'): QAT trainings of 1
   iteration (batch 1) calibrating on 1 train image and validating on 1 val
   image; PTQ rows calibrating on 2 train images; every row evaluated on the 2
   val images; the per-pair search (1 generation of 4 on 3 train images) and
   its searched configs. Other tables: one row per config, each PTQ row
   calibrating on 1 train image and evaluated on 1 val image.
2. Steps a table does not take (:data:`EXTRAS`; the paper's table: the 1x FP
   config, a QAT training resumed for one more iteration (``--resume``), one
   iteration of the AMP QAT config (bf16 on CPU:
   ``optim_wrapper.type=CPUAmpOptimWrapper``, no validation) and the search's
   ``proxy`` objective).

Every config under a table's config root must be run by one of them: a config
none runs is an error. Each run is forked from this process (the imports are
paid once) in the repository, as the command would run there. Per run: wall
seconds, seconds per image or iteration (mmengine's logged ``time``),
calibration seconds and peak host memory (the child's maxrss, its dataloader
workers included as a max). The runs are printed and written to
``<work-dir>/smoke.json``; a failed run fails the smoke.
"""
import dataclasses
import glob
import json
import os
import os.path as osp
import re
import runpy
import shlex
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

# Every module the tools import, imported before the first fork.
import mmdet.engine.hooks.utils  # noqa: F401
import mmdet.evaluation  # noqa: F401
import mmdet.models  # noqa: F401
import mmdet.utils  # noqa: F401
from mmengine.config import Config

from ..datasets import generate_coco_fixture
from ..utils.forking import run_forked
from ..utils.official_checkpoint import write_official_checkpoint
from ..utils.swin_od_fixture import write_swin_od_checkpoint
from . import COCO_TABLES
from .coco import COCO
from .configs import TableConfig
from .executors import LaunchExecutor, search_args, test_args, tool_command, train_args
from .rows import Options, Search, SearchSettings, Table, Training
from .runner import TableRunner

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

#: Fixture sizes: the paper's table's PTQ rows calibrate on 2 of the written
#: train images and are evaluated on the 2 val images, the search takes 3 of the
#: train images; QAT calibrates on 1 and trains on the first (batch 1: an
#: iteration an epoch); a trained QAT model is evaluated on 1 val image (and
#: validated on it when resumed). A full-size QAT iteration costs 7-10 s on 2
#: cores. The other tables' PTQ rows calibrate on 1 train image and are
#: evaluated on 1 val image.
NUM_TRAIN_FILES = 6
NUM_VAL = 2
CALIB_IMAGES = 2
QAT_CALIB_IMAGES = 1
TRAIN_IMAGES = 1
QAT_VAL_IMAGES = 1
QAT_TEST_IMAGES = 1
SEARCH = SearchSettings(pop=4, gens=1, images=3)


class SmokeSizes(NamedTuple):
    """Images of a table's PTQ calibrations and of its evaluations."""
    calib_images: int
    val_images: int


#: Each table's sizes; a table not named here gets :data:`DEFAULT_SIZES`.
SIZES = {COCO.name: SmokeSizes(CALIB_IMAGES, NUM_VAL)}
DEFAULT_SIZES = SmokeSizes(1, 1)
#: The search's tolerance in the smoke: one generation of 4 candidates does not
#: reach 1.35 +- 0.02 at 800x1333, where no ratio of the grid on every pair lands
#: (0.5: 1.323x, 0.6: 1.409x); at +- 0.05 the first population's uniform seeds
#: (0.4: 1.238x, 0.5) lie in both targets' bands.
SEARCH_TOLERANCE = 0.05
#: The paper's table's rows the smoke computes: every config, the QAT
#: initialization (no-SAQA row) and a search with its searched configs; the
#: ablations that only change options of a config run elsewhere are left out.
#: Another table's are :func:`smoke_rows`'.
SMOKE_ROWS = {
    COCO.name:
    ('fp', 'uniform_w8a8', 'uniform_w4a8', 'uniform_w4a4', 'mixaq_w4a8a4_1.24x',
     'mixaq_w4a8a4_1.35x', 'mixaq_w4a8a4_prune_1.52x', 'qat_uniform_w4a4', 'qat_uniform_w4a3',
     'qat_uniform_w4a4_12e', 'qat_uniform_w4a3_12e', 'qat_mixaq_w4a4a2_1.24x',
     'qat_mixaq_w4a4a2_1.35x', 'qat_mixaq_prune_1.53x', 'qat_mixaq_prune_1.82x',
     'qat_no_saqa_1.35x', 'qat_search_1.24x', 'qat_search_1.35x')
}
#: The paper's table's steps after the table: the 1x FP config, a resumed
#: training, AMP QAT, the proxy search.
FP_1X = 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
RESUMED = 'qat_uniform_w4a4'
AMP_QAT = 'qat/qat_uniform_w4a4-amp_swin-t_coco.py'
#: A run longer than this is killed and fails.
STEP_TIMEOUT_S = 900


def smoke_rows(table: Table) -> Tuple[str, ...]:
    """The rows the smoke computes of ``table``: :data:`SMOKE_ROWS`' if it names
    the table, else the first row of each config (a search's rows for its
    config if no row has it): every config the rows and searches use, once."""
    if table.name in SMOKE_ROWS:
        return SMOKE_ROWS[table.name]
    chosen: Dict[str, str] = {}
    for row in table.rows:
        chosen.setdefault(row.config, row.name)
    names = tuple(chosen.values())
    for search in table.searches:
        if search.config not in chosen:
            chosen[search.config] = search.name
            names += search.row_names()
    return names


def smoke_options(table: Table) -> Callable[[Config], Options]:
    """Overrides of every config of ``table``: one random seed (the training
    scales of the multi-scale pipeline, so that runs take the same time); only
    the training the smoke resumes saves its optimizer state; QAT trains
    ``TRAIN_IMAGES`` iterations (one epoch) without validating (validation
    begins at epoch 2: the table's rows evaluate every model, the resumed run's
    second epoch validates on ``QAT_VAL_IMAGES``); PTQ and QAT calibrate on the
    written train images (PTQ on the table's :class:`SmokeSizes`); a QAT
    config is evaluated on ``QAT_TEST_IMAGES``, another table's row on its
    sizes' val images; the search takes its images from the train images;
    configs are logged unformatted."""
    sizes = SIZES.get(table.name, DEFAULT_SIZES)
    resumed_config = osp.join(COCO.config_root, COCO.training(RESUMED).config)

    def options(cfg: Config) -> Options:
        resumed = osp.samefile(cfg.filename, resumed_config)
        options = [('randomness.seed', 0), ('default_hooks.checkpoint.save_optimizer', resumed),
                   ('train_dataloader.batch_size', 1),
                   ('train_dataloader.dataset.indices', TRAIN_IMAGES), ('train_cfg.max_epochs', 1),
                   ('train_cfg.val_begin', 2), ('val_dataloader.dataset.indices', QAT_VAL_IMAGES),
                   ('default_hooks.logger.interval', 1), ('format_config', False)]
        if sizes.val_images < NUM_VAL:
            options.append(('test_dataloader.dataset.indices', sizes.val_images))
        if cfg.get('test_cfg', {}).get('type') == 'PTQLoop':
            options += [('test_cfg.calib_images', sizes.calib_images),
                        ('test_cfg.calib_dataloader.dataset.indices', NUM_TRAIN_FILES)]
        for index, hook in enumerate(cfg.get('custom_hooks', [])):
            if hook.get('type') == 'OscillationHook':
                options.append((f'custom_hooks.{index}.interval', 1))
            if hook.get('type') == 'QATInitHook':
                options += [(f'custom_hooks.{index}.calib_images', QAT_CALIB_IMAGES),
                            (f'custom_hooks.{index}.calib_dataloader.dataset.indices',
                             NUM_TRAIN_FILES), ('test_dataloader.dataset.indices', QAT_TEST_IMAGES)]
        if 'search_dataloader' in cfg:
            options.append(('search_dataloader.dataset.indices', NUM_TRAIN_FILES))
        return tuple(options)

    return options


@dataclass
class Result:
    """What a run measured."""
    name: str
    config: str
    command: str
    ok: bool
    wall_s: float
    peak_rss_mb: float
    unit: str
    count: int
    s_per_unit: Optional[float]
    calib_s: Optional[float]
    log_file: str
    error: str = ''


def logged_time(log: str, mode: str) -> Optional[float]:
    """mmengine's last logged ``time`` of ``mode`` ('train': the mean over the
    epoch's iterations so far; 'test': the epoch's mean)."""
    times = re.findall(rf'Epoch\({mode}\).*?\btime: ([0-9.]+)', log)
    return float(times[-1]) if times else None


def logged_count(log: str, mode: str) -> Optional[int]:
    """The number of iterations (images at batch 1) of the last epoch of ``mode``
    mmengine logged."""
    counts = re.findall(rf'Epoch\({mode}\) +(?:\[\d+\])?\[\d+/(\d+)\]', log)
    return int(counts[-1]) if counts else None


def calibration_seconds(log: str) -> Optional[float]:
    times = re.findall(r'calibrated \d+ quantizers on \d+ images .*? in ([0-9.]+) s', log)
    return sum(map(float, times)) if times else None


def run_tool(tool: str, args: Sequence[str], cwd: str) -> Callable[[], None]:

    def target() -> None:
        os.chdir(cwd)
        sys.argv = [tool] + list(args)
        sys.path.insert(0, osp.dirname(tool))
        runpy.run_path(tool, run_name='__main__')

    return target


UNITS = dict(
    train=('iteration', TRAIN_IMAGES), test=('image', NUM_VAL), search=('image', SEARCH.images))


class SmokeExecutor(LaunchExecutor):
    """Launches each run of ``table`` on CPU as a child forked from this
    process (on ``threads`` torch threads; default: this process's) and
    records what it measured in ``results``; a failed run raises. ``work`` is
    the table's folder of the smoke."""

    def __init__(self,
                 table: Table,
                 work: str,
                 results: List[Result],
                 threads: Optional[int] = None) -> None:
        super().__init__(dataclasses.replace(table, search_tolerance=SEARCH_TOLERANCE), gpus=0)
        self.work = work
        self.results = results
        self.threads = threads

    def launch(self, tool: str, args: List[str], log_dir: str) -> str:
        argv = tool_command(tool, args, 0)
        command = shlex.join(argv)
        folder = osp.relpath(log_dir, osp.join(self.work, 'table'))
        if folder.startswith('..'):
            folder = osp.relpath(log_dir, self.work)
        name = f'{self.table.name}/{folder} ({tool})'
        print(f'[{len(self.results) + 1}] {command}', flush=True)
        os.makedirs(log_dir, exist_ok=True)
        log_file = osp.join(log_dir, f'{tool}.log')
        ok, wall, usage, error = run_forked(
            run_tool(osp.join(REPO, argv[1]), argv[2:], REPO), log_file, STEP_TIMEOUT_S,
            self.threads)
        with open(log_file, errors='replace') as f:
            log = f.read()
        unit, count = UNITS[tool]
        count = logged_count(log, 'train' if unit == 'iteration' else 'test') or count
        calib = calibration_seconds(log)
        per_unit = logged_time(log, 'train' if unit == 'iteration' else 'test')
        if per_unit is not None and calib is not None and unit == 'image':
            # PTQLoop calibrates after before_test_epoch, where mmengine's
            # iteration timer starts: the first image's time holds the calibration
            per_unit = max(0.0, per_unit - calib / count)
        result = Result(name, args[0], command, ok, wall, usage.ru_maxrss / 1024, unit, count,
                        per_unit, calib, log_file, '' if ok else
                        (error + '\n' + log[-3000:]).strip())
        self.results.append(result)
        if not ok:
            print(f'    FAILED: {result.error}', flush=True)
            raise RuntimeError(f'smoke run failed: {command}')
        print(f'    ok in {wall:.0f} s, peak {result.peak_rss_mb / 1024:.1f} GB', flush=True)
        return command


def run_table(executor: SmokeExecutor, table: Table, data_root: str, checkpoints: Dict[str, str],
              rows: Sequence[str]) -> TableRunner:
    """``table``'s ``rows`` on the fixture, into ``<executor.work>/table``."""
    runner = TableRunner(executor.table, osp.join(executor.work, 'table'), executor, data_root,
                         rows, smoke_options(table), checkpoints, SEARCH)
    runner.run()
    return runner


def run_coco_extras(executor: SmokeExecutor, data_root: str, checkpoints: Dict[str, str]) -> None:
    """What the paper's table does not run: the 1x FP config, a QAT training
    resumed for one more iteration and validated, AMP QAT, the search's proxy
    objective."""
    work, configs, options = executor.work, COCO.config_root, smoke_options(COCO)
    checkpoint = checkpoints['fp']
    fp = TableConfig(
        osp.join(configs, FP_1X), osp.join(work, 'extra', 'fp_1x'), data_root, extra=options)
    executor.launch('test', test_args(fp, checkpoint), fp.work_dir)
    training = COCO.training(RESUMED)
    resumed = TableConfig(
        osp.join(configs, training.config), osp.join(work, 'table', RESUMED), data_root,
        (('train_cfg.max_epochs', 2), ('train_cfg.val_interval', 2)), options)
    executor.launch('train', train_args(resumed, None, resume=True),
                    osp.join(work, 'extra', 'resume'))
    amp = TableConfig(
        osp.join(configs, AMP_QAT), osp.join(work, 'extra', 'qat_amp'), data_root,
        (('optim_wrapper.type', 'CPUAmpOptimWrapper'), ('train_cfg.val_interval', 2)), options)
    executor.launch('train', train_args(amp, checkpoint, resume=False), amp.work_dir)
    saqa = COCO.training('qat_saqa_w4a4a2')
    proxy = Search(
        'proxy', saqa.config, saqa.name, 'qat_uniform_w4a4', (1.35, ), 'QAT', objective='proxy')
    tc = TableConfig(
        osp.join(configs, saqa.config),
        osp.join(work, 'extra', 'search_proxy'),
        data_root,
        extra=options)
    executor.launch(
        'search',
        search_args(tc, osp.join(work, 'table', saqa.name, 'epoch_1.pth'), proxy, SEARCH,
                    SEARCH_TOLERANCE), tc.work_dir)


#: The steps each table's smoke takes after its rows, by table name.
EXTRAS: Dict[str, Callable[[SmokeExecutor, str, Dict[str, str]], None]] = {
    COCO.name: run_coco_extras
}


def configs_not_run(table: Table, results: Sequence[Result]) -> List[str]:
    """The configs under ``table``'s config root (but its ``_base_`` files) that no
    run of the smoke used."""
    root = table.config_root
    used = {osp.normpath(osp.join(REPO, r.config)) for r in results}
    configs = sorted(
        p for p in glob.glob(osp.join(root, '**', '*.py'), recursive=True)
        if '_base_' not in osp.relpath(p, root).split(osp.sep))
    return [osp.relpath(p, root) for p in configs if osp.normpath(p) not in used]


def write_release_fixture(training: Training, config: str, path: str) -> str:
    """A random-weight checkpoint at ``path`` in the format of ``training``'s
    release (its checkpoint URL says which): mmdet's official release
    (download.openmmlab.com) or a Swin-Transformer-Object-Detection release
    (github.com/SwinTransformer). Returns ``path``."""
    url = training.checkpoint or ''
    if url.startswith('https://download.openmmlab.com/'):
        return write_official_checkpoint(path)
    if url.startswith('https://github.com/SwinTransformer/'):
        return write_swin_od_checkpoint(path, config)
    raise ValueError(f'training {training.name}: no fixture writer for the release {url!r}; '
                     'known: download.openmmlab.com (mmdet), github.com/SwinTransformer '
                     '(Swin-Transformer-Object-Detection)')


def prepare_data(work: str, tables: Sequence[Table]) -> Dict[str, Dict[str, str]]:
    """The fixture under ``<work>/data/coco`` and a fixture checkpoint of each
    given model of ``tables``, named as its release file; returns them by table
    and training."""
    checkpoints = {
        table.name: {
            t.name: osp.join(work, 'checkpoints', table.name, osp.basename(t.checkpoint))
            for t in table.trainings if t.checkpoint is not None
        }
        for table in tables
    }

    def target() -> None:
        generate_coco_fixture(
            osp.join(work, 'data', 'coco'), num_train_files=NUM_TRAIN_FILES, num_val=NUM_VAL)
        for table in tables:
            for name, path in checkpoints[table.name].items():
                training = table.training(name)
                write_release_fixture(training, osp.join(table.config_root, training.config), path)

    ok, wall, _, error = run_forked(target, osp.join(work, 'fixture.log'), STEP_TIMEOUT_S)
    if not ok:
        with open(osp.join(work, 'fixture.log')) as f:
            raise RuntimeError(f'writing the fixture failed ({error}):\n{f.read()[-3000:]}')
    count = sum(map(len, checkpoints.values()))
    print(f'fixture and {count} checkpoints written in {wall:.1f} s', flush=True)
    return checkpoints


def format_runs(results: Sequence[Result]) -> str:
    lines = [
        '| run | config | status | per image / iteration | calibration | wall | '
        'peak host memory |', '|---|---|---|---|---|---|---|'
    ]
    for r in results:
        per = (f'{r.s_per_unit:.1f} s/{r.unit} ({r.count})'
               if r.s_per_unit is not None else f'- ({r.count} {r.unit}s)')
        calib = f'{r.calib_s:.1f} s' if r.calib_s is not None else '-'
        config = osp.relpath(osp.join(REPO, r.config), osp.join(REPO, 'configs')) \
            if r.config.startswith('configs/') else osp.basename(r.config)
        lines.append(f'| {r.name} | {config} | {"ok" if r.ok else "FAILED"} | {per} | '
                     f'{calib} | {r.wall_s:.0f} s | {r.peak_rss_mb / 1024:.1f} GB |')
    return '\n'.join(lines)


def run_smoke(work_dir: str,
              tables: Optional[Sequence[str]] = None,
              rows: Optional[Sequence[str]] = None,
              threads: Optional[int] = None) -> bool:
    """Run the smoke into ``work_dir`` (emptied first) for the COCO tables named
    ``tables`` (default: all of :data:`~mixaq_mmdet.tables.COCO_TABLES`), each
    into ``<work_dir>/<table>``: a table that has some of ``rows`` runs those
    and no other step (a sample); every other table runs in full:
    :func:`smoke_rows`, its :data:`EXTRAS` and the check that every config
    ran. Print and write (``smoke.json``) what each run
    measured. The runs compute on ``threads`` torch threads (default: this
    process's); this process itself must compute on one (see
    :mod:`~mixaq_mmdet.utils.forking`). Whether every run succeeded."""
    known = {t.name: t for t in COCO_TABLES}
    unknown = sorted(set(tables or ()) - set(known))
    if unknown:
        raise ValueError(f'no COCO table {unknown}; valid: {sorted(known)}')
    chosen = [known[name] for name in (tables or known)]
    if rows:
        missing = sorted(set(rows) - {n for t in chosen for n in t.row_names})
        if missing:
            raise ValueError(f'rows {missing} are in none of the tables '
                             f'{[t.name for t in chosen]}')
    work = osp.abspath(work_dir)
    if osp.isdir(work):
        shutil.rmtree(work)
    os.makedirs(work)
    start = time.perf_counter()
    checkpoints = prepare_data(work, chosen)
    data_root = osp.join(work, 'data', 'coco')
    results: List[Result] = []
    failed = ''
    seconds: Dict[str, float] = {}
    try:
        for table in chosen:
            began = time.perf_counter()
            executor = SmokeExecutor(table, osp.join(work, table.name), results, threads)
            sample = [r for r in rows or () if r in table.row_names]
            run_table(executor, table, data_root, checkpoints[table.name], sample
                      or smoke_rows(table))
            if not sample:
                if table.name in EXTRAS:
                    EXTRAS[table.name](executor, data_root, checkpoints[table.name])
                missing = configs_not_run(table, results)
                if missing:
                    raise ValueError(f'no smoke run of table {table.name} uses {missing}: add '
                                     'its row to SMOKE_ROWS or a step to EXTRAS')
            seconds[table.name] = time.perf_counter() - began
    except Exception as exc:  # reported with the runs, then the exit status
        failed = f'{type(exc).__name__}: {exc}'
        traceback.print_exc()
    total = time.perf_counter() - start
    per_table = ', '.join(f'{name} {s:.0f} s' for name, s in seconds.items())
    print(f'\nCOCO tables and configs at full size on CPU ({os.cpu_count()} cores), '
          f'{total:.0f} s in all ({per_table}):\n' + format_runs(results))
    with open(osp.join(work, 'smoke.json'), 'w') as f:
        json.dump(
            dict(
                total_s=total,
                table_s=seconds,
                cpus=os.cpu_count(),
                failed=failed,
                results=[asdict(r) for r in results]),
            f,
            indent=1)
    if failed:
        print(f'\nFAILED: {failed}')
    return not failed
