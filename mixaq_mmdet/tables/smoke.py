"""The COCO table and every config of ``configs/mixaq/`` at full size on CPU,
on a COCO-layout fixture (``make smoke-coco``, ``tools/smoke_coco.py``).

The data is a COCO-layout fixture (:mod:`mixaq_mmdet.datasets.coco_fixture`:
COCO's 80 category ids, 640x480 / 480x640 images, a train2017 file listing 2000
images of which the first few are written) and the FP checkpoint a random-weight
one in the official 3x release's format
(:mod:`mixaq_mmdet.utils.official_checkpoint`). The model is the real Swin-T
Mask R-CNN at 800x1333.

1. The COCO table's runner (:mod:`mixaq_mmdet.tables`, what ``tools/run_demo.py
   --table coco --gpus N`` runs) computes the rows of :data:`SMOKE_ROWS`, each
   run launched as the tool command it prints, with 1-2 images per run: QAT
   trainings of 1 iteration (batch 1) calibrating on 1 train image and
   validating on 1 val image; PTQ rows calibrating on 2 train images; every row
   evaluated on the 2 val images; the per-pair search (1 generation of 4 on 3
   train images) and its searched configs.
2. Steps the table does not take: the 1x FP config, a QAT training resumed for
   one more iteration (``--resume``), one iteration of the AMP QAT config (bf16
   on CPU: ``optim_wrapper.type=CPUAmpOptimWrapper``, no validation) and the
   search's ``proxy`` objective.

Every config of ``configs/mixaq/`` must be run by one of them: a config none
runs is an error. Each run is forked from this process (the imports are paid
once) in the repository, as the command would run there. Per run: wall
seconds, seconds per image or iteration (mmengine's logged ``time``),
calibration seconds and peak host memory (the child's maxrss, its dataloader
workers included as a max). The table is printed and written to
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
from typing import Callable, List, Optional, Sequence

# Every module the tools import, imported before the first fork.
import mmdet.engine.hooks.utils  # noqa: F401
import mmdet.evaluation  # noqa: F401
import mmdet.models  # noqa: F401
import mmdet.utils  # noqa: F401
from mmengine.config import Config

from ..datasets import generate_coco_fixture
from ..utils.forking import run_forked
from ..utils.official_checkpoint import write_official_checkpoint
from .coco import COCO
from .configs import TableConfig
from .executors import LaunchExecutor, search_args, test_args, tool_command, train_args
from .rows import Options, Search, SearchSettings
from .runner import TableRunner

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = COCO.config_root

#: Fixture sizes: PTQ calibrates on 2 of the written train images and is
#: evaluated on the 2 val images, the search takes 3 of the train images; QAT
#: calibrates on 1 and trains on the first (batch 1: an iteration an epoch); a
#: trained QAT model is evaluated on 1 val image (and validated on it when
#: resumed). A full-size QAT iteration costs 7-10 s on 2 cores.
NUM_TRAIN_FILES = 6
NUM_VAL = 2
CALIB_IMAGES = 2
QAT_CALIB_IMAGES = 1
TRAIN_IMAGES = 1
QAT_VAL_IMAGES = 1
QAT_TEST_IMAGES = 1
SEARCH = SearchSettings(pop=4, gens=1, images=3)
#: The search's tolerance in the smoke: one generation of 4 candidates does not
#: reach 1.35 +- 0.02 at 800x1333, where no ratio of the grid on every pair lands
#: (0.5: 1.323x, 0.6: 1.409x); at +- 0.05 the first population's uniform seeds
#: (0.4: 1.238x, 0.5) lie in both targets' bands.
TABLE = dataclasses.replace(COCO, search_tolerance=0.05)
#: The COCO table's rows the smoke computes: every config, the QAT
#: initialization (no-SAQA row) and a search with its searched configs; the
#: ablations that only change options of a config run elsewhere are left out.
SMOKE_ROWS = ('fp', 'uniform_w8a8', 'uniform_w4a8', 'uniform_w4a4', 'mixaq_w4a8a4_1.24x',
              'mixaq_w4a8a4_1.35x', 'mixaq_w4a8a4_prune_1.52x', 'qat_uniform_w4a4',
              'qat_uniform_w4a3', 'qat_uniform_w4a4_12e', 'qat_uniform_w4a3_12e',
              'qat_mixaq_w4a4a2_1.24x', 'qat_mixaq_w4a4a2_1.35x', 'qat_mixaq_prune_1.53x',
              'qat_mixaq_prune_1.82x', 'qat_no_saqa_1.35x', 'qat_search_1.24x', 'qat_search_1.35x')
#: The steps after the table: the 1x FP config, a resumed training, AMP QAT,
#: the proxy search.
FP_1X = 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
RESUMED = 'qat_uniform_w4a4'
AMP_QAT = 'qat/qat_uniform_w4a4-amp_swin-t_coco.py'
#: A run longer than this is killed and fails.
STEP_TIMEOUT_S = 900


def smoke_options(cfg: Config) -> Options:
    """Overrides of every config: one random seed (the training scales of the
    multi-scale pipeline, so that runs take the same time); only the training
    the smoke resumes saves its optimizer state; QAT trains ``TRAIN_IMAGES`` iterations (one
    epoch) without validating (validation begins at epoch 2: the table's rows
    evaluate every model, the resumed run's second epoch validates on
    ``QAT_VAL_IMAGES``); PTQ and QAT calibrate on the
    written train images; a QAT config is evaluated on ``QAT_TEST_IMAGES``;
    the search takes its images from the train images; configs are logged
    unformatted."""
    resumed = osp.samefile(cfg.filename, osp.join(CONFIGS, COCO.training(RESUMED).config))
    options = [('randomness.seed', 0), ('default_hooks.checkpoint.save_optimizer', resumed),
               ('train_dataloader.batch_size', 1),
               ('train_dataloader.dataset.indices', TRAIN_IMAGES), ('train_cfg.max_epochs', 1),
               ('train_cfg.val_begin', 2), ('val_dataloader.dataset.indices', QAT_VAL_IMAGES),
               ('default_hooks.logger.interval', 1), ('format_config', False)]
    if cfg.get('test_cfg', {}).get('type') == 'PTQLoop':
        options += [('test_cfg.calib_images', CALIB_IMAGES),
                    ('test_cfg.calib_dataloader.dataset.indices', NUM_TRAIN_FILES)]
    for index, hook in enumerate(cfg.get('custom_hooks', [])):
        if hook.get('type') == 'OscillationHook':
            options.append((f'custom_hooks.{index}.interval', 1))
        if hook.get('type') == 'QATInitHook':
            options += [(f'custom_hooks.{index}.calib_images', QAT_CALIB_IMAGES),
                        (f'custom_hooks.{index}.calib_dataloader.dataset.indices', NUM_TRAIN_FILES),
                        ('test_dataloader.dataset.indices', QAT_TEST_IMAGES)]
    if 'search_dataloader' in cfg:
        options.append(('search_dataloader.dataset.indices', NUM_TRAIN_FILES))
    return tuple(options)


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
    """Launches each run on CPU as a child forked from this process and records
    what it measured in :attr:`results`; a failed run raises."""

    def __init__(self, work: str) -> None:
        super().__init__(TABLE, gpus=0)
        self.work = work
        self.results: List[Result] = []

    def launch(self, tool: str, args: List[str], log_dir: str) -> str:
        argv = tool_command(tool, args, 0)
        command = shlex.join(argv)
        folder = osp.relpath(log_dir, osp.join(self.work, 'table'))
        if folder.startswith('..'):
            folder = osp.relpath(log_dir, self.work)
        name = f'{folder} ({tool})'
        print(f'[{len(self.results) + 1}] {command}', flush=True)
        os.makedirs(log_dir, exist_ok=True)
        log_file = osp.join(log_dir, f'{tool}.log')
        ok, wall, usage, error = run_forked(
            run_tool(osp.join(REPO, argv[1]), argv[2:], REPO), log_file, STEP_TIMEOUT_S)
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


def run_table(executor: SmokeExecutor, work: str, data_root: str, checkpoint: str,
              rows: Sequence[str]) -> TableRunner:
    """The COCO table's ``rows`` on the fixture."""
    runner = TableRunner(TABLE, osp.join(work, 'table'), executor, data_root, rows, smoke_options,
                         {'fp': checkpoint}, SEARCH)
    runner.run()
    return runner


def run_extras(executor: SmokeExecutor, work: str, data_root: str, checkpoint: str) -> None:
    """What the table does not run: the 1x FP config, a QAT training resumed for
    one more iteration and validated, AMP QAT, the search's proxy objective."""
    fp = TableConfig(
        osp.join(CONFIGS, FP_1X), osp.join(work, 'extra', 'fp_1x'), data_root, extra=smoke_options)
    executor.launch('test', test_args(fp, checkpoint), fp.work_dir)
    training = COCO.training(RESUMED)
    resumed = TableConfig(
        osp.join(CONFIGS, training.config), osp.join(work, 'table', RESUMED), data_root,
        (('train_cfg.max_epochs', 2), ('train_cfg.val_interval', 2)), smoke_options)
    executor.launch('train', train_args(resumed, None, resume=True),
                    osp.join(work, 'extra', 'resume'))
    amp = TableConfig(
        osp.join(CONFIGS, AMP_QAT), osp.join(work, 'extra', 'qat_amp'), data_root,
        (('optim_wrapper.type', 'CPUAmpOptimWrapper'), ('train_cfg.val_interval', 2)),
        smoke_options)
    executor.launch('train', train_args(amp, checkpoint, resume=False), amp.work_dir)
    saqa = COCO.training('qat_saqa_w4a4a2')
    proxy = Search(
        'proxy', saqa.config, saqa.name, 'qat_uniform_w4a4', (1.35, ), 'QAT', objective='proxy')
    tc = TableConfig(
        osp.join(CONFIGS, saqa.config),
        osp.join(work, 'extra', 'search_proxy'),
        data_root,
        extra=smoke_options)
    executor.launch(
        'search',
        search_args(tc, osp.join(work, 'table', saqa.name, 'epoch_1.pth'), proxy, SEARCH,
                    TABLE.search_tolerance), tc.work_dir)


def configs_not_run(results: Sequence[Result]) -> List[str]:
    """The configs of ``configs/mixaq/`` that no run of the smoke used."""
    used = {osp.normpath(osp.join(REPO, r.config)) for r in results}
    configs = sorted(glob.glob(osp.join(CONFIGS, '**', '*.py'), recursive=True))
    return [osp.relpath(p, CONFIGS) for p in configs if osp.normpath(p) not in used]


def prepare_data(work: str) -> str:
    """The fixture under ``<work>/data/coco`` and the checkpoint; returns its path."""
    checkpoint = osp.join(work, 'mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_smoke.pth')

    def target() -> None:
        generate_coco_fixture(
            osp.join(work, 'data', 'coco'), num_train_files=NUM_TRAIN_FILES, num_val=NUM_VAL)
        write_official_checkpoint(checkpoint)

    ok, wall, _, error = run_forked(target, osp.join(work, 'fixture.log'), STEP_TIMEOUT_S)
    if not ok:
        with open(osp.join(work, 'fixture.log')) as f:
            raise RuntimeError(f'writing the fixture failed ({error}):\n{f.read()[-3000:]}')
    print(f'fixture and checkpoint written in {wall:.1f} s', flush=True)
    return checkpoint


def format_runs(results: Sequence[Result]) -> str:
    lines = [
        '| run | config | status | per image / iteration | calibration | wall | '
        'peak host memory |', '|---|---|---|---|---|---|---|'
    ]
    for r in results:
        per = (f'{r.s_per_unit:.1f} s/{r.unit} ({r.count})'
               if r.s_per_unit is not None else f'- ({r.count} {r.unit}s)')
        calib = f'{r.calib_s:.1f} s' if r.calib_s is not None else '-'
        config = osp.relpath(osp.join(REPO, r.config), CONFIGS) \
            if r.config.startswith('configs/') else osp.basename(r.config)
        lines.append(f'| {r.name} | {config} | {"ok" if r.ok else "FAILED"} | {per} | '
                     f'{calib} | {r.wall_s:.0f} s | {r.peak_rss_mb / 1024:.1f} GB |')
    return '\n'.join(lines)


def run_smoke(work_dir: str, rows: Optional[Sequence[str]] = None) -> bool:
    """Run the smoke into ``work_dir`` (emptied first): the table's ``rows``
    (default :data:`SMOKE_ROWS`, then the other steps and the check that every
    config ran); print and write (``smoke.json``) what each run measured.
    Whether every run succeeded."""
    work = osp.abspath(work_dir)
    if osp.isdir(work):
        shutil.rmtree(work)
    os.makedirs(work)
    start = time.perf_counter()
    checkpoint = prepare_data(work)
    data_root = osp.join(work, 'data', 'coco')
    executor = SmokeExecutor(work)
    failed = ''
    try:
        run_table(executor, work, data_root, checkpoint, rows or SMOKE_ROWS)
        if not rows:
            run_extras(executor, work, data_root, checkpoint)
            missing = configs_not_run(executor.results)
            if missing:
                raise ValueError(f'no smoke run uses {missing}: add its row to SMOKE_ROWS or '
                                 'a step to run_extras')
    except Exception as exc:  # reported with the table, then the exit status
        failed = f'{type(exc).__name__}: {exc}'
        traceback.print_exc()
    table = format_runs(executor.results)
    total = time.perf_counter() - start
    print(f'\nCOCO table and configs at full size on CPU ({os.cpu_count()} cores, {NUM_VAL} '
          f'val images, PTQ calibration on {CALIB_IMAGES}), {total:.0f} s in all:\n' + table)
    with open(osp.join(work, 'smoke.json'), 'w') as f:
        json.dump(
            dict(
                total_s=total,
                cpus=os.cpu_count(),
                failed=failed,
                results=[asdict(r) for r in executor.results]),
            f,
            indent=1)
    if failed:
        print(f'\nFAILED: {failed}')
    return not failed
