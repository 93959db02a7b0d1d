"""The main job on the embedded benchmark (``make demo``).

1. generates the benchmark data if absent;
2. trains the FP model and the QAT models of ``TRAININGS`` unless their
   checkpoints are there for the same inputs (an interrupted run resumes);
3. evaluates every row of ``ROWS`` with COCO mAP on the val split: PTQ rows are
   calibrated on training images, QAT rows evaluate a trained checkpoint at
   the row's window ratios and order;
4. compares the rows of ``TARGETS`` (paired differences with their val noise,
   :func:`mixaq_mmdet.analysis.paired_difference`);
5. writes ``<work-dir>/results.json``, ``pareto.png`` (PTQ) and ``pareto_qat.png``
   and prints the results tables and the targets.

Rows whose merged config, checkpoint, package code and data are unchanged are
taken from the previous results.json, so a rerun only computes what changed;
``--rows`` recomputes some rows and keeps the others (marked stale if their
inputs changed since). A trained model is reused while its config, its parent
checkpoint and the data are unchanged; the package code is not part of that
key (retraining takes most of the demo's time): delete its folder under the
work dir to retrain it after changing the code.

    python tools/run_demo.py [--work-dir work_dirs/demo] [--data-root data/shapes_coco]
"""
import argparse
import copy
import hashlib
import json
import os
import os.path as osp
import shutil
import time
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from mmengine.config import Config
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

import mixaq_mmdet  # noqa: F401  (stack fixes, registries)
from mixaq_mmdet.analysis import count_bitops, paired_difference, plot_pareto
from mixaq_mmdet.datasets import generate
from mixaq_mmdet.engine.hooks.qat_init_hook import INIT_CHECKPOINT
from mixaq_mmdet.models import quant_scope
from mixaq_mmdet.utils import load_runner_config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
BENCH = osp.join(REPO, 'configs/benchmark')
FP_CONFIG = 'mask-rcnn_swin-nano-p4-w7_fpn_shapes.py'
PTQ_BASE, QAT_BASE = 'uniform_w4a8', 'qat_uniform_w4a4'
IMG_SHAPE = (320, 320)
#: Trained models: name, config, the model its ``load_from`` is.
TRAININGS: Tuple[Tuple[str, str, Optional[str]], ...] = (
    ('fp', FP_CONFIG, None),
    ('qat_uniform_w4a4', 'qat/qat_uniform_w4a4_shapes.py', 'fp'),
    ('qat_uniform_w4a3', 'qat/qat_uniform_w4a3_shapes.py', 'fp'),
    ('qat_saqa_w4a4a2', 'qat/qat_saqa_w4a4a2_shapes.py', 'qat_uniform_w4a4'),
    ('qat_saqa_prune_w4a4a2', 'qat/qat_saqa_prune_w4a4a2_shapes.py', 'qat_uniform_w4a4'),
)
#: Low-bit ratios of the QAT rows: BitOPs speedups over uniform W4A4 of about
#: 1.25x and 1.35x (1.245x, 1.337x at 320x320), and 1.53x with prune 0.2.
RATIO_125, RATIO_135 = 0.49, 0.55
#: Folds of the val images for the standard error of a difference.
NUM_FOLDS = 5


class Row(NamedTuple):
    """A row of the table: ``config`` evaluated on ``model`` (a training's final
    checkpoint; ``'name:init'`` its initialization; PTQ rows calibrate the FP
    model) with config ``options``; speedups relative to the row ``base``."""
    name: str
    config: str
    model: str
    base: str
    options: Tuple[Tuple[str, object], ...] = ()


def _at(low: float, prune: float = 0.0, order: Optional[str] = None,
        score: Optional[str] = None) -> Tuple[Tuple[str, object], ...]:
    options = [('model.backbone.low_bit_ratios', low), ('model.backbone.prune_ratios', prune)]
    if order:
        options.append(('model.backbone.window_order', order))
    if score:
        options.append(('model.backbone.window_score', score))
    return tuple(options)


SAQA = 'qat/qat_saqa_w4a4a2_shapes.py'
ROWS: Tuple[Row, ...] = (
    Row('fp', FP_CONFIG, 'fp', PTQ_BASE),
    Row('uniform_w8a8', 'ptq/ptq_uniform_w8a8_shapes.py', 'fp', PTQ_BASE),
    Row('uniform_w4a8', 'ptq/ptq_uniform_w4a8_shapes.py', 'fp', PTQ_BASE),
    Row('uniform_w4a6', 'ptq/ptq_uniform_w4a6_shapes.py', 'fp', PTQ_BASE),
    Row('uniform_w4a4', 'ptq/ptq_uniform_w4a4_shapes.py', 'fp', PTQ_BASE),
    Row('mixaq_w4a8a4', 'ptq/ptq_mixaq_w4a8a4_shapes.py', 'fp', PTQ_BASE),
    Row('mixaq_w4a8a4_contrast', 'ptq/ptq_mixaq_w4a8a4_contrast_shapes.py', 'fp', PTQ_BASE),
    Row('mixaq_w4a8a4_random', 'ptq/ptq_mixaq_w4a8a4_random_shapes.py', 'fp', PTQ_BASE),
    Row('mixaq_w4a8a4_reverse', 'ptq/ptq_mixaq_w4a8a4_reverse_shapes.py', 'fp', PTQ_BASE),
    Row('mixaq_w4a8a4_prune', 'ptq/ptq_mixaq_w4a8a4_prune_shapes.py', 'fp', PTQ_BASE),
    Row('qat_uniform_w4a4', 'qat/qat_uniform_w4a4_shapes.py', 'qat_uniform_w4a4', QAT_BASE),
    Row('qat_uniform_w4a3', 'qat/qat_uniform_w4a3_shapes.py', 'qat_uniform_w4a3', QAT_BASE),
    Row('qat_saqa_all_high', SAQA, 'qat_saqa_w4a4a2', QAT_BASE),
    Row('qat_mixaq_w4a4a2_1.25x', SAQA, 'qat_saqa_w4a4a2', QAT_BASE, _at(RATIO_125)),
    Row('qat_mixaq_w4a4a2_1.35x', SAQA, 'qat_saqa_w4a4a2', QAT_BASE, _at(RATIO_135)),
    Row('qat_mixaq_prune_1.5x', 'qat/qat_saqa_prune_w4a4a2_shapes.py',
        'qat_saqa_prune_w4a4a2', QAT_BASE, _at(0.5, 0.2)),
    Row('qat_no_saqa_1.35x', SAQA, 'qat_saqa_w4a4a2:init', QAT_BASE, _at(RATIO_135)),
    Row('qat_mixaq_l2_1.35x', SAQA, 'qat_saqa_w4a4a2', QAT_BASE, _at(RATIO_135, score='l2')),
    Row('qat_mixaq_random_1.35x', SAQA, 'qat_saqa_w4a4a2', QAT_BASE,
        _at(RATIO_135, order='random')),
    Row('qat_mixaq_reverse_1.35x', SAQA, 'qat_saqa_w4a4a2', QAT_BASE,
        _at(RATIO_135, order='reverse')),
)
#: The paper's QAT claims on the benchmark: (claim, row A, row B, test) with
#: test 'ge' (A >= B), 'gt' (A > B), 'within' (|A - B| <= 0.5 points) or
#: 'noise' (A - B above twice its standard error on val), on bbox mAP.
TARGETS: Tuple[Tuple[str, str, str, str], ...] = (
    ('SAQA, every window high-bit >= uniform W4A4 QAT', 'qat_saqa_all_high',
     'qat_uniform_w4a4', 'ge'),
    ('MixA-Q 1.25x within 0.5 of uniform W4A4 QAT', 'qat_mixaq_w4a4a2_1.25x',
     'qat_uniform_w4a4', 'within'),
    ('MixA-Q 1.35x above uniform W4A3 QAT (same cost)', 'qat_mixaq_w4a4a2_1.35x',
     'qat_uniform_w4a3', 'gt'),
    ('1.35x: importance order above random, beyond noise', 'qat_mixaq_w4a4a2_1.35x',
     'qat_mixaq_random_1.35x', 'noise'),
    ('1.35x: importance order above reverse, beyond noise', 'qat_mixaq_w4a4a2_1.35x',
     'qat_mixaq_reverse_1.35x', 'noise'),
    ('1.35x: SAQA above the same ratios without SAQA', 'qat_mixaq_w4a4a2_1.35x',
     'qat_no_saqa_1.35x', 'gt'),
)
ROW_NAMES = [row.name for row in ROWS]


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
    parser.add_argument('--qat-epochs', type=int, default=None,
                        help='override the QAT configs (a quick run)')
    parser.add_argument('--rows', nargs='+', choices=ROW_NAMES,
                        help='only these rows (default: all)')
    parser.add_argument('--calib-images', type=int, default=None,
                        help='override the calibration size of PTQ and QAT')
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
    cfg = load_runner_config(osp.join(BENCH, config), work_dir=work_dir,
                             cfg_options=options)
    calib_loaders = [h.calib_dataloader for h in cfg.get('custom_hooks', [])
                     if h.type == 'QATInitHook']
    if cfg.test_cfg.get('type') == 'PTQLoop':
        calib_loaders.append(cfg.test_cfg.calib_dataloader)
        if calib_images is not None:
            cfg.test_cfg.calib_images = calib_images
    for loader in calib_loaders:
        loader.dataset.data_root = data_root
    for hook in cfg.get('custom_hooks', []):
        if hook.type == 'QATInitHook' and calib_images is not None:
            hook.calib_images = calib_images
    return cfg


def ensure_trained(name: str, cfg: Config, parent: Optional[str], data: str) -> str:
    """Train ``cfg`` from the ``parent`` checkpoint unless its final checkpoint
    exists for the same config, parent and training ``data``; return the final
    checkpoint.

    The inputs are recorded in ``<work_dir>/demo_inputs.txt``; when they
    changed, the folder is emptied and the model trained anew. An interrupted
    run with the same inputs resumes from its last checkpoint.
    """
    final = osp.join(cfg.work_dir, f'epoch_{cfg.train_cfg.max_epochs}.pth')
    record = osp.join(cfg.work_dir, 'demo_inputs.txt')
    key = fingerprint(cfg, parent, data)
    recorded = open(record).read() if osp.isfile(record) else None
    if osp.isfile(final) and recorded in (key, None):
        print(f'[demo] {name}: {final} (cached)')
        if recorded is None:  # trained before inputs were recorded
            open(record, 'w').write(key)
        return final
    if recorded is not None and recorded != key:
        print(f'[demo] {name}: config, parent checkpoint or data changed; training anew')
        shutil.rmtree(cfg.work_dir)
    os.makedirs(cfg.work_dir, exist_ok=True)
    open(record, 'w').write(key)
    print(f'[demo] {name}: training {osp.relpath(cfg.filename, REPO)} into {cfg.work_dir}'
          + (f' from {parent}' if parent else ''))
    train_cfg = copy.deepcopy(cfg)
    if osp.isfile(osp.join(cfg.work_dir, 'last_checkpoint')):
        train_cfg.resume, train_cfg.load_from = True, None  # continue an interrupted run
    else:
        train_cfg.resume, train_cfg.load_from = False, parent
    start = time.time()
    Runner.from_cfg(train_cfg).train()
    print(f'[demo] {name}: trained in {(time.time() - start) / 60:.1f} min')
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


def data_version(data_root: str, splits: Sequence[str] = ('train', 'val')) -> str:
    """Digest of the benchmark's annotation files of ``splits``."""
    digest = hashlib.sha256()
    for split in splits:
        digest.update(open(osp.join(data_root, 'annotations', f'instances_{split}.json'),
                           'rb').read())
    return digest.hexdigest()


def fingerprint(cfg: Config, checkpoint: Optional[str], versions: str) -> str:
    """Identifies a row's or a training's inputs: the merged config, the
    checkpoint it starts from and the code and data ``versions``."""
    digest = hashlib.sha256(cfg.pretty_text.encode())
    stamp = f'{checkpoint}:{os.stat(checkpoint).st_mtime_ns}' if checkpoint else 'none'
    digest.update(f'{stamp}:{versions}'.encode())
    return digest.hexdigest()[:16]


def run_row(row: Row, cfg: Config, checkpoint: str) -> Dict:
    """Evaluate one row (PTQ rows calibrate first); its detections are kept in
    ``<work_dir>/preds.{bbox,segm}.json`` for the paired comparisons."""
    cfg = copy.deepcopy(cfg)
    cfg.load_from = checkpoint
    cfg.resume = False
    cfg.test_evaluator.outfile_prefix = osp.join(cfg.work_dir, 'preds')
    runner = Runner.from_cfg(cfg)
    start = time.time()
    metrics = runner.test()
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    report = count_bitops(model, IMG_SHAPE)
    backbone = model.backbone
    quantized = cfg.test_cfg.get('type') == 'PTQLoop'
    method = 'FP' if not quantized else 'QAT' if row.model != 'fp' else 'PTQ'
    return dict(
        name=row.name,
        method=method,
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
        model=row.model,
        base=row.base,
        img_shape=list(IMG_SHAPE),
        eval_seconds=round(time.time() - start, 1))


def add_speedups(rows: List[Dict]) -> None:
    """Speedup of every row over its base row's BitOPs (PTQ rows: uniform W4A8;
    QAT rows: uniform W4A4 QAT)."""
    bitops = {r['name']: r['bitops_G'] for r in rows}
    for row in rows:
        base = bitops.get(row.get('base', PTQ_BASE))
        row['speedup'] = round(base / row['bitops_G'], 3) if base else None


def compare(rows: Sequence[Dict], work_dir: str, ann_file: str) -> List[Dict]:
    """Evaluate :data:`TARGETS` on the rows present (paired bbox mAP
    differences on val with their standard error over 5 folds)."""
    by_name = {r['name']: r for r in rows}
    folds = min(NUM_FOLDS, len(json.load(open(ann_file))['images']))
    results = []
    for claim, a, b, test in TARGETS:
        if a not in by_name or b not in by_name or folds < 2:
            continue
        preds = [osp.join(work_dir, name, 'preds.bbox.json') for name in (a, b)]
        if not all(osp.isfile(p) for p in preds):
            continue
        diff = paired_difference(ann_file, *(json.load(open(p)) for p in preds),
                                 num_folds=folds)
        met = dict(ge=diff.mean >= 0, gt=diff.mean > 0, within=abs(diff.mean) <= 0.5,
                   noise=diff.exceeds_noise())[test]
        results.append(dict(claim=claim, a=a, b=b, test=test, diff=diff.mean,
                            std_error=diff.std_error, folds=diff.folds, met=bool(met)))
    return results


def format_table(rows: Sequence[Dict]) -> str:
    header = (f"{'name':<26}{'bbox mAP':>9}{'segm mAP':>9}{'speedup':>9}"
              f"{'W':>4}{'A eff':>7}  {'low / prune ratios':<20}{'windows':<14}{'calib':>6}")
    lines = [header, '-' * len(header)]
    for r in rows:
        ratios = '-' if r['low_bit_ratios'] is None else \
            f"{_ratio(r['low_bit_ratios'])} / {_ratio(r['prune_ratios'])}"
        speedup = '-' if r.get('speedup') is None else f"{r['speedup']:.3f}x"
        order = '-' if r.get('window_order') is None else \
            f"{r['window_score']}/{r['window_order'][:3]}"
        stale = '  (stale: inputs changed since)' if r.get('stale') else ''
        lines.append(f"{r['name']:<26}{r['bbox_mAP']:>9.2f}{r['segm_mAP']:>9.2f}"
                     f"{speedup:>9}{r['w_bits']:>4}{r['act_bits']:>7.2f}  "
                     f"{ratios:<20}{order:<14}{r['calib_images']:>6}{stale}")
    return '\n'.join(lines)


def format_targets(targets: Sequence[Dict]) -> str:
    lines = []
    for t in targets:
        lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['claim']}: "
                     f"{t['diff']:+.2f} bbox mAP (standard error {t['std_error']:.2f})")
    return '\n'.join(lines)


def _ratio(values: Sequence[float]) -> str:
    return f'{values[0]:g}' if len(set(values)) == 1 else \
        ','.join(f'{v:g}' for v in values)


def main() -> None:
    args = parse_args()
    ensure_data(args.data_root, args.num_train, args.num_val)
    versions = f'{code_version()}:{data_version(args.data_root)}'
    train_data = data_version(args.data_root, ('train', ))  # models never see val
    wanted = [row for row in ROWS if not args.rows or row.name in args.rows]
    needed = {row.model.split(':')[0] for row in wanted}
    for name, _, parent in reversed(TRAININGS):  # parents of needed trainings
        if name in needed and parent:
            needed.add(parent)
    train_cfgs: Dict[str, Config] = {}
    checkpoints: Dict[str, str] = {}  # final checkpoint of every training
    for name, config, parent in TRAININGS:
        epochs = args.max_epochs if name == 'fp' else args.qat_epochs
        cfg = benchmark_config(config, osp.join(args.work_dir, name), args.data_root,
                               epochs, args.calib_images)
        train_cfgs[name] = cfg
        if name in needed:
            checkpoints[name] = ensure_trained(name, cfg, checkpoints.get(parent),
                                               train_data)
        else:
            checkpoints[name] = osp.join(cfg.work_dir,
                                         f'epoch_{cfg.train_cfg.max_epochs}.pth')
    out = osp.join(args.work_dir, 'results.json')
    saved = json.load(open(out)) if osp.isfile(out) else {}
    previous = {r['name']: r for r in saved.get('rows', [])} \
        if isinstance(saved, dict) else {r['name']: r for r in saved}
    rows = []
    for row in ROWS:
        training, _, init = row.model.partition(':')
        if row.name == 'fp':
            cfg = copy.deepcopy(train_cfgs['fp'])
            cfg.work_dir = osp.join(args.work_dir, 'fp', 'test')
        else:
            cfg = benchmark_config(row.config, osp.join(args.work_dir, row.name),
                                   args.data_root, args.qat_epochs, args.calib_images)
        cfg.merge_from_dict(dict(row.options))
        checkpoint = osp.join(osp.dirname(checkpoints[training]), INIT_CHECKPOINT) \
            if init else checkpoints[training]
        key = fingerprint(cfg, checkpoint, versions) if osp.isfile(checkpoint) else None
        old = previous.get(row.name)
        if row not in wanted:
            if old is not None:  # not asked for: keep it, flagged if outdated
                old['stale'] = old.get('fingerprint') != key
                if not old['stale']:
                    old.pop('stale')
                rows.append(old)
            continue
        if old is not None and old.get('fingerprint') == key:
            print(f'[demo] {row.name}: unchanged, taken from {out}')
            old.pop('stale', None)
            rows.append(old)
            continue
        print(f'[demo] {row.name}: evaluating {row.config} on '
              f'{osp.relpath(checkpoint, args.work_dir)}')
        result = run_row(row, cfg, checkpoint)
        result['config'] = osp.relpath(cfg.filename, REPO)
        result['fingerprint'] = key
        rows.append(result)
        with open(out, 'w') as f:  # progress survives an interruption
            json.dump(dict(rows=rows + [r for n, r in previous.items()
                                        if n not in {x['name'] for x in rows}]), f, indent=2)
    add_speedups(rows)
    ann_file = osp.join(args.data_root, 'annotations', 'instances_val.json')
    targets = compare(rows, args.work_dir, ann_file)
    with open(out, 'w') as f:
        json.dump(dict(rows=rows, targets=targets), f, indent=2)
    for method, base, png in (('PTQ', PTQ_BASE, 'pareto.png'),
                              ('QAT', QAT_BASE, 'pareto_qat.png')):
        plot_rows = [r for r in rows if r.get('method') == method and r.get('speedup')]
        if plot_rows:
            plot_pareto(plot_rows, osp.join(args.work_dir, png),
                        title=f'{method} on the embedded benchmark (val, 320x320)',
                        xlabel=f'BitOPs speedup over {base}')
    print(f'\n[demo] results on the val split of {args.data_root} (speedup: BitOPs of '
          f'the base row / BitOPs of the row, backbone, {IMG_SHAPE[0]}x{IMG_SHAPE[1]}; '
          f'base: {PTQ_BASE} for FP and PTQ rows, {QAT_BASE} for QAT rows):')
    print(format_table(rows))
    if targets:
        print('\n[demo] QAT targets (paired differences on val; standard error from 5 '
              'folds of the val images):')
        print(format_targets(targets))
    print(f'[demo] written: {out}')


if __name__ == '__main__':
    main()
