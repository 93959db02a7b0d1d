"""The main job on the embedded benchmark (``make demo``).

1. generates the benchmark data if absent;
2. trains the FP model unless its checkpoint is there (an interrupted run resumes);
3. runs the PTQ sweep: every config of ``ROWS`` calibrated on training images
   and evaluated with COCO mAP on the val split;
4. writes ``<work-dir>/results.json`` (a list of rows) and ``<work-dir>/pareto.png``
   and prints the results table.

Rows whose merged config, FP checkpoint, package code and data are unchanged are
taken from the previous results.json, so a rerun only computes what changed;
``--rows`` recomputes some rows and keeps the others (marked stale if their
inputs changed since).

    python tools/run_demo.py [--work-dir work_dirs/demo] [--data-root data/shapes_coco]
"""
import argparse
import copy
import hashlib
import json
import os
import os.path as osp
import time
from typing import Dict, List, Optional, Sequence, Tuple

from mmengine.config import Config
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

import mixaq_mmdet  # noqa: F401  (stack fixes, registries)
from mixaq_mmdet.analysis import count_bitops, plot_pareto
from mixaq_mmdet.datasets import generate
from mixaq_mmdet.models import quant_scope
from mixaq_mmdet.utils import load_runner_config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
BENCH = osp.join(REPO, 'configs/benchmark')
FP_CONFIG = osp.join(BENCH, 'mask-rcnn_swin-nano-p4-w7_fpn_shapes.py')
BASE_ROW = 'uniform_w4a8'
IMG_SHAPE = (320, 320)
ROWS: Tuple[Tuple[str, str], ...] = (
    ('fp', FP_CONFIG),
    ('uniform_w8a8', 'ptq/ptq_uniform_w8a8_shapes.py'),
    ('uniform_w4a8', 'ptq/ptq_uniform_w4a8_shapes.py'),
    ('uniform_w4a6', 'ptq/ptq_uniform_w4a6_shapes.py'),
    ('uniform_w4a4', 'ptq/ptq_uniform_w4a4_shapes.py'),
    ('mixaq_w4a8a4', 'ptq/ptq_mixaq_w4a8a4_shapes.py'),
    ('mixaq_w4a8a4_contrast', 'ptq/ptq_mixaq_w4a8a4_contrast_shapes.py'),
    ('mixaq_w4a8a4_random', 'ptq/ptq_mixaq_w4a8a4_random_shapes.py'),
    ('mixaq_w4a8a4_reverse', 'ptq/ptq_mixaq_w4a8a4_reverse_shapes.py'),
    ('mixaq_w4a8a4_prune', 'ptq/ptq_mixaq_w4a8a4_prune_shapes.py'),
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/shapes_coco')
    parser.add_argument('--num-train', type=int, default=600,
                        help='train images to generate if the data is absent')
    parser.add_argument('--num-val', type=int, default=200,
                        help='val images to generate if the data is absent')
    parser.add_argument('--max-epochs', type=int, default=None,
                        help='override the FP config (a quick run)')
    parser.add_argument('--rows', nargs='+', choices=[name for name, _ in ROWS],
                        help='only these rows (default: all)')
    parser.add_argument('--calib-images', type=int, default=None,
                        help="override the PTQ configs' calibration size")
    return parser.parse_args()


def ensure_data(data_root: str, num_train: int, num_val: int) -> None:
    """Generate the benchmark unless both annotation files exist."""
    ann = [osp.join(data_root, 'annotations', f'instances_{s}.json')
           for s in ('train', 'val')]
    if all(osp.isfile(a) for a in ann):
        print(f'[demo] data: {data_root} (present)')
        return
    print(f'[demo] data: generating {num_train} train / {num_val} val images '
          f'into {data_root}')
    generate(data_root, num_train=num_train, num_val=num_val, seed=0)


def benchmark_config(config: str, work_dir: str, data_root: str,
                     max_epochs: Optional[int] = None,
                     calib_images: Optional[int] = None) -> Config:
    """A benchmark config pointed at ``data_root`` and ``work_dir``."""
    data_root = data_root.rstrip('/') + '/'
    options = {
        'train_dataloader.dataset.data_root': data_root,
        'val_dataloader.dataset.data_root': data_root,
        'test_dataloader.dataset.data_root': data_root,
        'val_evaluator.ann_file': data_root + 'annotations/instances_val.json',
        'test_evaluator.ann_file': data_root + 'annotations/instances_val.json',
    }
    if max_epochs is not None:
        options['train_cfg.max_epochs'] = max_epochs
        options['train_cfg.val_interval'] = max_epochs
        options['param_scheduler.1.end'] = max_epochs
    cfg = load_runner_config(config, work_dir=work_dir, cfg_options=options)
    if cfg.test_cfg.get('type') == 'PTQLoop':
        cfg.test_cfg.calib_dataloader.dataset.data_root = data_root
        if calib_images is not None:
            cfg.test_cfg.calib_images = calib_images
    return cfg


def ensure_fp_checkpoint(cfg: Config) -> str:
    """Train the FP model unless its final checkpoint exists; return its path."""
    final = osp.join(cfg.work_dir, f'epoch_{cfg.train_cfg.max_epochs}.pth')
    if osp.isfile(final):
        print(f'[demo] FP model: {final} (cached)')
        return final
    print(f'[demo] FP model: training into {cfg.work_dir} '
          '(about 12 minutes on 2 cores)')
    train_cfg = copy.deepcopy(cfg)
    train_cfg.resume = True  # continue an interrupted run from its last checkpoint
    start = time.time()
    Runner.from_cfg(train_cfg).train()
    print(f'[demo] FP model trained in {(time.time() - start) / 60:.1f} min')
    return final


def code_version() -> str:
    """Digest of the package's source: a change of a quantizer invalidates rows."""
    digest = hashlib.sha256()
    package = osp.join(REPO, 'mixaq_mmdet')
    for root, dirs, files in sorted(os.walk(package)):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith('.py')):
            path = osp.join(root, name)
            digest.update(osp.relpath(path, package).encode())
            digest.update(open(path, 'rb').read())
    return digest.hexdigest()


def data_version(data_root: str) -> str:
    """Digest of the benchmark's annotation files."""
    digest = hashlib.sha256()
    for split in ('train', 'val'):
        digest.update(open(osp.join(data_root, 'annotations', f'instances_{split}.json'),
                           'rb').read())
    return digest.hexdigest()


def fingerprint(cfg: Config, checkpoint: str, versions: str) -> str:
    """Identifies a row's inputs: the merged config, the FP checkpoint and the
    code and data ``versions``."""
    digest = hashlib.sha256(cfg.pretty_text.encode())
    digest.update(f'{checkpoint}:{os.stat(checkpoint).st_mtime_ns}:{versions}'.encode())
    return digest.hexdigest()[:16]


def run_row(name: str, cfg: Config, checkpoint: str) -> Dict:
    """Evaluate one configuration (PTQ rows calibrate first)."""
    cfg = copy.deepcopy(cfg)
    cfg.load_from = checkpoint
    cfg.resume = False
    if 'train_cfg' in cfg and cfg.test_cfg.get('type') != 'PTQLoop':
        cfg.work_dir = osp.join(cfg.work_dir, 'test')
    runner = Runner.from_cfg(cfg)
    start = time.time()
    metrics = runner.test()
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    report = count_bitops(model, IMG_SHAPE)
    backbone = model.backbone
    quantized = cfg.test_cfg.get('type') == 'PTQLoop'
    row = dict(
        name=name,
        bbox_mAP=round(100 * metrics['coco/bbox_mAP'], 2),
        segm_mAP=round(100 * metrics['coco/segm_mAP'], 2),
        bitops_G=round(report.bitops / 1e9, 4),
        w_bits=backbone.w_bits if quantized else 32,
        act_bits=round(report.act_bits, 3),
        a_bits=list(backbone.a_bits) if quantized else [32, 32],
        low_bit_ratios=backbone.low_bit_ratios if quantized else None,
        prune_ratios=backbone.prune_ratios if quantized else None,
        window_score=backbone.policy.score if quantized else None,
        window_order=backbone.policy.order if quantized else None,
        calib_images=runner.test_loop.num_calib_images if quantized else 0,
        scope=quant_scope(model) if quantized else None,
        img_shape=list(IMG_SHAPE),
        eval_seconds=round(time.time() - start, 1))
    return row


def add_speedups(rows: List[Dict]) -> None:
    """Speedup of every row over the uniform W4A8 row's BitOPs (the PTQ base)."""
    base = next((r for r in rows if r['name'] == BASE_ROW), None)
    for row in rows:
        row['speedup'] = round(base['bitops_G'] / row['bitops_G'], 3) \
            if base else None


def format_table(rows: Sequence[Dict]) -> str:
    header = (f"{'name':<24}{'bbox mAP':>9}{'segm mAP':>9}{'speedup':>9}"
              f"{'W':>4}{'A eff':>7}  {'low / prune ratios':<20}{'calib':>6}")
    lines = [header, '-' * len(header)]
    for r in rows:
        ratios = '-' if r['low_bit_ratios'] is None else \
            f"{_ratio(r['low_bit_ratios'])} / {_ratio(r['prune_ratios'])}"
        speedup = '-' if r.get('speedup') is None else f"{r['speedup']:.3f}x"
        stale = '  (stale: inputs changed since)' if r.get('stale') else ''
        lines.append(f"{r['name']:<24}{r['bbox_mAP']:>9.2f}{r['segm_mAP']:>9.2f}"
                     f"{speedup:>9}{r['w_bits']:>4}{r['act_bits']:>7.2f}  "
                     f"{ratios:<20}{r['calib_images']:>6}{stale}")
    return '\n'.join(lines)


def _ratio(values: Sequence[float]) -> str:
    return f'{values[0]:g}' if len(set(values)) == 1 else \
        ','.join(f'{v:g}' for v in values)


def main() -> None:
    args = parse_args()
    ensure_data(args.data_root, args.num_train, args.num_val)
    fp_cfg = benchmark_config(FP_CONFIG, osp.join(args.work_dir, 'fp'),
                              args.data_root, args.max_epochs)
    checkpoint = ensure_fp_checkpoint(fp_cfg)
    out = osp.join(args.work_dir, 'results.json')
    previous = {r['name']: r for r in json.load(open(out))} \
        if osp.isfile(out) else {}
    versions = f'{code_version()}:{data_version(args.data_root)}'
    rows = []
    for name, config in ROWS:
        cfg = fp_cfg if name == 'fp' else benchmark_config(
            osp.join(BENCH, config), osp.join(args.work_dir, name),
            args.data_root, calib_images=args.calib_images)
        key = fingerprint(cfg, checkpoint, versions)
        old = previous.get(name)
        if args.rows and name not in args.rows:
            if old is not None:  # not asked for: keep it, flagged if outdated
                if old.get('fingerprint') != key:
                    old['stale'] = True
                else:
                    old.pop('stale', None)
                rows.append(old)
            continue
        if old is not None and old.get('fingerprint') == key:
            print(f'[demo] {name}: unchanged, taken from {out}')
            old.pop('stale', None)
            rows.append(old)
            continue
        print(f'[demo] {name}: evaluating {osp.relpath(cfg.filename, REPO)}')
        row = run_row(name, cfg, checkpoint)
        row['config'] = osp.relpath(cfg.filename, REPO)
        row['fingerprint'] = key
        rows.append(row)
        add_speedups(rows)
        os.makedirs(args.work_dir, exist_ok=True)
        with open(out, 'w') as f:
            json.dump(rows + [r for n, r in previous.items()
                              if n not in {x['name'] for x in rows}], f, indent=2)
    add_speedups(rows)
    with open(out, 'w') as f:
        json.dump(rows, f, indent=2)
    plot_rows = [r for r in rows if r['name'] != 'fp' and r.get('speedup')]
    if plot_rows:
        plot_pareto(plot_rows, osp.join(args.work_dir, 'pareto.png'),
                    title='PTQ on the embedded benchmark (val, 320x320)')
    print(f'\n[demo] results on the val split of {args.data_root} '
          f'(speedup: BitOPs of {BASE_ROW} / BitOPs of the row, backbone, '
          f'{IMG_SHAPE[0]}x{IMG_SHAPE[1]}):')
    print(format_table(rows))
    print(f'[demo] written: {out}' + (
        f", {osp.join(args.work_dir, 'pareto.png')}" if plot_rows else ''))


if __name__ == '__main__':
    main()
