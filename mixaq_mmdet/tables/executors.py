"""How a table's runs are carried out: in this process (:class:`LocalExecutor`,
the benchmark on one machine) or as the project's tools launched on ``gpus``
devices (:class:`LaunchExecutor`, COCO). Both implement :class:`Executor`, are
given the same configs by :class:`~.runner.TableRunner` and return the same
records (``tests/tables/test_runner.py`` compares them row by row); each run is
also written as the command a user would type (:func:`tool_command`)."""
import copy
import glob
import json
import os
import os.path as osp
import shlex
import subprocess
import sys
import time
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional, Protocol, Sequence, Tuple, TypeVar

from mmdet.registry import MODELS
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from ..engine import PTQLoop, prepare_test_loop, unwrap
from ..search import (Candidate, RatioEvaluator, check_branches_calibrated, check_search_config,
                      ratio_space, run_search, search_evaluator, searched_rows,
                      write_searched_config)
from ..utils import build_runner
from .cache import fingerprint
from .configs import TableConfig, format_option
from .records import RowRecord, calibrated_images, row_record
from .rows import Ratios, Search, SearchSettings, Table

TOOLS = ('train', 'test', 'search')
#: What a search's row is evaluated at: a candidate (in process), a config (launched).
T = TypeVar('T')
#: Where a launched calibration records the key of its inputs.
CALIBRATION_KEY_FILE = 'calibration_inputs.txt'


def tool_command(tool: str, args: Sequence[str], gpus: int, python: str = 'python') -> List[str]:
    """The command line of ``tools/<tool>`` with ``args``: on more than one GPU
    through ``tools/dist_train.sh`` / ``dist_test.sh`` (torchrun for the search)."""
    if tool not in TOOLS:
        raise ValueError(f'unknown tool {tool!r}; tools: {TOOLS}')
    if gpus > 1:
        if tool == 'train':
            return ['bash', 'tools/dist_train.sh', args[0], str(gpus), *args[1:]]
        if tool == 'test':
            return ['bash', 'tools/dist_test.sh', args[0], args[1], str(gpus), *args[2:]]
        return [
            python, '-m', 'torch.distributed.run', f'--nproc_per_node={gpus}',
            'tools/search_ratios.py', *args, '--launcher', 'pytorch'
        ]
    script = 'tools/search_ratios.py' if tool == 'search' else f'tools/{tool}.py'
    return [python, script, *args]


REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def shown(path: str) -> str:
    """``path`` relative to the repository (where the tools run) if inside it."""
    if '://' in path:
        return path
    relative = osp.relpath(osp.abspath(path), REPO)
    return path if relative.startswith('..') else relative


def train_args(tc: TableConfig, parent: Optional[str], resume: bool) -> List[str]:
    options = tc.cli_options() + ([f'load_from={parent}'] if parent and not resume else [])
    return [shown(tc.path), '--work-dir', tc.work_dir
            ] + (['--resume'] if resume else []) + (['--cfg-options', *options] if options else [])


def test_args(tc: TableConfig, checkpoint: str) -> List[str]:
    options = tc.cli_options()
    return [shown(tc.path), checkpoint, '--work-dir', tc.work_dir
            ] + (['--cfg-options', *options] if options else [])


def search_args(tc: TableConfig, checkpoint: str, search: Search, settings: SearchSettings,
                tolerance: float) -> List[str]:
    """``tools/search_ratios.py``'s arguments for ``search`` (no val evaluation:
    the table evaluates the searched configs as rows)."""
    return [
        shown(tc.path), checkpoint, '--work-dir', tc.work_dir, '--target-speedup',
        *(f'{t:g}' for t in search.targets), '--tolerance', f'{tolerance:g}', '--objective',
        search.objective, '--pop',
        str(settings.pop), '--gens',
        str(settings.gens), '--search-images',
        str(settings.images), '--calib-low-bit-ratio', f'{search.calib_ratio:g}', '--no-val'
    ] + (['--prune'] if search.prune else []) + (['--cfg-options', *tc.cli_options()]
                                                 if tc.options else [])


def is_quantized(tc: TableConfig) -> bool:
    return tc.cfg.test_cfg.get('type') == 'PTQLoop'


def execution(tc: TableConfig) -> Optional[str]:
    """How ``tc``'s quantized model computes (``test_cfg.execution``)."""
    return tc.cfg.test_cfg.get('execution', 'fake_quant') if is_quantized(tc) else None


def check_method(info: 'RowInfo', tc: TableConfig) -> None:
    """Raise if the method the table states for a row is not what its config
    runs: an FP row on a quantized config, or a PTQ / QAT row on a float one."""
    if is_quantized(tc) != (info.method != 'FP'):
        raise ValueError(f'row {info.name} is stated {info.method} but {tc.path} is ' +
                         ('a quantized (PTQLoop) config' if is_quantized(tc) else 'a float config'))


class RowInfo(NamedTuple):
    """What the table says of a row: its name (a seed's: ``<row>@seed<s>``),
    its method, the training its checkpoint comes from and its base row."""
    name: str
    method: str
    model: str
    base: str


class Calibration(NamedTuple):
    """A quantized model rows and searches start from: ``tc`` (the config at
    its calibration settings, its work dir the calibration's folder) on the
    checkpoint ``checkpoint``, calibrated there if it is an FP one. ``key``
    is the content key of both (None: not computable, a dry run)."""
    tc: TableConfig
    checkpoint: str
    key: Optional[str]


class Executor(Protocol):
    """What :class:`~.runner.TableRunner` asks of a way to run a table. Each
    method returns what it computed (None in a dry run, which computes
    nothing) and records the commands that compute it. ``side_by_side``:
    whether several of its runs may share the machine, each in a forked child."""
    dry_run: bool
    side_by_side: bool

    def train(self, tc: TableConfig, parent: Optional[str], resume: bool) -> List[str]:
        """Train ``tc`` from ``parent`` (or resume); the commands."""

    def evaluate(self, info: RowInfo, tc: TableConfig, checkpoint: str) -> Optional[RowRecord]:
        """A row: ``tc`` evaluated on ``checkpoint`` (calibrated first if FP
        and ``tc`` is quantized)."""

    def evaluate_calibrated(self, info: RowInfo, calibration: Calibration, ratios: Ratios,
                            row_tc: TableConfig) -> Optional[RowRecord]:
        """A row: ``calibration``'s model at ``ratios`` (``row_tc``: the
        calibration's config at those ratios, in the row's folder)."""

    def search(self, search: Search, calibration: Calibration, settings: SearchSettings, key: str,
               out_dirs: Dict[str, str]) -> List[RowRecord]:
        """``search`` on ``calibration``'s model, then its rows (named as
        ``search.row_names()``, each in its ``out_dirs`` folder) on val."""


class Prepared(NamedTuple):
    """A quantized model, calibrated or checked, ready to evaluate at any ratios."""
    runner: Runner
    loop: PTQLoop
    val: RatioEvaluator


class LocalExecutor:
    """Trains and evaluates in this process with mmengine's ``Runner``; rows
    that share a calibration share one calibrated model (the last
    :attr:`KEPT` calibrations stay in memory, keyed on all their inputs)."""

    dry_run = False
    side_by_side = True
    KEPT = 2

    def __init__(self, table: Table) -> None:
        self.table = table
        self.prepared: 'OrderedDict[str, Prepared]' = OrderedDict()

    def train(self, tc: TableConfig, parent: Optional[str], resume: bool) -> List[str]:
        cfg = copy.deepcopy(tc.cfg)
        cfg.resume, cfg.load_from = (True, None) if resume else (False, parent)
        build_runner(cfg, dataloaders=('train_dataloader', 'val_dataloader')).train()
        return [shlex.join(tool_command('train', train_args(tc, parent, resume), 1))]

    def evaluate(self, info: RowInfo, tc: TableConfig, checkpoint: str) -> RowRecord:
        check_method(info, tc)
        cfg = copy.deepcopy(tc.cfg)
        cfg.load_from, cfg.resume = checkpoint, False
        runner = build_runner(cfg, dataloaders=('test_dataloader', ))
        start = time.time()
        metrics = runner.test()
        calib = runner.test_loop.num_calib_images if is_quantized(tc) else 0
        record = row_record(info.name, info.method, unwrap(runner.model), metrics, info.model,
                            info.base, calib, self.table.img_shape,
                            time.time() - start, execution(tc))
        record.commands = [shlex.join(tool_command('test', test_args(tc, checkpoint), 1))]
        return record

    def prepare(self, calibration: Calibration) -> Prepared:
        """``calibration``'s model, calibrated (FP checkpoint) or checked."""
        tc, checkpoint = calibration.tc, calibration.checkpoint
        key = calibration.key or fingerprint(tc.cfg, checkpoint, '')
        if key in self.prepared:
            self.prepared.move_to_end(key)
            return self.prepared[key]
        while len(self.prepared) >= self.KEPT:
            self.prepared.popitem(last=False)
        print(f'[table] {osp.basename(tc.work_dir)}: calibrating {osp.basename(tc.path)} on '
              f'{checkpoint} (or checking it)')
        cfg = copy.deepcopy(tc.cfg)
        cfg.load_from, cfg.resume = checkpoint, False
        runner = build_runner(cfg, dataloaders=('test_dataloader', ))
        loop = prepare_test_loop(runner)
        val = RatioEvaluator(
            loop.model,
            loop.dataloader.dataset,
            batch_size=self.table.eval_batch,
            metrics=('bbox', 'segm'))
        self.prepared[key] = Prepared(runner, loop, val)
        return self.prepared[key]

    def evaluate_at(self, info: RowInfo, calibration: Calibration, candidate: Candidate,
                    out_dir: str) -> RowRecord:
        """A row: ``calibration``'s model at ``candidate``'s ratios on val
        (detections kept in ``out_dir``)."""
        check_method(info, calibration.tc)
        prepared = self.prepare(calibration)
        start = time.time()
        os.makedirs(out_dir, exist_ok=True)
        metrics = prepared.val.evaluate(candidate, outfile_prefix=osp.join(out_dir, 'preds'))
        return row_record(info.name, info.method, prepared.val.model, metrics, info.model,
                          info.base, prepared.loop.num_calib_images, self.table.img_shape,
                          time.time() - start, execution(calibration.tc))

    def evaluate_calibrated(self, info: RowInfo, calibration: Calibration, ratios: Ratios,
                            row_tc: TableConfig) -> RowRecord:
        num_pairs = self.prepare(calibration).val.backbone.num_pairs
        record = self.evaluate_at(info, calibration, ratios.candidate(num_pairs), row_tc.work_dir)
        calibrated = osp.join(calibration.tc.work_dir, 'calibrated.pth')
        record.commands = [
            shlex.join(tool_command('test', test_args(calibration.tc, calibration.checkpoint), 1)),
            shlex.join(tool_command('test', test_args(row_tc, calibrated), 1))
        ]
        return record

    def search(self, search: Search, calibration: Calibration, settings: SearchSettings, key: str,
               out_dirs: Dict[str, str]) -> List[RowRecord]:
        """NSGA-II on the search split, then the chosen points (and the uniform
        ratios) on val."""
        tc = calibration.tc
        check_search_config(tc.cfg, tc.path)
        prepared = self.prepare(calibration)
        model = prepared.val.model
        evaluator = search_evaluator(prepared.loop, tc.cfg.search_dataloader, settings.images)
        check_branches_calibrated(model.backbone)
        space = ratio_space(model.backbone.num_pairs, prune=search.prune)
        print(f'[table] {search.name}: NSGA-II ({settings.pop} x {settings.gens}, '
              f'{search.objective} objective on {evaluator.num_images} search images, '
              f'{space.num_genes} genes) for {list(search.targets)}x +- '
              f'{self.table.search_tolerance}')
        start = time.time()
        os.makedirs(tc.work_dir, exist_ok=True)
        result, chosen = run_search(
            evaluator,
            space,
            search.objective,
            list(search.targets),
            self.table.search_tolerance,
            pop_size=settings.pop,
            generations=settings.gens,
            cache_path=osp.join(tc.work_dir, f'search_cache_{key}.json'))
        seconds = time.time() - start
        records = []
        for target, rows in searched_rows(evaluator, chosen).items():
            print(f'[table] {search.name}: searched in {seconds / 60:.1f} min '
                  f'({len(result.evaluations)} candidates): low-bit ratios '
                  f'{list(rows.searched.low_bit_ratios)}, prune ratios '
                  f'{list(rows.searched.prune_ratios)} for {target:g}x; uniform ratio '
                  f'{rows.uniform.low_bit_ratios[0]:g}')
            note = f'Searched by the {self.table.name} table for {target:g}x'
            write_searched_config(tc.path, rows.searched,
                                  osp.join(tc.work_dir, f'searched_{target:g}x.py'), note + '.')
            write_searched_config(tc.path, rows.uniform,
                                  osp.join(tc.work_dir, f'uniform_{target:g}x.py'),
                                  note + ': the one ratio on every pair of equal or lower speedup.')
            for name, candidate in search_row_names(search, target, rows.searched, rows.uniform):
                info = RowInfo(name, search.method, search.model, search.base)
                record = self.evaluate_at(info, calibration, candidate, out_dirs[name])
                record.search_seconds = round(seconds, 1)
                record.search_candidates = len(result.evaluations)
                records.append(record)
        return records


def search_row_names(search: Search, target: float, searched: T, uniform: T) -> List[Tuple[str, T]]:
    """(row name, what it is evaluated at) of a search's rows at ``target``:
    the searched point, and the uniform ratio if the search reports it."""
    rows = [(f'{search.name}_{target:g}x', searched)]
    if search.uniform_name:
        rows.append((f'{search.uniform_name}_{target:g}x', uniform))
    return rows


class LaunchExecutor:
    """Runs each step as the project's tool on ``gpus`` devices (``gpus`` <= 1:
    one process) in the repository; ``dry_run`` prints the commands
    instead. A row's metrics are read from the log mmengine writes for the
    test run (``<work_dir>/<timestamp>/<timestamp>.json``), its calibration
    count from the meta of the calibrated checkpoint, its BitOPs from the
    model built from the same config."""

    side_by_side = False

    def __init__(self, table: Table, gpus: int, dry_run: bool = False) -> None:
        if gpus < 0:
            raise ValueError(f'--gpus must be 0 (CPU), 1 or more, got {gpus}')
        self.table, self.gpus, self.dry_run = table, gpus, dry_run

    def launch(self, tool: str, args: List[str], log_dir: str) -> str:
        """Run ``tools/<tool>`` with ``args`` (output in ``<log_dir>/<tool>.log``);
        return the command as printed."""
        argv = tool_command(tool, args, self.gpus, sys.executable)
        printed = shlex.join(tool_command(tool, args, self.gpus))
        print(f'[table] $ {printed}', flush=True)
        if self.dry_run:
            return printed
        os.makedirs(log_dir, exist_ok=True)
        env = dict(os.environ, PYTHON=sys.executable)
        with open(osp.join(log_dir, f'{tool}.log'), 'w') as log:
            done = subprocess.run(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            with open(osp.join(log_dir, f'{tool}.log'), errors='replace') as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f'{printed} failed (exit {done.returncode}); the end of '
                               f'{osp.join(log_dir, tool + ".log")}:\n{tail}')
        return printed

    def train(self, tc: TableConfig, parent: Optional[str], resume: bool) -> List[str]:
        return [self.launch('train', train_args(tc, parent, resume), tc.work_dir)]

    def evaluate(self, info: RowInfo, tc: TableConfig, checkpoint: str) -> Optional[RowRecord]:
        check_method(info, tc)
        start = time.time()
        command = self.launch('test', test_args(tc, checkpoint), tc.work_dir)
        if self.dry_run:
            return None
        metrics = read_test_metrics(tc.work_dir)
        calib = 0
        if osp.basename(checkpoint) == 'calibrated.pth':
            calib = calibrated_images(checkpoint)
        elif info.method == 'PTQ':  # the FP model was calibrated by this run
            calib = calibrated_images_in(tc.work_dir)
        init_default_scope(tc.cfg.get('default_scope', 'mmdet'))
        model = MODELS.build(copy.deepcopy(tc.cfg.model))
        record = row_record(info.name, info.method, model, metrics, info.model, info.base, calib,
                            self.table.img_shape,
                            time.time() - start, execution(tc))
        record.commands = [command]
        return record

    def calibrate(self, calibration: Calibration) -> Tuple[str, str]:
        """Calibrate with ``tools/test.py`` (which saves ``calibrated.pth``)
        unless it was for the same inputs; the calibrated checkpoint and the
        command."""
        tc, checkpoint, key = calibration
        calibrated = osp.join(tc.work_dir, 'calibrated.pth')
        record = osp.join(tc.work_dir, CALIBRATION_KEY_FILE)
        command = shlex.join(tool_command('test', test_args(tc, checkpoint), self.gpus))
        if key is not None and osp.isfile(calibrated) and osp.isfile(record):
            with open(record) as f:
                if f.read() == key:
                    return calibrated, command
        command = self.launch('test', test_args(tc, checkpoint), tc.work_dir)
        if key is not None:
            with open(record, 'w') as f:
                f.write(key)
        return calibrated, command

    def evaluate_calibrated(self, info: RowInfo, calibration: Calibration, ratios: Ratios,
                            row_tc: TableConfig) -> Optional[RowRecord]:
        calibrated, command = self.calibrate(calibration)
        record = self.evaluate(info, row_tc, calibrated)
        if record is not None:
            record.commands.insert(0, command)
        return record

    def search(self, search: Search, calibration: Calibration, settings: SearchSettings, key: str,
               out_dirs: Dict[str, str]) -> List[RowRecord]:
        """``tools/search_ratios.py`` on the search split (its cache resumes),
        then ``tools/test.py`` on each config it wrote, on the model the
        search calibrated (PTQ) or the given one (QAT)."""
        tc, checkpoint, _ = calibration
        args = search_args(tc, checkpoint, search, settings, self.table.search_tolerance)
        command = self.launch('search', args, tc.work_dir)
        model = osp.join(tc.work_dir, 'calibrated.pth') if search.method == 'PTQ' else checkpoint
        ratio_keys = {k for k, _ in Ratios().options()}
        # the written configs set the ratios
        options = tuple((k, v) for k, v in tc.options if k not in ratio_keys)
        records = []
        for target in search.targets:
            configs = search_row_names(search, target, f'searched_{target:g}x.py',
                                       f'uniform_{target:g}x.py')
            for name, config in configs:
                row_options = options + (
                    ('test_evaluator.outfile_prefix', osp.join(out_dirs[name], 'preds')), )
                path = osp.join(tc.work_dir, config)
                if self.dry_run:
                    cli = [format_option(k, v) for k, v in row_options]
                    self.launch('test',
                                [path, model, '--work-dir', out_dirs[name], '--cfg-options', *cli],
                                out_dirs[name])
                    continue
                row_tc = TableConfig(path, out_dirs[name], self.table.data_root, row_options)
                info = RowInfo(name, search.method, search.model, search.base)
                record = self.evaluate(info, row_tc, model)
                record.commands.insert(0, command)
                records.append(record)
        return records


def read_test_metrics(work_dir: str) -> Dict[str, float]:
    """The metrics of the newest test run in ``work_dir`` (mmengine's JSON log)."""
    logs = sorted(glob.glob(osp.join(work_dir, '[0-9]*_[0-9]*', '[0-9]*_[0-9]*.json')))
    if not logs:
        raise FileNotFoundError(f'no test log (<timestamp>/<timestamp>.json) in {work_dir}')
    with open(logs[-1]) as f:
        return json.load(f)


def calibrated_images_in(work_dir: str) -> int:
    """The images of the calibration a test run saved in ``work_dir``
    (``calibrated.pth``; 0: it saved none)."""
    path = osp.join(work_dir, 'calibrated.pth')
    return calibrated_images(path) if osp.isfile(path) else 0
