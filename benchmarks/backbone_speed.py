"""Backbone latency of MixA-Q's Swin against mmdet's, side by side in one run.

    python benchmarks/backbone_speed.py [--shapes 800x1216 320x320]
        [--batch-sizes 1 8] [--precisions fp32 bf16] [--compile]
        [--compile-mode MODE] [--repeats N] [--warmup N] [--threads T]
        [--device cpu|cuda] [--json out.json] [--check] [--tiny]

Full-size Swin-T (embed 96, depths 2-2-6-2, heads 3-6-12-24; ``--tiny``: the
benchmark's nano Swin) with random weights, eval, no_grad. A case is a
(shape, batch size, precision); ``bf16`` runs every variant, mmdet's too, under
``torch.autocast(device, torch.bfloat16)``. Variants, all with the same weights:

- ``mmdet_fp``: mmdet's SwinTransformer, the reference;
- ``mixaq_float``: MixAQSwinTransformer, quant=False, all ratios 0;
- ``mixaq_float_low0.5``: quant=False, low-bit ratio 0.5; in float both
  branches compute the same function, so it should cost what mmdet does;
- ``mixaq_twobranch_low0.5``: quant=False, low-bit ratio 0.5, on a copy whose
  low-branch LayerNorms (``norm1_low``/``norm2_low``) differ from the high
  ones (weights x1.01), so every block really runs two window groups: the cost
  of the split machinery without fake quantization;
- ``mixaq_fq_low0`` / ``mixaq_fq_low0.5``: fake quantization on (calibrated on
  one random image first), low-bit ratio 0 / 0.5. The quantizers calibrate by
  min/max unless ``--calib percentile_mse``: the calibration method only picks
  the qparams, the fake-quant forward being timed is the same, and min/max
  calibrates in seconds instead of minutes;
- ``mixaq_float_prune0.5``: quant=False, prune ratio 0.5 (half the windows skip
  every block).

``--compile`` also times, per variant, a compiled copy ``<variant>+compile``
(``nn.Module.compile``, ``dynamic=False``, mode ``reduce-overhead`` on cuda and
``default`` on cpu unless ``--compile-mode``); each copy gets its ratios once
before compiling, since the graph specializes on them. Compiled rows' ratios
are to ``mmdet_fp+compile`` (column ``ratio``) and to eager ``mmdet_fp``
(column ``vs eager``). Each compiled model is called twice per case before
timing (compilation, CUDA graph recording), untimed.

Each repeat times every row once, eager and compiled interleaved in a rotating
order, after ``--warmup`` untimed rounds, so machine noise hits all alike; the
table shows the median time and the median over rounds of the time's ratio to
the reference's in the same round (a paired ratio: a slow spell of the shared
machine slows both sides of a round, so it cancels). Fake
quantization simulates integer arithmetic in float, so its latency is an
overhead, not a speed-up.

``--check`` exits 1 if a target of ``TARGETS`` misses. All are fp32; a target
checks only rows the run has. On cpu, batch 1, eager: ``mixaq_float`` and
``mixaq_float_low0.5`` <= 1.05x, ``mixaq_twobranch_low0.5`` <= 1.10x,
``mixaq_fq_low0.5`` <= 1.6x at 800x1216 (2.0x at other shapes),
``mixaq_float_prune0.5`` <= 0.60x at 800x1216 (0.75x at other shapes). On
cuda, batch 1 and 8, eager: ``mixaq_float`` and ``mixaq_float_low0.5`` <=
1.05x, ``mixaq_fq_low0.5`` <= 1.5x; batch 1: ``mixaq_float_prune0.5`` < 1.0x,
``mixaq_fq_low0.5+compile`` <= 1.3x of ``mmdet_fp+compile``.
"""
import warnings

# Before anything imports it: the pinned stack's deprecation of setuptools'
# pkg_resources (mmengine's package checks); every other warning still shows.
warnings.filterwarnings('ignore', 'pkg_resources is deprecated as an API', UserWarning)

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from mmdet.models.backbones import SwinTransformer

from mixaq_mmdet.models import MixAQSwinTransformer, TwoBranchSwinBlock
from mixaq_mmdet.quantization import (CALIB_METHODS, DEFAULT_ACT_QUANTIZER,
                                      DEFAULT_WEIGHT_QUANTIZER, enable_calibration,
                                      finish_calibration)

SWIN_T = dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)
SWIN_NANO = dict(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7)
# (name, model, low-bit ratio, prune ratio); model 'mmdet' ignores the ratios.
VARIANTS = (
    ('mmdet_fp', 'mmdet', 0.0, 0.0),
    ('mixaq_float', 'float', 0.0, 0.0),
    ('mixaq_float_low0.5', 'float', 0.5, 0.0),
    ('mixaq_twobranch_low0.5', 'twobranch', 0.5, 0.0),
    ('mixaq_fq_low0', 'quant', 0.0, 0.0),
    ('mixaq_fq_low0.5', 'quant', 0.5, 0.0),
    ('mixaq_float_prune0.5', 'float', 0.0, 0.5),
)
REFERENCE = 'mmdet_fp'
COMPILED = '+compile'  # suffix of the compiled rows
# untimed calls per compiled model and case: the first compiles (and warms up
# CUDA graph trees), the second records the CUDA graph that timed calls replay
COMPILE_WARMUP_CALLS = 2
PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16}


@dataclass(frozen=True)
class Target:
    """A largest ratio to the case's reference for ``variant``'s rows on
    ``device`` at ``batches``, fp32. ``shapes`` None: every shape no other
    target of the same variant, device and batch names."""
    device: str
    variant: str
    limit: float
    what: str
    batches: Tuple[int, ...] = (1, )
    shapes: Optional[Tuple[str, ...]] = None
    strict: bool = False  # ratio < limit instead of <=


TARGETS = (
    Target('cpu', 'mixaq_float', 1.05, 'quant=False costs at most 5%'),
    Target('cpu', 'mixaq_float_low0.5', 1.05, 'quant=False costs at most 5% whatever the ratios'),
    Target('cpu', 'mixaq_twobranch_low0.5', 1.10,
           'splitting windows into two float groups costs at most 10%'),
    Target(
        'cpu',
        'mixaq_fq_low0.5',
        1.6,
        'fake-quant two-branch costs at most 1.6x',
        shapes=('800x1216', )),
    Target('cpu', 'mixaq_fq_low0.5', 2.0, 'fake-quant two-branch costs at most 2.0x'),
    Target(
        'cpu',
        'mixaq_float_prune0.5',
        0.60,
        'pruning half the windows saves at least 40%',
        shapes=('800x1216', )),
    Target('cpu', 'mixaq_float_prune0.5', 0.75, 'pruning half the windows saves at least 25%'),
    Target('cuda', 'mixaq_float', 1.05, 'quant=False costs at most 5%', batches=(1, 8)),
    Target(
        'cuda',
        'mixaq_float_low0.5',
        1.05,
        'quant=False costs at most 5% whatever the ratios',
        batches=(1, 8)),
    Target(
        'cuda', 'mixaq_fq_low0.5', 1.5, 'fake-quant two-branch costs at most 1.5x', batches=(1, 8)),
    Target(
        'cuda',
        'mixaq_float_prune0.5',
        1.0,
        'pruning half the windows is faster than dense',
        strict=True),
    Target('cuda', 'mixaq_fq_low0.5' + COMPILED, 1.3,
           'compiled fake-quant two-branch costs at most 1.3x compiled mmdet'),
)


class Case(NamedTuple):
    shape: Tuple[int, int]
    batch: int
    precision: str

    @property
    def shape_text(self) -> str:
        return f'{self.shape[0]}x{self.shape[1]}'


def targets_for(device: str, case: Case, variant: str) -> List[Target]:
    """The targets that check ``variant``'s row of ``case``: those naming the
    case's shape, else those for every other shape."""
    if case.precision != 'fp32':
        return []
    found = [
        t for t in TARGETS
        if t.device == device and t.variant == variant and case.batch in t.batches
    ]
    named = [t for t in found if t.shapes and case.shape_text in t.shapes]
    return named or [t for t in found if t.shapes is None]


def parse_shape(text: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'shape must be HxW, e.g. 800x1216, got {text!r}') from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f'shape must be positive, got {text!r}')
    return h, w


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--shapes',
        nargs='+',
        type=parse_shape,
        default=[(800, 1216), (320, 320)],
        help='input sizes HxW (default: 800x1216 320x320)')
    parser.add_argument(
        '--batch-sizes', nargs='+', type=int, default=[1, 8], help='batch sizes (default: 1 8)')
    parser.add_argument(
        '--precisions',
        nargs='+',
        choices=list(PRECISIONS),
        default=['fp32'],
        help='fp32, and/or bf16 under torch.autocast '
        '(default: fp32)')
    parser.add_argument(
        '--repeats', type=int, default=3, help='timed rounds per case (median reported)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds per case first')
    parser.add_argument(
        '--threads',
        type=int,
        default=None,
        help='torch CPU threads (default: torch default); on a '
        'machine shared with other jobs use the free cores '
        'only, or waiting threads make the timings erratic')
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument(
        '--compile', action='store_true', help='also time a compiled copy of every variant')
    parser.add_argument(
        '--compile-mode',
        default=None,
        help='torch.compile mode (default: reduce-overhead on '
        'cuda, default on cpu)')
    parser.add_argument(
        '--calib-shape',
        type=parse_shape,
        default=(320, 320),
        help='input size of the calibration image; every '
        'stage needs 2+ windows so both branches see data')
    parser.add_argument(
        '--calib',
        choices=CALIB_METHODS,
        default='minmax',
        help='calibration method of the fake-quant variants')
    parser.add_argument(
        '--tiny', action='store_true', help="the benchmark's nano Swin instead of Swin-T")
    parser.add_argument('--json', help='write the results to this file')
    parser.add_argument('--check', action='store_true', help='exit 1 if a speed target fails')
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error('--repeats must be >= 1 and --warmup >= 0')
    if args.threads is not None and args.threads < 1:
        parser.error(f'--threads must be >= 1, got {args.threads}')
    if any(b < 1 for b in args.batch_sizes):
        parser.error(f'--batch-sizes must be >= 1, got {args.batch_sizes}')
    if args.compile_mode is not None and not args.compile:
        parser.error('--compile-mode needs --compile')
    return args


def build_models(arch: dict, calib_shape: Tuple[int, int], calib: str,
                 device: torch.device) -> Dict[str, nn.Module]:
    """mmdet's Swin and three MixA-Q copies with its weights: float, float
    with distinct low-branch LayerNorms ('twobranch'), and fake-quant
    calibrated with ``calib``; in eval mode on ``device``."""
    torch.manual_seed(0)
    reference = SwinTransformer(**arch)
    models = {'mmdet': reference}
    quantizers = {
        # static (exact statistics of a weight) applies to the percentile search only
        name:
        dict(
            {
                k: v
                for k, v in default.items()
                if k != 'bits' and (k != 'static' or calib == 'percentile_mse')
            },
            calib=calib)
        for name, default in (('weight_quantizer', DEFAULT_WEIGHT_QUANTIZER),
                              ('act_quantizer', DEFAULT_ACT_QUANTIZER))
    }
    for key, quant in (('float', False), ('quant', True)):
        model = MixAQSwinTransformer(**arch, quant=quant, **quantizers)
        model.load_state_dict(reference.state_dict(), strict=False)
        models[key] = model
    # branches that differ, so no block can treat the two groups as one
    models['twobranch'] = copy.deepcopy(models['float'])
    blocks = [m for m in models['twobranch'].modules() if isinstance(m, TwoBranchSwinBlock)]
    assert blocks, 'no TwoBranchSwinBlock in MixAQSwinTransformer'
    with torch.no_grad():
        for block in blocks:
            block.norm1_low.weight.mul_(1.01)
            block.norm2_low.weight.mul_(1.01)
    for model in models.values():
        model.to(device)
        model.eval()
    quant_model = models['quant']
    # both branches must see windows, or their quantizers have no statistics
    quant_model.set_ratios(0.5, 0.0)
    enable_calibration(quant_model)
    with torch.no_grad():
        quant_model(torch.randn(1, 3, *calib_shape, device=device))
    finish_calibration(quant_model)
    return models


def compile_variants(models: Dict[str, nn.Module], compile_kw: dict) -> Dict[str, nn.Module]:
    """Per variant a compiled deep copy of its model, its ratios set once
    before compiling (the graph specializes on the Python floats)."""
    compiled = {}
    for name, key, low, prune in VARIANTS:
        model = copy.deepcopy(models[key])
        if isinstance(model, MixAQSwinTransformer):
            model.set_ratios(low, prune)
        model.compile(**compile_kw)  # in place: state_dict keys unchanged
        compiled[name + COMPILED] = model
    return compiled


def make_runners(models: Dict[str, nn.Module], compiled: Dict[str, nn.Module], x: torch.Tensor,
                 device: torch.device) -> Dict[str, Callable[[], float]]:
    """Per row (eager variants, then compiled ones) a function that runs one
    forward and returns its ms."""
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    # each compiled call starts a new CUDA graph tree generation: the outputs
    # of the previous call are dropped, never read
    new_step = (
        torch.compiler.cudagraph_mark_step_begin if device.type == 'cuda' else (lambda: None))

    def timed(model: nn.Module, before: Callable[[], None]) -> Callable[[], float]:

        def run() -> float:
            before()
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            return (time.perf_counter() - start) * 1000.0

        return run

    def eager(model: nn.Module, low: float, prune: float) -> Callable[[], float]:

        def set_ratios() -> None:
            if isinstance(model, MixAQSwinTransformer):
                model.set_ratios(low, prune)

        return timed(model, set_ratios)

    def compiled_run(model: nn.Module) -> Callable[[], float]:
        return timed(model, new_step)

    runners = {name: eager(models[key], low, prune) for name, key, low, prune in VARIANTS}
    runners.update({name: compiled_run(m) for name, m in compiled.items()})
    return runners


def autocast(case: Case, device: torch.device) -> ContextManager:
    """The case's precision context: bf16 autocast, or nothing for fp32."""
    dtype = PRECISIONS[case.precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def time_case(models: Dict[str, nn.Module], compiled: Dict[str, nn.Module], case: Case,
              repeats: int, warmup: int, device: torch.device) -> Dict[str, List[float]]:
    """Times (ms) of every row of ``case``, interleaved round by round."""
    x = torch.randn(case.batch, 3, *case.shape, device=device)
    runners = make_runners(models, compiled, x, device)
    names = list(runners)
    times: Dict[str, List[float]] = {name: [] for name in names}
    with autocast(case, device):
        for name in compiled:
            for _ in range(COMPILE_WARMUP_CALLS):
                runners[name]()
        for r in range(warmup + repeats):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                ms = runners[name]()
                if r >= warmup:
                    times[name].append(ms)
    return times


def paired_ratio(times: List[float], reference: List[float]) -> float:
    """Median over rounds of ``times[r] / reference[r]``."""
    return statistics.median(t / ref for t, ref in zip(times, reference, strict=True))


def summarize(case: Case, times: Dict[str, List[float]]) -> List[dict]:
    """One row per variant: median ms and its paired ratio to the row's
    reference (``mmdet_fp``, or ``mmdet_fp+compile`` for compiled rows) and to
    eager ``mmdet_fp``."""
    rows = []
    for name, values in times.items():
        reference = REFERENCE + COMPILED if name.endswith(COMPILED) else REFERENCE
        rows.append(
            dict(
                shape=case.shape_text,
                batch=case.batch,
                precision=case.precision,
                variant=name,
                reference=reference,
                median_ms=statistics.median(values),
                ratio=paired_ratio(values, times[reference]),
                ratio_to_eager=paired_ratio(values, times[REFERENCE]),
                times_ms=values))
    return rows


def check_targets(rows: List[dict], device: str) -> List[dict]:
    """The speed targets that apply to the rows, with whether each holds."""
    checks = []
    for row in rows:
        case = Case(parse_shape(row['shape']), row['batch'], row['precision'])
        for t in targets_for(device, case, row['variant']):
            ratio = row['ratio']
            passed = ratio < t.limit if t.strict else ratio <= t.limit
            checks.append(
                dict(
                    shape=row['shape'],
                    batch=row['batch'],
                    precision=row['precision'],
                    variant=t.variant,
                    reference=row['reference'],
                    ratio=ratio,
                    limit=t.limit,
                    strict=t.strict,
                    target=t.what,
                    passed=passed))
    return checks


TABLE_HEADER = (f'{"shape":<10} {"batch":>5} {"precision":<9} '
                f'{"variant":<31} {"median ms":>10} {"ratio":>7}')


def format_table(rows: List[dict]) -> str:
    """Rows as text; with compiled rows, a column of ratios to eager mmdet."""
    with_compiled = any(r['variant'].endswith(COMPILED) for r in rows)
    lines = [TABLE_HEADER + (f' {"vs eager":>8}' if with_compiled else '')]
    for r in rows:
        line = (f'{r["shape"]:<10} {r["batch"]:>5} {r["precision"]:<9} '
                f'{r["variant"]:<31} {r["median_ms"]:>10.1f} '
                f'{r["ratio"]:>6.2f}x')
        if r['variant'].endswith(COMPILED):
            line += f' {r["ratio_to_eager"]:>7.2f}x'
        lines.append(line)
    return '\n'.join(lines)


def main() -> int:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda but CUDA is not available')
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cases = [
        Case(shape, batch, precision) for shape in args.shapes for batch in args.batch_sizes
        for precision in args.precisions
    ]
    arch = SWIN_NANO if args.tiny else SWIN_T
    models = build_models(arch, args.calib_shape, args.calib, device)
    compiled: Dict[str, nn.Module] = {}
    compile_mode = None
    if args.compile:
        compile_mode = args.compile_mode or ('reduce-overhead'
                                             if device.type == 'cuda' else 'default')
        # Dynamo caches per code object, so the compiled copies share one
        # cache of up to a graph per variant and case; past the limit it would
        # silently run eager: allow them all, and fail rather than fall back
        dynamo = torch._dynamo.config
        dynamo.recompile_limit = max(dynamo.recompile_limit, len(VARIANTS) * len(cases))
        dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit,
                                                 len(VARIANTS) * len(cases))
        dynamo.fail_on_recompile_limit_hit = True
        compiled = compile_variants(models, dict(mode=compile_mode, dynamic=False))
    rows = []
    for case in cases:
        rows += summarize(case, time_case(models, compiled, case, args.repeats, args.warmup,
                                          device))
    checks = check_targets(rows, device.type)
    name = 'Swin nano' if args.tiny else 'Swin-T'
    device_name = (f'{device} ({torch.cuda.get_device_name(device)})'
                   if device.type == 'cuda' else str(device))
    compile_note = (f'; compiled: mode {compile_mode}, '
                    f'{COMPILE_WARMUP_CALLS} untimed calls per case first' if args.compile else '')
    print(f'{name} backbone, {device_name}, {torch.get_num_threads()} threads, '
          f'torch {torch.__version__}, median of {args.repeats} '
          f'(after {args.warmup} warm-up){compile_note}')
    print(f'ratio: to {REFERENCE} of the same case (compiled rows: to '
          f'{REFERENCE}{COMPILED}; "vs eager": to {REFERENCE})' if args.
          compile else f'ratio: to {REFERENCE} of the same case')
    print(format_table(rows))
    for c in checks:
        status = 'PASS' if c['passed'] else 'FAIL'
        op = '<' if c['strict'] else '<='
        print(f'{status} {c["shape"]} batch {c["batch"]} {c["precision"]} '
              f'{c["variant"]}: {c["ratio"]:.2f}x of {c["reference"]} '
              f'(limit {op} {c["limit"]:.2f}x: {c["target"]})')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(
                dict(
                    arch=name,
                    device=str(device),
                    device_name=device_name,
                    threads=torch.get_num_threads(),
                    torch=torch.__version__,
                    calib=args.calib,
                    repeats=args.repeats,
                    warmup=args.warmup,
                    batch_sizes=args.batch_sizes,
                    precisions=args.precisions,
                    compile_mode=compile_mode,
                    rows=rows,
                    checks=checks),
                f,
                indent=2)
    return 1 if args.check and not all(c['passed'] for c in checks) else 0


if __name__ == '__main__':
    sys.exit(main())
