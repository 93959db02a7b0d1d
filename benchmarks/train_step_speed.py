"""Cost of a QAT training step against an FP one, side by side in one run.

    python benchmarks/train_step_speed.py [--models benchmark full]
        [--repeats N] [--warmup N] [--threads T] [--device cpu|cuda]
        [--json out.json] [--check]

One training step is the forward with losses, the backward and an AdamW step
of a whole Mask R-CNN, built from the project's configs with random weights
(same seed, the FP weights loaded into the quantized models) on random images
with 3 random objects each (``mmdet.testing.demo_mm_inputs``):

- ``benchmark``: the embedded benchmark detector (nano Swin), batch 4, 320x320;
- ``full``: Swin-T Mask R-CNN of ``configs/mixaq/``, batch 2, 800x1333.

Variants, each from its config:

- ``fp``: the FP config (mmdet's Swin), the reference;
- ``qat``: uniform W4A4 LSQ QAT (``qat_uniform_w4a4``);
- ``saqa``: SAQA W4 A4/A2 (``qat_saqa_w4a4a2``), its low-bit ratios drawn for
  every step by the config's ``SAQAHook`` as in training.

The quantizers are calibrated by min/max on one image first (the calibration
method only picks the qparams; the step being timed is the same).

Each round times every variant once, in a rotating order, after ``--warmup``
untimed rounds; the table shows the median time and the median over rounds of
the time's ratio to ``fp`` in the same round (a slow spell of the shared
machine slows both sides of a round, so it cancels). Peak memory of a step:
on CUDA ``torch.cuda.max_memory_allocated``; on CPU the rise of the resident
set during a step, measured in a fresh process per variant (see
:func:`peak_memory_cpu`), against the same for ``fp``.

``--check`` exits 1 if a target of ``TARGETS`` misses: on CPU, ``qat`` <=
1.25x of ``fp`` on ``benchmark`` and <= 1.3x on ``full``, ``saqa`` <= 1.35x on
both; peak memory <= 1.3x of ``fp`` for both variants.
"""
import warnings

# Before anything imports it: the pinned stack's deprecation of setuptools'
# pkg_resources (mmengine's package checks); every other warning still shows.
warnings.filterwarnings('ignore', 'pkg_resources is deprecated as an API', UserWarning)

import argparse
import copy
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules
from mmengine.config import Config
from torch import nn

from mixaq_mmdet.engine.hooks import SAQAHook
from mixaq_mmdet.quantization import enable_calibration, finish_calibration, quantizers_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Model:
    """A detector to time: its configs, batch and image size."""
    configs: Dict[str, str]
    batch: int
    shape: Tuple[int, int]


MODELS_TIMED = {
    'benchmark':
    Model(
        dict(
            fp='configs/benchmark/mask-rcnn_swin-nano-p4-w7_fpn_shapes.py',
            qat='configs/benchmark/qat/qat_uniform_w4a4_shapes.py',
            saqa='configs/benchmark/qat/qat_saqa_w4a4a2_shapes.py'),
        batch=4,
        shape=(320, 320)),
    'full':
    Model(
        dict(
            fp='configs/mixaq/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py',
            qat='configs/mixaq/qat/qat_uniform_w4a4_swin-t_coco.py',
            saqa='configs/mixaq/qat/qat_saqa_w4a4a2_swin-t_coco.py'),
        batch=2,
        shape=(800, 1333)),
}
REFERENCE = 'fp'
#: Largest ratio to ``fp`` per (device, model, variant, measure).
TARGETS = {
    ('cpu', 'benchmark', 'qat', 'time'): 1.25,
    ('cpu', 'full', 'qat', 'time'): 1.3,
    ('cpu', 'benchmark', 'saqa', 'time'): 1.35,
    ('cpu', 'full', 'saqa', 'time'): 1.35,
    ('cpu', 'benchmark', 'qat', 'memory'): 1.3,
    ('cpu', 'full', 'qat', 'memory'): 1.3,
    ('cpu', 'benchmark', 'saqa', 'memory'): 1.3,
    ('cpu', 'full', 'saqa', 'memory'): 1.3,
}


class Variant:
    """A model, its optimizer and the ratios it trains at each step."""

    def __init__(self, name: str, config: str, fp_state: Optional[dict], batch: Dict,
                 device: torch.device) -> None:
        cfg = Config.fromfile(os.path.join(REPO, config))
        cfg.model.backbone.init_cfg = None  # random weights; nothing downloads
        torch.manual_seed(0)
        self.name = name
        self.model: nn.Module = MODELS.build(cfg.model).to(device)
        if fp_state is not None:
            self.model.load_state_dict(fp_state, strict=False)
        self.saqa = self._saqa_hook(cfg)
        if quantizers_of(self.model):
            self._calibrate(batch)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-6)
        self.iteration = 0

    @staticmethod
    def _saqa_hook(cfg: Config) -> Optional[SAQAHook]:
        for hook in cfg.get('custom_hooks', []):
            if hook['type'] == 'SAQAHook':
                # no runner here to give its seed: the draws of seed 0
                return SAQAHook(**{'seed': 0, **{k: v for k, v in hook.items() if k != 'type'}})
        return None

    def _calibrate(self, batch: Dict) -> None:
        for module in self.model.modules():
            if getattr(module, 'calib', None) == 'percentile_mse':
                module.calib = 'minmax'
        backbone = self.model.backbone
        self.model.eval()
        enable_calibration(self.model)
        if self.saqa is not None:  # both branches see data
            backbone.set_ratios(0.5, 0.0)
        one = dict(inputs=batch['inputs'][:1], data_samples=batch['data_samples'][:1])
        with torch.no_grad():
            self.model(**self.model.data_preprocessor(one, False), mode='tensor')
        # a branch no window reached (the low one at ratio 0) stays uncalibrated
        finish_calibration(self.model, strict=False)

    def step(self, batch: Dict) -> None:
        model = self.model
        if self.saqa is not None:
            model.backbone.set_ratios(*self.saqa.ratios(model.backbone.num_pairs, self.iteration))
        self.iteration += 1
        model.train()
        data = model.data_preprocessor(copy.copy(batch), True)
        loss, _ = model.parse_losses(model(**data, mode='loss'))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


def synthetic_batch(model: Model) -> Dict:
    torch.manual_seed(0)
    packed = demo_mm_inputs(
        model.batch, [(3, ) + model.shape] * model.batch,
        num_items=[3] * model.batch,
        num_classes=4,
        with_mask=True)
    return dict(inputs=list(packed['inputs']), data_samples=packed['data_samples'])


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def peak_memory(variant: Variant, batch: Dict, device: torch.device) -> int:
    """Bytes a step holds at its peak beyond the model, its gradients and AdamW
    state included: on CUDA the allocator's peak over two steps (the first
    allocates gradients and AdamW state)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    for _ in range(2):
        variant.step(batch)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


#: glibc's malloc returns blocks of this size or more to the system when they
#: are freed, so the resident set follows the live tensors.
MMAP_THRESHOLD = 64 * 1024


def peak_memory_cpu(model: str, variant: str, threads: int) -> int:
    """On CPU, which keeps no allocator statistics: the rise of the resident set
    during the second step of a fresh process that built only ``variant``,
    above the resident set before it, plus the gradients and the two AdamW
    moments of every parameter (resident before the step, so not in the
    rise). What autograd saves, the transient buffers of every kernel and what
    the recomputation of quantized activations allocates are all in it. The
    first step allocates the state and compiles the fused kernels."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    out = subprocess.run([
        sys.executable,
        os.path.abspath(__file__), '--memory-of', model, variant, '--threads',
        str(threads)
    ],
                         env=env,
                         capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(f'the memory run of {model}/{variant} failed:\n{out.stderr[-3000:]}')
    return int(json.loads(out.stdout.strip().splitlines()[-1])['bytes'])


def _status_kb(field: str) -> int:
    with open('/proc/self/status') as f:
        return int(re.search(rf'^{field}:\s+(\d+) kB', f.read(), re.M).group(1)) * 1024


def memory_run(model: str, variant: str) -> None:
    """The child of :func:`peak_memory_cpu`: prints the bytes as JSON."""
    spec = MODELS_TIMED[model]
    batch = synthetic_batch(spec)
    cpu = torch.device('cpu')
    fp_state = None
    if variant != REFERENCE:  # the same weights as the timed runs
        fp_state = Variant(REFERENCE, spec.configs[REFERENCE], None, batch, cpu).model.state_dict()
    v = Variant(variant, spec.configs[variant], fp_state, batch, cpu)
    v.step(batch)
    gc.collect()
    before = _status_kb('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # restart the peak (VmHWM) from the current resident set
    v.step(batch)
    rise = _status_kb('VmHWM') - before
    params = sum(p.numel() * p.element_size() for p in v.model.parameters() if p.requires_grad)
    print(json.dumps(dict(bytes=rise + 3 * params)))


def measure(name: str, spec: Model, repeats: int, warmup: int, device: torch.device) -> List[dict]:
    batch = synthetic_batch(spec)
    variants: List[Variant] = []
    fp_state = None
    for variant, config in spec.configs.items():
        v = Variant(variant, config, fp_state, batch, device)
        if fp_state is None:
            fp_state = v.model.state_dict()
        variants.append(v)
    if device.type == 'cuda':
        memory = {v.name: peak_memory(v, batch, device) for v in variants}
    else:
        memory = {v.name: peak_memory_cpu(name, v.name, torch.get_num_threads()) for v in variants}
    times: Dict[str, List[float]] = {v.name: [] for v in variants}
    for round_index in range(warmup + repeats):
        shift = round_index % len(variants)
        for v in variants[shift:] + variants[:shift]:
            seconds = timed(lambda: v.step(batch), device)
            if round_index >= warmup:
                times[v.name].append(seconds)
    rows = []
    for v in variants:
        ratios = [a / b for a, b in zip(times[v.name], times[REFERENCE])]
        rows.append(
            dict(
                model=name,
                variant=v.name,
                batch=spec.batch,
                shape=f'{spec.shape[0]}x{spec.shape[1]}',
                seconds=statistics.median(times[v.name]),
                ratio=statistics.median(ratios),
                memory_mb=memory[v.name] / 2**20,
                memory_ratio=memory[v.name] / memory[REFERENCE]))
    return rows


def check(rows: Sequence[dict], device: str) -> List[str]:
    """The missed targets, as lines."""
    missed = []
    for row in rows:
        for measure_name, key in (('time', 'ratio'), ('memory', 'memory_ratio')):
            limit = TARGETS.get((device, row['model'], row['variant'], measure_name))
            if limit is not None and row[key] > limit:
                missed.append(f"{row['model']}/{row['variant']} {measure_name}: "
                              f"{row[key]:.2f}x > {limit}x")
    return missed


def format_table(rows: Sequence[dict], device: str) -> str:
    lines = [
        '| model | variant | batch | shape | s/step | ratio | peak memory | '
        'memory ratio | target |', '|---|---|---|---|---|---|---|---|---|'
    ]
    for row in rows:
        limits = [
            f'{m} <= {TARGETS[(device, row["model"], row["variant"], m)]}x'
            for m in ('time', 'memory') if (device, row['model'], row['variant'], m) in TARGETS
        ]
        lines.append(f"| {row['model']} | {row['variant']} | {row['batch']} | "
                     f"{row['shape']} | {row['seconds']:.3f} | {row['ratio']:.2f}x | "
                     f"{row['memory_mb']:.0f} MB | {row['memory_ratio']:.2f}x | "
                     f"{', '.join(limits) or '-'} |")
    return '\n'.join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--models', nargs='+', choices=list(MODELS_TIMED), default=list(MODELS_TIMED))
    parser.add_argument('--repeats', type=int, default=3, help='timed rounds')
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds first')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--json', default=None, help='write the rows to this file')
    parser.add_argument('--check', action='store_true', help='exit 1 if a target is missed')
    parser.add_argument(
        '--memory-of', nargs=2, metavar=('MODEL', 'VARIANT'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error(f'--repeats must be >= 1 and --warmup >= 0, got {args.repeats} '
                     f'and {args.warmup}')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    register_all_modules()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        memory_run(*args.memory_of)
        return 0
    device = torch.device(args.device)
    rows = []
    for name in args.models:
        rows += measure(name, MODELS_TIMED[name], args.repeats, args.warmup, device)
    print(format_table(rows, device.type))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(
                dict(device=device.type, threads=torch.get_num_threads(), rows=rows), f, indent=1)
    missed = check(rows, device.type)
    for line in missed:
        print(f'MISSED {line}')
    return 1 if args.check and missed else 0


if __name__ == '__main__':
    sys.exit(main())
