"""Backbone latency of MixA-Q's Swin against mmdet's, side by side in one run.

    python benchmarks/backbone_speed.py [--shapes 800x1216 320x320] [--repeats N]
        [--threads T] [--device cpu|cuda] [--json out.json] [--check] [--tiny]

Full-size Swin-T (embed 96, depths 2-2-6-2, heads 3-6-12-24; ``--tiny``: the
benchmark's nano Swin) with random weights, batch 1, eval, no_grad. Variants,
all with the same weights:

- ``mmdet_fp``: mmdet's SwinTransformer, the reference;
- ``mixaq_float``: MixAQSwinTransformer, quant=False, all ratios 0;
- ``mixaq_float_low0.5``: quant=False, low-bit ratio 0.5 (the cost of gathering
  and scattering two window groups);
- ``mixaq_fq_low0`` / ``mixaq_fq_low0.5``: fake quantization on (calibrated on
  one random image first), low-bit ratio 0 / 0.5. The quantizers calibrate by
  min/max unless ``--calib percentile_mse``: the calibration method only picks
  the qparams, the fake-quant forward being timed is the same, and min/max
  calibrates in seconds instead of minutes;
- ``mixaq_float_prune0.5``: quant=False, prune ratio 0.5 (half the windows skip
  every block).

Each repeat times every variant once, in a rotating order, after warm-up
rounds, so machine noise hits all alike; the table shows the median and its
ratio to ``mmdet_fp`` at the same shape. Fake quantization simulates integer
arithmetic in float, so its latency is an overhead, not a speed-up.

``--check`` exits 1 unless, at every shape: ``mixaq_float`` <= 1.10x mmdet,
``mixaq_float_prune0.5`` <= 1/1.3 (1.3x faster), ``mixaq_fq_low0.5`` <= 2.5x.
"""
import argparse
import json
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn
from mmdet.models.backbones import SwinTransformer

from mixaq_mmdet.models.backbones import MixAQSwinTransformer
from mixaq_mmdet.quantization import (CALIB_METHODS, DEFAULT_ACT_QUANTIZER,
                                      DEFAULT_WEIGHT_QUANTIZER,
                                      enable_calibration, finish_calibration)

SWIN_T = dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
              window_size=7)
SWIN_NANO = dict(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                 window_size=7)
# (name, model, low-bit ratio, prune ratio); model 'mmdet' ignores the ratios.
VARIANTS = (
    ('mmdet_fp', 'mmdet', 0.0, 0.0),
    ('mixaq_float', 'float', 0.0, 0.0),
    ('mixaq_float_low0.5', 'float', 0.5, 0.0),
    ('mixaq_fq_low0', 'quant', 0.0, 0.0),
    ('mixaq_fq_low0.5', 'quant', 0.5, 0.0),
    ('mixaq_float_prune0.5', 'float', 0.0, 0.5),
)
REFERENCE = 'mmdet_fp'
# (variant, largest ratio to the reference, what it guards)
TARGETS = (
    ('mixaq_float', 1.10, 'quant=False costs at most 10%'),
    ('mixaq_float_prune0.5', 1 / 1.3, 'pruning half the windows is >= 1.3x faster'),
    ('mixaq_fq_low0.5', 2.5, 'fake-quant two-branch costs at most 2.5x'),
)


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
    parser.add_argument('--shapes', nargs='+', type=parse_shape,
                        default=[(800, 1216), (320, 320)],
                        help='input sizes HxW (default: 800x1216 320x320)')
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed rounds per shape (median reported); the '
                        'default run takes about 2 minutes on 2 CPU cores')
    parser.add_argument('--warmup', type=int, default=1,
                        help='untimed rounds per shape first')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch default); on a '
                        'machine shared with other jobs use the free cores '
                        'only, or waiting threads make the timings erratic')
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--calib-shape', type=parse_shape, default=(320, 320),
                        help='input size of the calibration image; every '
                        'stage needs 2+ windows so both branches see data')
    parser.add_argument('--calib', choices=CALIB_METHODS, default='minmax',
                        help='calibration method of the fake-quant variants')
    parser.add_argument('--tiny', action='store_true',
                        help="the benchmark's nano Swin instead of Swin-T")
    parser.add_argument('--json', help='write the results to this file')
    parser.add_argument('--check', action='store_true',
                        help='exit 1 if a speed target fails')
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error('--repeats must be >= 1 and --warmup >= 0')
    if args.threads is not None and args.threads < 1:
        parser.error(f'--threads must be >= 1, got {args.threads}')
    return args


def build_models(arch: dict, calib_shape: Tuple[int, int], calib: str,
                 device: torch.device) -> Dict[str, nn.Module]:
    """mmdet's Swin and two MixA-Q copies with its weights (float and
    fake-quant calibrated with ``calib``), in eval mode on ``device``."""
    torch.manual_seed(0)
    reference = SwinTransformer(**arch)
    models = {'mmdet': reference}
    quantizers = {
        name: dict({k: v for k, v in default.items() if k != 'bits'},
                   calib=calib)
        for name, default in (('weight_quantizer', DEFAULT_WEIGHT_QUANTIZER),
                              ('act_quantizer', DEFAULT_ACT_QUANTIZER))}
    for key, quant in (('float', False), ('quant', True)):
        model = MixAQSwinTransformer(**arch, quant=quant, **quantizers)
        model.load_state_dict(reference.state_dict(), strict=False)
        models[key] = model
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


def make_runners(models: Dict[str, nn.Module], x: torch.Tensor,
                 device: torch.device) -> Dict[str, Callable[[], float]]:
    """Per variant a function that runs one forward and returns its ms."""
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)

    def runner(model: nn.Module, low: float, prune: float) -> Callable[[], float]:
        def run() -> float:
            if isinstance(model, MixAQSwinTransformer):
                model.set_ratios(low, prune)
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            return (time.perf_counter() - start) * 1000.0
        return run

    return {name: runner(models[key], low, prune)
            for name, key, low, prune in VARIANTS}


@torch.no_grad()
def time_shape(models: Dict[str, nn.Module], shape: Tuple[int, int],
               repeats: int, warmup: int,
               device: torch.device) -> Dict[str, List[float]]:
    """Times (ms) of every variant at ``shape``, interleaved round by round."""
    x = torch.randn(1, 3, *shape, device=device)
    runners = make_runners(models, x, device)
    names = list(runners)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(warmup + repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            ms = runners[name]()
            if r >= warmup:
                times[name].append(ms)
    return times


def summarize(shape: Tuple[int, int], times: Dict[str, List[float]]) -> List[dict]:
    """One row per variant: median ms and its ratio to the reference."""
    ref = statistics.median(times[REFERENCE])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        rows.append(dict(shape=f'{shape[0]}x{shape[1]}', variant=name,
                         median_ms=median, ratio=median / ref, times_ms=values))
    return rows


def check_targets(rows: List[dict]) -> List[dict]:
    """The speed targets, per shape, with whether each holds."""
    checks = []
    for row in rows:
        for variant, limit, what in TARGETS:
            if row['variant'] == variant:
                checks.append(dict(shape=row['shape'], variant=variant,
                                   ratio=row['ratio'], limit=limit, target=what,
                                   passed=row['ratio'] <= limit))
    return checks


def format_table(rows: List[dict]) -> str:
    lines = [f'{"shape":<10} {"variant":<22} {"median ms":>10} '
             f'{"ratio to " + REFERENCE:>18}']
    for r in rows:
        lines.append(f'{r["shape"]:<10} {r["variant"]:<22} '
                     f'{r["median_ms"]:>10.1f} {r["ratio"]:>17.2f}x')
    return '\n'.join(lines)


def main() -> int:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda but CUDA is not available')
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    arch = SWIN_NANO if args.tiny else SWIN_T
    models = build_models(arch, args.calib_shape, args.calib, device)
    rows = []
    for shape in args.shapes:
        rows += summarize(shape, time_shape(models, shape, args.repeats,
                                            args.warmup, device))
    checks = check_targets(rows)
    name = 'Swin nano' if args.tiny else 'Swin-T'
    print(f'{name} backbone, batch 1, {device}, {torch.get_num_threads()} '
          f'threads, median of {args.repeats} (after {args.warmup} warm-up)')
    print(format_table(rows))
    for c in checks:
        status = 'PASS' if c['passed'] else 'FAIL'
        print(f'{status} {c["shape"]} {c["variant"]}: {c["ratio"]:.2f}x '
              f'(limit {c["limit"]:.2f}x: {c["target"]})')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(arch=name, device=str(device),
                           threads=torch.get_num_threads(),
                           torch=torch.__version__, calib=args.calib,
                           repeats=args.repeats,
                           warmup=args.warmup, rows=rows, checks=checks),
                      f, indent=2)
    return 1 if args.check and not all(c['passed'] for c in checks) else 0


if __name__ == '__main__':
    sys.exit(main())
