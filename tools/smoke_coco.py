"""Run every config of ``configs/mixaq/`` at full size on CPU (``make smoke-coco``).

The data is a COCO-layout fixture (:mod:`mixaq_mmdet.datasets.coco_fixture`:
COCO's 80 category ids, 640x480 / 480x640 images, a train2017 file listing 2000
images of which the first few are written) and the checkpoint a random-weight
one in the official 3x release's format
(:mod:`mixaq_mmdet.utils.official_checkpoint`). The model is the real Swin-T
Mask R-CNN at 800x1333. Each config runs as a user runs it:

- FP configs (``configs/mixaq/*.py``): ``tools/test.py`` on the val images;
- PTQ configs (``ptq/``): ``tools/test.py``, calibrating on 2 train images;
- QAT configs (``qat/qat_*.py``): ``tools/train.py`` from their ``load_from``
  (the official checkpoint, or this smoke's checkpoint of the config their
  ``load_from`` names), calibrating on 1 train image, for 1 iteration (an
  epoch, saved), then ``--resume`` for 1 more and the val loop on 1 image;
- QAT evaluation rows (``qat/mixaq_*.py``): ``tools/test.py`` on the
  checkpoint of the QAT config they inherit;
- ``tools/search_ratios.py`` with ``--objective map`` and ``proxy`` (one
  generation on 3 images) on the calibrated 1.35x PTQ model.

A config no rule covers is an error. Each step is the command line it prints,
run in a child forked from this process (the imports are paid once; the child
imports nothing new and computes nothing before it forks), in ``--work-dir`` so
that the configs' ``data_root`` (``data/coco/``) is the fixture. Per step: wall
seconds, seconds per image or iteration (mmengine's logged ``time``),
calibration seconds and peak host memory (the child's maxrss, its dataloader
workers included as a max). The table is printed and written to
``<work-dir>/smoke.json``; any failed step makes the exit status 1.

    python tools/smoke_coco.py [--work-dir work_dirs/smoke_coco] [--only PATTERN ...]
"""
import argparse
import fnmatch
import glob
import json
import os
import os.path as osp
import re
import runpy
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

# Every module the tools import, imported before the first fork.
import mmdet.engine.hooks.utils  # noqa: F401
import mmdet.evaluation  # noqa: F401
import mmdet.models  # noqa: F401
import mmdet.utils  # noqa: F401
from mmengine.config import Config

import mixaq_mmdet  # noqa: F401  (stack fixes, registries)
import mixaq_mmdet.search  # noqa: F401
from mixaq_mmdet.datasets import generate_coco_fixture
from mixaq_mmdet.utils.official_checkpoint import write_official_checkpoint

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(REPO, 'configs', 'mixaq')

#: Fixture sizes: PTQ calibrates on 2 of the written train images, the search
#: takes 3 of the others; QAT calibrates on 1 and trains on the first (batch 1:
#: an iteration an epoch), validating on 1 val image at the end of the resumed
#: run only. A full-size QAT iteration costs 15-25 s on 2 cores: one before and
#: one after the resume show what a user's run does.
NUM_TRAIN_FILES = 6
NUM_VAL = 2
CALIB_IMAGES = 2
QAT_CALIB_IMAGES = 1
TRAIN_IMAGES = 1
QAT_VAL_IMAGES = 1
SEARCH_IMAGES = 3
VAL_EPOCH = 2
#: The PTQ config the search runs on (its calibrated checkpoint).
SEARCH_CONFIG = 'ptq/ptq_mixaq_w4a8a4-1.35x_swin-t_coco.py'
#: A step running longer than this is killed and fails.
STEP_TIMEOUT_S = 900

KINDS = {
    'fp': 'configs/mixaq/*.py: tools/test.py',
    'ptq': 'configs/mixaq/ptq/*.py: tools/test.py, calibrating',
    'qat': 'configs/mixaq/qat/qat_*.py: tools/train.py, then --resume',
    'qat-eval': 'configs/mixaq/qat/mixaq_*.py: tools/test.py on a QAT checkpoint',
}


@dataclass
class Step:
    """One command line of the smoke and what it reports."""
    name: str
    tool: str
    args: List[str]
    unit: str  # what ``count`` counts: 'image' or 'iteration'
    count: int
    work_dir: str
    needs: List[str] = field(default_factory=list)  # names of steps run before

    def command(self) -> str:
        return ' '.join(['python', osp.relpath(self.tool, REPO)] + self.args)


@dataclass
class Result:
    """What a step measured."""
    name: str
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


def kind_of(rel: str) -> str:
    """The rule of a config (path relative to configs/mixaq)."""
    folder, name = osp.split(rel)
    if folder == '':
        return 'fp'
    if folder == 'ptq':
        return 'ptq'
    if folder == 'qat' and name.startswith('qat_'):
        return 'qat'
    if folder == 'qat' and name.startswith('mixaq_'):
        return 'qat-eval'
    raise ValueError(f'configs/mixaq/{rel}: the smoke has no rule for it; rules: '
                     + '; '.join(KINDS.values()))


def base_of(path: str) -> Optional[str]:
    """The ``_base_`` file a config inherits (absolute), if it names one."""
    with open(path) as f:
        match = re.search(r"^_base_\s*=\s*['\"]([^'\"]+)['\"]", f.read(), re.M)
    return osp.normpath(osp.join(osp.dirname(path), match.group(1))) if match else None


def trained_by(path: str) -> str:
    """The QAT config (relative) that trains the model an evaluation row tests:
    the nearest ``qat/qat_*.py`` it inherits."""
    parent = base_of(path)
    while parent is not None:
        rel = osp.relpath(parent, CONFIGS)
        if kind_of(rel) == 'qat':
            return rel
        parent = base_of(parent)
    raise ValueError(f'{path} inherits no configs/mixaq/qat/qat_*.py: the smoke cannot '
                     'tell which trained checkpoint it evaluates')


def train_options(cfg: Config, max_epochs: int) -> List[str]:
    """Overrides that make a QAT config train ``TRAIN_IMAGES`` iterations an
    epoch, validate on ``QAT_VAL_IMAGES`` after epoch ``VAL_EPOCH`` and
    calibrate its QATInitHook on the written train images."""
    options = ['train_dataloader.batch_size=1',
               f'train_dataloader.dataset.indices={TRAIN_IMAGES}',
               f'train_cfg.max_epochs={max_epochs}', f'train_cfg.val_interval={VAL_EPOCH}',
               f'val_dataloader.dataset.indices={QAT_VAL_IMAGES}',
               'default_hooks.logger.interval=1']
    for index, hook in enumerate(cfg.get('custom_hooks', [])):
        if hook.get('type') == 'QATInitHook':
            options += [f'custom_hooks.{index}.calib_images={QAT_CALIB_IMAGES}',
                        f'custom_hooks.{index}.calib_dataloader.dataset.indices='
                        f'{NUM_TRAIN_FILES}']
    return options


def ptq_options() -> List[str]:
    return [f'test_cfg.calib_images={CALIB_IMAGES}',
            f'test_cfg.calib_dataloader.dataset.indices={NUM_TRAIN_FILES}']


def last_checkpoint(work_dir: str) -> str:
    return osp.join(work_dir, 'epoch_2.pth')


def plan(work: str, checkpoint: str) -> List[Step]:
    """Every step, each after the steps it needs."""
    test, train = osp.join(REPO, 'tools/test.py'), osp.join(REPO, 'tools/train.py')
    configs = sorted(osp.relpath(p, CONFIGS)
                     for p in glob.glob(osp.join(CONFIGS, '**', '*.py'), recursive=True))
    steps: Dict[str, Step] = {}
    pending = []
    for rel in configs:
        path, kind = osp.join(CONFIGS, rel), kind_of(rel)
        name = osp.splitext(rel)[0]
        work_dir = osp.join(work, 'work_dirs', name)
        common = ['--work-dir', work_dir, '--cfg-options']
        if kind == 'fp':
            steps[name] = Step(name, test, [path, checkpoint] + common[:2], 'image', NUM_VAL,
                               work_dir)
        elif kind == 'ptq':
            steps[name] = Step(name, test, [path, checkpoint] + common + ptq_options(),
                               'image', NUM_VAL, work_dir)
        elif kind == 'qat':
            pending.append((rel, name, path, work_dir))
        else:
            parent = osp.splitext(trained_by(path))[0]
            steps[name] = Step(name, test, [path, last_checkpoint(
                osp.join(work, 'work_dirs', parent))] + common[:2], 'image', NUM_VAL,
                work_dir, needs=[parent + ' --resume'])
    for rel, name, path, work_dir in pending:
        cfg = Config.fromfile(path)
        load_from, needs = cfg.get('load_from'), []
        if load_from is None:
            load_from = checkpoint
        else:
            match = re.fullmatch(r'work_dirs/([^/]+)/epoch_\d+\.pth', load_from)
            if match is None or not osp.isfile(osp.join(CONFIGS, 'qat', match.group(1) + '.py')):
                raise ValueError(f'configs/mixaq/{rel}: load_from={load_from!r} names no '
                                 'work_dirs/<qat config>/epoch_N.pth the smoke trains')
            parent = 'qat/' + match.group(1)
            load_from, needs = last_checkpoint(osp.join(work, 'work_dirs', parent)), [
                parent + ' --resume']
        steps[name] = Step(name, train, [path, '--work-dir', work_dir, '--cfg-options',
                                         f'load_from={load_from}'] + train_options(cfg, 1),
                           'iteration', TRAIN_IMAGES, work_dir, needs)
        steps[name + ' --resume'] = Step(
            name + ' --resume', train, [path, '--work-dir', work_dir, '--resume',
                                        '--cfg-options'] + train_options(cfg, 2),
            'iteration', TRAIN_IMAGES, work_dir, [name])
    search = osp.splitext(SEARCH_CONFIG)[0]
    calibrated = osp.join(work, 'work_dirs', search, 'calibrated.pth')
    for objective in ('map', 'proxy'):
        name = f'search --objective {objective}'
        work_dir = osp.join(work, 'work_dirs', 'search', objective)
        steps[name] = Step(name, osp.join(REPO, 'tools/search_ratios.py'), [
            osp.join(CONFIGS, SEARCH_CONFIG), calibrated, '--work-dir', work_dir,
            '--objective', objective, '--pop', '4', '--gens', '1', '--search-images',
            str(SEARCH_IMAGES), '--no-val', '--cfg-options', *ptq_options(),
            f'search_dataloader.dataset.indices={NUM_TRAIN_FILES}'],
            'image', SEARCH_IMAGES, work_dir, [search])
    return ordered(steps)


def ordered(steps: Dict[str, Step]) -> List[Step]:
    """The steps with every step after those it needs."""
    done: Dict[str, Step] = {}

    def visit(name: str, chain: Sequence[str]) -> None:
        if name in done:
            return
        if name in chain:
            raise ValueError(f'the smoke steps depend on each other in a cycle: {chain}')
        for need in steps[name].needs:
            visit(need, list(chain) + [name])
        done[name] = steps[name]

    for name in sorted(steps):
        visit(name, [])
    return list(done.values())


def logged_time(log: str, mode: str) -> Optional[float]:
    """mmengine's last logged ``time`` of ``mode`` ('train': the mean over the
    epoch's iterations so far; 'test': the epoch's mean)."""
    times = re.findall(rf'Epoch\({mode}\).*?\btime: ([0-9.]+)', log)
    return float(times[-1]) if times else None


def calibration_seconds(log: str) -> Optional[float]:
    times = re.findall(r'calibrated \d+ quantizers on \d+ images .*? in ([0-9.]+) s', log)
    return sum(map(float, times)) if times else None


def run_forked(target: Callable[[], None], log_file: str, timeout_s: float):
    """Run ``target`` in a forked child with stdout and stderr to ``log_file``;
    return (ok, wall seconds, the child's resource usage, error)."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            # the streams too: a parent's sys.stdout may be no file of fd 1 (pytest)
            sys.stdout = open(1, 'w', buffering=1, closefd=False)
            sys.stderr = open(2, 'w', buffering=1, closefd=False)
            target()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = start + timeout_s
    while True:
        waited, status, usage = os.wait4(pid, os.WNOHANG)
        if waited == pid:
            break
        if time.perf_counter() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            return False, time.perf_counter() - start, usage, f'killed after {timeout_s} s'
        time.sleep(0.2)
    code = os.waitstatus_to_exitcode(status)
    return code == 0, time.perf_counter() - start, usage, '' if code == 0 else f'exit {code}'


def run_tool(tool: str, args: Sequence[str], cwd: str) -> Callable[[], None]:
    def target() -> None:
        os.chdir(cwd)
        sys.argv = [tool] + list(args)
        sys.path.insert(0, osp.dirname(tool))
        runpy.run_path(tool, run_name='__main__')
    return target


def run_step(step: Step, work: str) -> Result:
    os.makedirs(step.work_dir, exist_ok=True)
    log_file = osp.join(step.work_dir, re.sub(r'\W+', '_', step.name.split('/')[-1]) + '.log')
    ok, wall, usage, error = run_forked(run_tool(step.tool, step.args, work), log_file,
                                        STEP_TIMEOUT_S)
    with open(log_file, errors='replace') as f:
        log = f.read()
    if not ok:
        error = (error + '\n' + log[-3000:]).strip()
    calib = calibration_seconds(log)
    per_unit = logged_time(log, 'train' if step.unit == 'iteration' else 'test')
    if per_unit is not None and calib is not None and step.unit == 'image':
        # PTQLoop calibrates after before_test_epoch, where mmengine's iteration
        # timer starts: the first image's time holds the calibration
        per_unit = max(0.0, per_unit - calib / step.count)
    return Result(step.name, step.command(), ok, wall, usage.ru_maxrss / 1024, step.unit,
                  step.count, per_unit, calib, log_file, error)


def prepare_data(work: str) -> str:
    """The fixture under ``<work>/data/coco`` and the checkpoint; returns its path."""
    checkpoint = osp.join(work, 'mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_smoke.pth')

    def target() -> None:
        generate_coco_fixture(osp.join(work, 'data', 'coco'), num_train_files=NUM_TRAIN_FILES,
                              num_val=NUM_VAL)
        write_official_checkpoint(checkpoint)

    ok, wall, _, error = run_forked(target, osp.join(work, 'fixture.log'), STEP_TIMEOUT_S)
    if not ok:
        with open(osp.join(work, 'fixture.log')) as f:
            raise RuntimeError(f'writing the fixture failed ({error}):\n{f.read()[-3000:]}')
    print(f'fixture and checkpoint written in {wall:.1f} s', flush=True)
    return checkpoint


def format_table(results: Sequence[Result]) -> str:
    lines = ['| step | status | per image / iteration | calibration | wall | peak host memory |',
             '|---|---|---|---|---|---|']
    for r in results:
        per = (f'{r.s_per_unit:.1f} s/{r.unit} ({r.count})' if r.s_per_unit is not None
               else f'- ({r.count} {r.unit}s)')
        calib = f'{r.calib_s:.1f} s' if r.calib_s is not None else '-'
        lines.append(f'| {r.name} | {"ok" if r.ok else "FAILED"} | {per} | {calib} | '
                     f'{r.wall_s:.0f} s | {r.peak_rss_mb / 1024:.1f} GB |')
    return '\n'.join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/smoke_coco',
                        help='fixture, checkpoints and logs (emptied first)')
    parser.add_argument('--only', nargs='+', metavar='PATTERN',
                        help='run only the steps matching these patterns (and those they need)')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    work = osp.abspath(args.work_dir)
    if osp.isdir(work):
        shutil.rmtree(work)
    os.makedirs(work)
    start = time.perf_counter()
    checkpoint = prepare_data(work)
    steps = plan(work, checkpoint)
    if args.only:
        wanted = {s.name for s in steps if any(fnmatch.fnmatch(s.name, p) for p in args.only)}
        if not wanted:
            raise ValueError(f'--only {args.only} matches no step; steps: '
                             + ', '.join(s.name for s in steps))
        by_name = {s.name: s for s in steps}
        todo = list(wanted)
        while todo:
            for need in by_name[todo.pop()].needs:
                if need not in wanted:
                    wanted.add(need)
                    todo.append(need)
        steps = [s for s in steps if s.name in wanted]
    results: List[Result] = []
    failed = set()
    for step in steps:
        print(f'[{len(results) + 1}/{len(steps)}] {step.command()}', flush=True)
        if failed.intersection(step.needs):
            results.append(Result(step.name, step.command(), False, 0.0, 0.0, step.unit,
                                  step.count, None, None, '', 'a step it needs failed'))
        else:
            results.append(run_step(step, work))
        result = results[-1]
        if not result.ok:
            failed.add(step.name)
            print(f'    FAILED: {result.error}', flush=True)
        else:
            print(f'    ok in {result.wall_s:.0f} s, peak {result.peak_rss_mb / 1024:.1f} GB',
                  flush=True)
    table = format_table(results)
    total = time.perf_counter() - start
    print(f'\nCOCO configs at full size on CPU ({os.cpu_count()} cores, {NUM_VAL} val '
          f'images, PTQ calibration on {CALIB_IMAGES}), {total:.0f} s in all:\n'
          + table)
    with open(osp.join(work, 'smoke.json'), 'w') as f:
        json.dump(dict(total_s=total, cpus=os.cpu_count(),
                       results=[asdict(r) for r in results]), f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
