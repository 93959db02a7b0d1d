"""How a table's runs are carried out: in this process (:class:`LocalExecutor`,
the benchmark on one machine) or as the project's tools launched on ``gpus``
devices (:class:`LaunchExecutor`, COCO). Both are given the same configs by
:class:`~.runner.TableRunner` and return the same records; each run is also
written as the command a user would type (:func:`tool_command`)."""
import copy
import glob
import json
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
import time
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from mmdet.registry import MODELS
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from ..engine import prepare_test_loop, unwrap
from ..search import (Candidate, RatioEvaluator, RatioSearchSpace, check_branches_calibrated,
                      run_search, uniform_ratio_at, write_searched_config)
from ..utils import build_runner
from .configs import TableConfig, format_option
from .report import row_record
from .rows import Search, SearchSettings, Table

TOOLS = ('train', 'test', 'search')
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
        str(settings.images), '--no-val'
    ] + (['--prune'] if search.prune else []) + (['--cfg-options', *tc.cli_options()]
                                                 if tc.options else [])


def is_quantized(tc: TableConfig) -> bool:
    return tc.cfg.test_cfg.get('type') == 'PTQLoop'


def execution(tc: TableConfig) -> Optional[str]:
    """How ``tc``'s quantized model computes (``test_cfg.execution``)."""
    return tc.cfg.test_cfg.get('execution', 'fake_quant') if is_quantized(tc) else None


class Prepared(NamedTuple):
    """A quantized model, calibrated or checked, ready to evaluate at any ratios."""
    runner: Runner
    val: RatioEvaluator
    calib_images: int


class LocalExecutor:
    """Trains and evaluates in this process with mmengine's ``Runner``; rows
    that share a calibration share one calibrated model."""

    dry_run = False

    def __init__(self, table: Table) -> None:
        self.table = table
        self.prepared: Dict[tuple, Prepared] = {}

    def train(self, tc: TableConfig, parent: Optional[str], resume: bool) -> List[str]:
        cfg = copy.deepcopy(tc.cfg)
        cfg.resume, cfg.load_from = (True, None) if resume else (False, parent)
        build_runner(cfg, dataloaders=('train_dataloader', 'val_dataloader')).train()
        return [shlex.join(tool_command('train', train_args(tc, parent, resume), 1))]

    def evaluate(self, name: str, tc: TableConfig, checkpoint: str, trained: str,
                 base: str) -> Dict:
        cfg = copy.deepcopy(tc.cfg)
        cfg.load_from, cfg.resume = checkpoint, False
        runner = build_runner(cfg, dataloaders=('test_dataloader', ))
        start = time.time()
        metrics = runner.test()
        quantized = is_quantized(tc)
        calib = runner.test_loop.num_calib_images if quantized else 0
        record = row_record(name, unwrap(runner.model), metrics, trained, base, quantized, calib,
                            self.table.img_shape,
                            time.time() - start, execution(tc))
        record['commands'] = [shlex.join(tool_command('test', test_args(tc, checkpoint), 1))]
        return record

    def prepare(self, tc: TableConfig, checkpoint: str) -> Prepared:
        """``tc``'s model on ``checkpoint``, calibrated (FP) or checked, once per
        config, checkpoint and calibration setting."""
        backbone = tc.cfg.model.backbone
        key = (tc.path, checkpoint, backbone.window_score, backbone.window_order,
               str(backbone.get('low_bit_ratios')), str(backbone.get('prune_ratios')))
        if key not in self.prepared:
            print(f'[table] {osp.basename(tc.work_dir)}: calibrating '
                  f'{osp.basename(tc.path)} ({backbone.window_score}/{backbone.window_order}, '
                  f'low-bit ratios {backbone.get("low_bit_ratios")}) or checking {checkpoint}')
            cfg = copy.deepcopy(tc.cfg)
            cfg.load_from, cfg.resume = checkpoint, False
            runner = build_runner(cfg, dataloaders=('test_dataloader', ))
            loop = prepare_test_loop(runner)
            val = RatioEvaluator(
                loop.model,
                loop.dataloader.dataset,
                batch_size=self.table.eval_batch,
                metrics=('bbox', 'segm'))
            self.prepared[key] = Prepared(runner, val, loop.num_calib_images)
        return self.prepared[key]

    def evaluate_at(self, name: str, tc: TableConfig, checkpoint: str, candidate: Candidate,
                    out_dir: str, trained: str, base: str) -> Dict:
        """A row: ``tc``'s model calibrated as ``tc`` says, at ``candidate``'s
        ratios on val (detections kept in ``out_dir``)."""
        prepared = self.prepare(tc, checkpoint)
        start = time.time()
        os.makedirs(out_dir, exist_ok=True)
        metrics = prepared.val.evaluate(candidate, outfile_prefix=osp.join(out_dir, 'preds'))
        return row_record(name, prepared.val.model, metrics, trained, base, True,
                          prepared.calib_images, self.table.img_shape,
                          time.time() - start)

    def search(self, search: Search, tc: TableConfig, checkpoint: str, settings: SearchSettings,
               key: str, out_dirs: Dict[str, str]) -> List[Dict]:
        """NSGA-II on the search split, then the chosen points (and the uniform
        ratios) on val."""
        prepared = self.prepare(tc, checkpoint)
        model = prepared.val.model
        evaluator = RatioEvaluator(
            model,
            tc.cfg.search_dataloader.dataset,
            num_images=settings.images,
            batch_size=self.table.eval_batch)
        check_branches_calibrated(model.backbone)
        print(f'[table] {search.name}: NSGA-II ({settings.pop} x {settings.gens}, '
              f'{search.objective} objective on {evaluator.num_images} search images) for '
              f'{list(search.targets)}x +- {self.table.search_tolerance}')
        start = time.time()
        os.makedirs(tc.work_dir, exist_ok=True)
        result, chosen = run_search(
            evaluator,
            RatioSearchSpace(model.backbone.num_pairs),
            search.objective,
            list(search.targets),
            self.table.search_tolerance,
            pop_size=settings.pop,
            generations=settings.gens,
            cache_path=osp.join(tc.work_dir, f'search_cache_{key}.json'))
        seconds = time.time() - start
        records = []
        for target in search.targets:
            point = chosen[target]
            rows = [(f'{search.name}_{target:g}x', point.candidate)]
            if search.uniform_name:
                uniform = uniform_ratio_at(evaluator, evaluator.uniform_cost() / point.cost)
                rows.append((f'{search.uniform_name}_{target:g}x', uniform))
            print(f'[table] {search.name}: searched in {seconds / 60:.1f} min '
                  f'({len(result.evaluations)} candidates): low-bit ratios '
                  f'{list(point.candidate.low_bit_ratios)} for {target:g}x' +
                  (f'; uniform ratio {rows[1][1].low_bit_ratios[0]:g}' if len(rows) > 1 else ''))
            write_searched_config(
                tc.path,
                point.candidate,
                osp.join(tc.work_dir, f'searched_{target:g}x.py'),
                note=f'Searched by the {self.table.name} table for '
                f'{target:g}x.')
            for name, candidate in rows:
                record = self.evaluate_at(name, tc, checkpoint, candidate, out_dirs[name],
                                          search.model, search.base)
                record.update(
                    search_seconds=round(seconds, 1), search_candidates=len(result.evaluations))
                records.append(record)
        return records


class LaunchExecutor:
    """Runs each step as the project's tool on ``gpus`` devices (``gpus`` <= 1:
    one process) in the repository; ``dry_run`` prints the commands
    instead. A row's metrics are read from the log mmengine writes for the
    test run (``<work_dir>/<timestamp>/<timestamp>.json``), its BitOPs from the
    model built from the same config."""

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

    def evaluate(self, name: str, tc: TableConfig, checkpoint: str, trained: str,
                 base: str) -> Dict:
        start = time.time()
        command = self.launch('test', test_args(tc, checkpoint), tc.work_dir)
        if self.dry_run:
            return dict(name=name, commands=[command])
        metrics, calib = read_test_metrics(tc.work_dir), calibration_images(tc.work_dir)
        init_default_scope(tc.cfg.get('default_scope', 'mmdet'))
        model = MODELS.build(copy.deepcopy(tc.cfg.model))
        record = row_record(name, model, metrics, trained, base, is_quantized(tc), calib,
                            self.table.img_shape,
                            time.time() - start, execution(tc))
        record['commands'] = [command]
        return record

    def calibrate(self, tc: TableConfig, checkpoint: str, key: Optional[str]) -> Tuple[str, str]:
        """Calibrate ``checkpoint`` with ``tc`` (``tools/test.py`` saves
        ``calibrated.pth``) unless it was for the same inputs ``key``; the
        calibrated checkpoint and the command."""
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

    def search(self, search: Search, tc: TableConfig, checkpoint: str, settings: SearchSettings,
               key: str, out_dirs: Dict[str, str]) -> List[Dict]:
        """``tools/search_ratios.py`` on the search split (its cache resumes),
        then ``tools/test.py`` on each searched config."""
        if search.uniform_name:
            raise ValueError(f'{search.name}: the uniform-ratio rows of a search are '
                             'computed in process only; give the table a row with one ratio')
        args = search_args(tc, checkpoint, search, settings, self.table.search_tolerance)
        command = self.launch('search', args, tc.work_dir)
        records = []
        for target in search.targets:
            name = f'{search.name}_{target:g}x'
            searched = osp.join(tc.work_dir, f'searched_{target:g}x.py')
            calibration = dict(search.calib_options)  # the searched config sets the ratios
            options = tuple((k, v) for k, v in tc.options if k not in calibration) + (
                ('test_evaluator.outfile_prefix', osp.join(out_dirs[name], 'preds')), )
            if self.dry_run:
                cli = [format_option(k, v) for k, v in options]
                printed = self.launch(
                    'test',
                    [searched, checkpoint, '--work-dir', out_dirs[name], '--cfg-options', *cli],
                    out_dirs[name])
                records.append(dict(name=name, commands=[command, printed]))
                continue
            row_tc = TableConfig(searched, out_dirs[name], self.table.data_root, options)
            record = self.evaluate(name, row_tc, checkpoint, search.model, search.base)
            record['commands'].insert(0, command)
            records.append(record)
        return records


def read_test_metrics(work_dir: str) -> Dict[str, float]:
    """The metrics of the newest test run in ``work_dir`` (mmengine's JSON log)."""
    logs = sorted(glob.glob(osp.join(work_dir, '[0-9]*_[0-9]*', '[0-9]*_[0-9]*.json')))
    if not logs:
        raise FileNotFoundError(f'no test log (<timestamp>/<timestamp>.json) in {work_dir}')
    with open(logs[-1]) as f:
        return json.load(f)


def calibration_images(work_dir: str) -> int:
    """The images the newest run in ``work_dir`` calibrated on (0: none)."""
    logs = sorted(glob.glob(osp.join(work_dir, '[0-9]*_[0-9]*', '*.log')))
    if not logs:
        return 0
    with open(logs[-1], errors='replace') as f:
        found = re.findall(r'calibrated \d+ quantizers on (\d+) images', f.read())
    return int(found[-1]) if found else 0
