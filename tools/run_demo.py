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
from mmengine.runner import Runner

import mixaq_mmdet  # noqa: F401  (stack fixes, registries)
from mixaq_mmdet.analysis import (count_bitops, paired_difference, plot_pareto,
                                  plot_policy_curves)
from mixaq_mmdet.datasets import generate_split
from mixaq_mmdet.engine import prepare_test_loop, unwrap
from mixaq_mmdet.engine.hooks.qat_init_hook import INIT_CHECKPOINT
from mixaq_mmdet.models import quant_scope
from mixaq_mmdet.search import (Candidate, RatioEvaluator, RatioSearchSpace,
                                check_branches_calibrated, run_search, uniform_ratio_at,
                                write_searched_config)
from mixaq_mmdet.utils import load_runner_config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
BENCH = osp.join(REPO, 'configs/benchmark')
FP_CONFIG = 'mask-rcnn_swin-nano-p4-w7_fpn_shapes.py'
PTQ_BASE, QAT_BASE = 'uniform_w4a8', 'qat_uniform_w4a4'
IMG_SHAPE = (320, 320)
#: Images per forward on val (all benchmark images have the same size).
EVAL_BATCH = 8
#: A searched point meets its target speedup within this tolerance.
SEARCH_TOLERANCE = 0.02
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
    Row('uniform_w4a3', 'ptq/ptq_uniform_w4a3_shapes.py', 'fp', PTQ_BASE),
    Row('uniform_w4a2', 'ptq/ptq_uniform_w4a2_shapes.py', 'fp', PTQ_BASE),
    Row('mixaq_w4a8a4', 'ptq/ptq_mixaq_w4a8a4_shapes.py', 'fp', PTQ_BASE),
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
#: The paper's claims on the benchmark: (claim, row A, row B, test) with test
#: 'ge' (A >= B), 'gt' (A > B), 'within' (|A - B| <= 0.5 points), 'noise' (A - B
#: above twice its standard error on val) or 'not_worse' (A - B above minus
#: twice its standard error), on bbox mAP.
TARGETS: Tuple[Tuple[str, str, str, str], ...] = (
    ('PTQ A8/A2 1.35x: contrast order above random, beyond noise',
     'policy_w4a8a2_contrast_0.42', 'policy_w4a8a2_random_0.42', 'noise'),
    ('PTQ A8/A2 1.35x: contrast order above its reverse, beyond noise',
     'policy_w4a8a2_contrast_0.42', 'policy_w4a8a2_reverse_0.42', 'noise'),
    ('PTQ A8/A2 1.35x: searched ratios not worse than one ratio for all pairs',
     'search_1.35x', 'uniform_ratio_1.35x', 'not_worse'),
    ('QAT A4/A2 1.35x: searched ratios not worse than one ratio for all pairs',
     'qat_search_1.35x', 'qat_uniform_ratio_1.35x', 'not_worse'),
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


class Sweep(NamedTuple):
    """Rows ``<prefix>_<order>_<ratio>``: PTQ of the FP model with ``config`` for
    each window order of :data:`ORDERS`, calibrated once per order at
    :data:`CALIB_RATIO` on every pair, then evaluated at each of ``ratios``
    (the same ratio on every pair); speedups over the row ``base``."""
    prefix: str
    config: str
    base: str
    ratios: Tuple[float, ...]

    def row_name(self, order: str, ratio: float) -> str:
        return f'{self.prefix}_{order}_{ratio:g}'


#: Window orders of the sweeps: label, score, order. 'random' and 'reverse'
#: use the 'contrast' score (the one the MixA-Q rows use on the benchmark).
ORDERS: Tuple[Tuple[str, str, str], ...] = (
    ('l2', 'l2', 'importance'), ('contrast', 'contrast', 'importance'),
    ('random', 'contrast', 'random'), ('reverse', 'contrast', 'reverse'))
CALIB_RATIO = 0.5
#: Low-bit ratio of W4 A8/A2 at 1.35x over W4A8 (320x320).
RATIO_A2_135 = 0.42
SWEEPS: Tuple[Sweep, ...] = (
    Sweep('policy_w4a8a2', 'ptq/ptq_mixaq_w4a8a2_shapes.py', PTQ_BASE,
          (0.25, RATIO_A2_135, 0.5, 0.75)),
    Sweep('policy_w4a4a2', 'ptq/ptq_mixaq_w4a4a2_shapes.py', 'uniform_w4a4', (0.5, )),
)


class Search(NamedTuple):
    """Rows ``name`` (per-pair ratios searched by NSGA-II on the search split
    for ``target`` x BitOPs speedup) and ``uniform_name`` (one ratio on every
    pair at equal or lower speedup), both on val with the same model: the
    contrast-order model of ``sweep`` (PTQ) or the training ``model`` (QAT)."""
    name: str
    uniform_name: str
    config: str
    model: str
    base: str
    target: float


SEARCHES: Tuple[Search, ...] = (
    Search('search_1.35x', 'uniform_ratio_1.35x', 'ptq/ptq_mixaq_w4a8a2_shapes.py', 'fp',
           PTQ_BASE, 1.35),
    Search('qat_search_1.35x', 'qat_uniform_ratio_1.35x', SAQA, 'qat_saqa_w4a4a2', QAT_BASE,
           1.35),
)
SWEEP_ROWS = {sweep.row_name(label, ratio): sweep for sweep in SWEEPS
              for label, _, _ in ORDERS for ratio in sweep.ratios}
SEARCH_ROWS = {name: search for search in SEARCHES
               for name in (search.name, search.uniform_name)}
ROW_NAMES = [row.name for row in ROWS] + list(SWEEP_ROWS) + list(SEARCH_ROWS)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/shapes_coco')
    parser.add_argument('--num-train', type=int, default=600,
                        help='train images to generate if the data is absent')
    parser.add_argument('--num-val', type=int, default=200,
                        help='val images to generate if the data is absent')
    parser.add_argument('--num-search', type=int, default=100,
                        help='search-split images to generate if absent')
    parser.add_argument('--max-epochs', type=int, default=None,
                        help='override the FP config (a quick run)')
    parser.add_argument('--qat-epochs', type=int, default=None,
                        help='override the QAT configs (a quick run)')
    parser.add_argument('--rows', nargs='+', choices=ROW_NAMES,
                        help='only these rows (default: all)')
    parser.add_argument('--calib-images', type=int, default=None,
                        help='override the calibration size of PTQ and QAT')
    parser.add_argument('--search-images', type=int, default=24,
                        help='search-split images of the ratio searches (proxy objective)')
    parser.add_argument('--search-pop', type=int, default=12, help='NSGA-II population')
    parser.add_argument('--search-gens', type=int, default=5, help='NSGA-II generations')
    return parser.parse_args()


def ensure_data(data_root: str, num_train: int, num_val: int, num_search: int) -> None:
    """Generate each split of the benchmark whose annotation file is absent."""
    sizes = dict(train=num_train, val=num_val, search=num_search)
    missing = [s for s in sizes
               if not osp.isfile(osp.join(data_root, 'annotations', f'instances_{s}.json'))]
    if not missing:
        print(f'[demo] data: {data_root} (present)')
        return
    print('[demo] data: generating ' + ', '.join(f'{sizes[s]} {s}' for s in missing)
          + f' images into {data_root}')
    for split in missing:
        generate_split(data_root, split, sizes[split], seed=0)


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
    if 'search_dataloader' in cfg:
        calib_loaders.append(cfg.search_dataloader)
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
    key = fingerprint(training_config(cfg), parent, data)
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


def training_config(cfg: Config) -> Config:
    """``cfg`` without what training never reads (the ratio search's split)."""
    cfg = copy.deepcopy(cfg)
    cfg.pop('search_dataloader', None)
    return cfg


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
    cfg.test_dataloader.batch_size = EVAL_BATCH
    cfg.test_evaluator.outfile_prefix = osp.join(cfg.work_dir, 'preds')
    runner = Runner.from_cfg(cfg)
    start = time.time()
    metrics = runner.test()
    model = unwrap(runner.model)
    quantized = cfg.test_cfg.get('type') == 'PTQLoop'
    calib = runner.test_loop.num_calib_images if quantized else 0
    return row_record(row.name, model, metrics, row.model, row.base, quantized, calib,
                      time.time() - start)


def row_record(name: str, model, metrics: Dict[str, float], trained: str, base: str,
               quantized: bool, calib_images: int, seconds: float) -> Dict:
    """A row of results.json: metrics, BitOPs and the model's setting."""
    report = count_bitops(model, IMG_SHAPE)
    backbone = model.backbone
    method = 'FP' if not quantized else 'QAT' if trained != 'fp' else 'PTQ'
    return dict(
        name=name,
        method=method,
        bbox_mAP=round(100 * metrics['coco/bbox_mAP'], 2),
        segm_mAP=round(100 * metrics['coco/segm_mAP'], 2),
        bitops_G=round(report.bitops / 1e9, 4),
        w_bits=backbone.w_bits if quantized else 32,
        act_bits=round(report.act_bits, 3),
        a_bits=list(backbone.a_bits) if quantized else [32, 32],
        low_bit_ratios=list(backbone.low_bit_ratios) if quantized else None,
        prune_ratios=list(backbone.prune_ratios) if quantized else None,
        window_score=backbone.policy.score if quantized else None,
        window_order=backbone.policy.order if quantized else None,
        calib_images=calib_images,
        scope=quant_scope(model) if quantized else None,
        model=trained,
        base=base,
        img_shape=list(IMG_SHAPE),
        eval_seconds=round(seconds, 1))


class PreparedModel(NamedTuple):
    """A quantized model ready to evaluate at any ratios on val."""
    runner: Runner
    val: RatioEvaluator
    calib_images: int


def prepare_model(cfg: Config, checkpoint: str) -> PreparedModel:
    """Build ``cfg``'s runner, load ``checkpoint`` and calibrate it (FP
    checkpoint) or check it (calibrated, QAT), as ``tools/test.py`` does."""
    cfg = copy.deepcopy(cfg)
    cfg.load_from, cfg.resume = checkpoint, False
    runner = Runner.from_cfg(cfg)
    loop = prepare_test_loop(runner)
    val = RatioEvaluator(loop.model, loop.dataloader.dataset, batch_size=EVAL_BATCH,
                         metrics=('bbox', 'segm'))
    return PreparedModel(runner, val, loop.num_calib_images)


def evaluate_at(prepared: PreparedModel, name: str, candidate: Candidate, work_dir: str,
                trained: str, base: str) -> Dict:
    """A row: ``prepared`` at ``candidate``'s ratios on val (detections kept)."""
    start = time.time()
    out = osp.join(work_dir, name)
    os.makedirs(out, exist_ok=True)
    metrics = prepared.val.evaluate(candidate, outfile_prefix=osp.join(out, 'preds'))
    return row_record(name, prepared.val.model, metrics, trained, base, True,
                      prepared.calib_images, time.time() - start)


def uniform(ratio: float, num_pairs: int) -> Candidate:
    return Candidate((ratio, ) * num_pairs, (0.0, ) * num_pairs)


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
                   noise=diff.exceeds_noise(), not_worse=diff.not_worse_beyond_noise())[test]
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


def reuse(name: str, key: Optional[str], wanted: Sequence[str],
          previous: Dict[str, Dict]) -> Tuple[bool, Optional[Dict]]:
    """``(done, row)``: a row not asked for keeps its previous result (flagged
    stale if its inputs changed); an asked-for row with the same inputs is
    taken as it was. ``done`` False: compute it."""
    old = previous.get(name)
    if name not in wanted:
        if old is not None:
            old['stale'] = old.get('fingerprint') != key
            if not old['stale']:
                old.pop('stale')
        return True, old
    if old is not None and old.get('fingerprint') == key:
        print(f'[demo] {name}: unchanged, taken from results.json')
        old.pop('stale', None)
        return True, old
    return False, None


class Table:
    """The rows computed or kept so far, saved after each new one (progress
    survives an interruption)."""

    def __init__(self, out: str, previous: Dict[str, Dict]) -> None:
        self.out, self.previous, self.rows = out, previous, []

    def add(self, row: Dict, config: Optional[str] = None, key: Optional[str] = None) -> None:
        if config is not None:
            row.update(config=osp.relpath(config, REPO), fingerprint=key)
        self.rows.append(row)
        if config is not None:
            names = {r['name'] for r in self.rows}
            with open(self.out, 'w') as f:
                json.dump(dict(rows=self.rows + [r for n, r in self.previous.items()
                                                 if n not in names]), f, indent=2)


def run_sweeps(args, fp_checkpoint: str, versions: str, wanted: Sequence[str],
               table: Table, models: Dict[tuple, PreparedModel]) -> None:
    """The rows of :data:`SWEEPS`: one calibration per window order, every
    ratio evaluated on that model."""
    for sweep in SWEEPS:
        for label, score, order in ORDERS:
            cfg = benchmark_config(sweep.config, osp.join(args.work_dir, f'{sweep.prefix}_{label}'),
                                   args.data_root, None, args.calib_images)
            cfg.merge_from_dict({'model.backbone.window_score': score,
                                 'model.backbone.window_order': order,
                                 'model.backbone.low_bit_ratios': CALIB_RATIO})
            key = fingerprint(cfg, fp_checkpoint, versions) if osp.isfile(fp_checkpoint) else None
            for ratio in sweep.ratios:
                name = sweep.row_name(label, ratio)
                row_key = f'{key}:{ratio:g}'
                done, row = reuse(name, row_key, wanted, table.previous)
                if done:
                    if row is not None:
                        table.add(row)
                    continue
                model_key = (sweep.config, score, order, fp_checkpoint)
                if model_key not in models:
                    print(f'[demo] {sweep.prefix}_{label}: calibrating {sweep.config} '
                          f'({score}/{order}, low-bit ratio {CALIB_RATIO} on every pair)')
                    models[model_key] = prepare_model(cfg, fp_checkpoint)
                prepared = models[model_key]
                print(f'[demo] {name}: evaluating at low-bit ratio {ratio:g}')
                row = evaluate_at(prepared, name, uniform(ratio, prepared.val.backbone.num_pairs),
                                  args.work_dir, 'fp', sweep.base)
                table.add(row, cfg.filename, row_key)


def run_searches(args, checkpoints: Dict[str, str], versions: str, wanted: Sequence[str],
                 table: Table, models: Dict[tuple, PreparedModel]) -> None:
    """The rows of :data:`SEARCHES`: NSGA-II on the search split (the proxy
    objective), then the chosen point and the uniform ratio on val."""
    search_data = data_version(args.data_root, ('search', ))
    for search in SEARCHES:
        cfg = benchmark_config(search.config, osp.join(args.work_dir, search.name),
                               args.data_root, args.qat_epochs, args.calib_images)
        checkpoint = checkpoints[search.model]
        if search.model == 'fp':
            cfg.merge_from_dict({'model.backbone.low_bit_ratios': CALIB_RATIO})
        settings = (f'{search.target}:{SEARCH_TOLERANCE}:{args.search_images}:'
                    f'{args.search_pop}:{args.search_gens}')
        key = fingerprint(cfg, checkpoint, f'{versions}:{search_data}:{settings}') \
            if osp.isfile(checkpoint) else None
        results = [reuse(name, key, wanted, table.previous)
                   for name in (search.name, search.uniform_name)]
        if all(done for done, _ in results):
            for _, row in results:
                if row is not None:
                    table.add(row)
            continue
        backbone = cfg.model.backbone
        model_key = (search.config, backbone.window_score, backbone.window_order, checkpoint)
        if model_key not in models:
            print(f'[demo] {search.name}: preparing {search.config} on '
                  f'{osp.relpath(checkpoint, args.work_dir)}')
            models[model_key] = prepare_model(cfg, checkpoint)
        prepared = models[model_key]
        model = prepared.val.model
        evaluator = RatioEvaluator(model, cfg.search_dataloader.dataset,
                                   num_images=args.search_images, batch_size=EVAL_BATCH)
        check_branches_calibrated(model.backbone)
        print(f'[demo] {search.name}: NSGA-II ({args.search_pop} x {args.search_gens}, '
              f'proxy objective on {evaluator.num_images} search images) for '
              f'{search.target}x +- {SEARCH_TOLERANCE}')
        start = time.time()
        work_dir = osp.join(args.work_dir, search.name)
        os.makedirs(work_dir, exist_ok=True)
        result, chosen = run_search(
            evaluator, RatioSearchSpace(model.backbone.num_pairs), 'proxy', [search.target],
            SEARCH_TOLERANCE, pop_size=args.search_pop, generations=args.search_gens,
            cache_path=osp.join(work_dir, f'search_cache_{key}.json'))
        seconds = time.time() - start
        point = chosen[search.target]
        base = uniform_ratio_at(evaluator, evaluator.uniform_cost() / point.cost)
        print(f'[demo] {search.name}: searched in {seconds / 60:.1f} min '
              f'({len(result.evaluations)} candidates): low-bit ratios '
              f'{list(point.candidate.low_bit_ratios)}; uniform ratio {base.low_bit_ratios[0]:g}')
        write_searched_config(cfg.filename, point.candidate,
                              osp.join(work_dir, f'searched_{search.target:g}x.py'),
                              note=f'Searched by make demo for {search.target:g}x.')
        for name, candidate in ((search.name, point.candidate), (search.uniform_name, base)):
            row = evaluate_at(prepared, name, candidate, args.work_dir, search.model, search.base)
            row.update(search_seconds=round(seconds, 1),
                       search_candidates=len(result.evaluations))
            table.add(row, cfg.filename, key)


def main() -> None:
    args = parse_args()
    ensure_data(args.data_root, args.num_train, args.num_val, args.num_search)
    versions = f'{code_version()}:{data_version(args.data_root)}'
    train_data = data_version(args.data_root, ('train', ))  # models never see val
    wanted = [name for name in ROW_NAMES if not args.rows or name in args.rows]
    needed = {row.model.split(':')[0] for row in ROWS if row.name in wanted}
    needed.add('fp')
    needed.update(s.model for s in SEARCHES if {s.name, s.uniform_name} & set(wanted))
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
    table = Table(out, previous)
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
        done, old = reuse(row.name, key, wanted, previous)
        if done:
            if old is not None:
                table.add(old)
            continue
        print(f'[demo] {row.name}: evaluating {row.config} on '
              f'{osp.relpath(checkpoint, args.work_dir)}')
        table.add(run_row(row, cfg, checkpoint), cfg.filename, key)
    models: Dict[tuple, PreparedModel] = {}
    run_sweeps(args, checkpoints['fp'], versions, wanted, table, models)
    run_searches(args, checkpoints, versions, wanted, table, models)
    rows = table.rows
    add_speedups(rows)
    ann_file = osp.join(args.data_root, 'annotations', 'instances_val.json')
    targets = compare(rows, args.work_dir, ann_file)
    with open(out, 'w') as f:
        json.dump(dict(rows=rows, targets=targets), f, indent=2)
    for method, base, png in (('PTQ', PTQ_BASE, 'pareto.png'),
                              ('QAT', QAT_BASE, 'pareto_qat.png')):
        plot_rows = [r for r in rows if r.get('method') == method and r.get('speedup')
                     and r['name'] not in SWEEP_ROWS]
        if plot_rows:
            plot_pareto(plot_rows, osp.join(args.work_dir, png),
                        title=f'{method} on the embedded benchmark (val, 320x320)',
                        xlabel=f'BitOPs speedup over {base}')
    plot_policy(rows, osp.join(args.work_dir, 'policy_curve.png'))
    print(f'\n[demo] results on the val split of {args.data_root} (speedup: BitOPs of '
          f'the base row / BitOPs of the row, backbone, {IMG_SHAPE[0]}x{IMG_SHAPE[1]}; '
          f'base: {PTQ_BASE} for FP and PTQ rows ({SWEEPS[1].prefix}: {SWEEPS[1].base}), '
          f'{QAT_BASE} for QAT rows):')
    print(format_table(rows))
    if targets:
        print('\n[demo] targets (paired differences on val; standard error from 5 '
              'folds of the val images):')
        print(format_targets(targets))
    print(f'[demo] written: {out}')


def plot_policy(rows: Sequence[Dict], out_file: str) -> None:
    """bbox mAP against speedup over W4A8 along the low-bit ratio of the W4
    A8/A2 sweep, one line per window order from uniform W4A8 (ratio 0) to
    uniform W4A2 (ratio 1); the uniform bit widths and the searched point."""
    by_name = {r['name']: r for r in rows if r.get('speedup')}
    sweep = SWEEPS[0]
    ends = [by_name[n] for n in (PTQ_BASE, 'uniform_w4a2') if n in by_name]
    curves = {}
    for label, score, order in ORDERS:
        points = [by_name[sweep.row_name(label, r)] for r in sweep.ratios
                  if sweep.row_name(label, r) in by_name]
        if points:
            name = f'{score}/{order}' if order != 'importance' else f'{score} (importance)'
            curves[name] = [(r['speedup'], r['bbox_mAP']) for r in ends[:1] + points + ends[1:]]
    singles = [(n, by_name[n]['speedup'], by_name[n]['bbox_mAP'])
               for n in ('uniform_w4a8', 'uniform_w4a6', 'uniform_w4a4', 'uniform_w4a3',
                         'uniform_w4a2', 'search_1.35x') if n in by_name]
    if curves:
        plot_policy_curves(curves, singles, out_file,
                           title='Window policy, PTQ W4 A8/A2 (val, 320x320)',
                           xlabel=f'BitOPs speedup over {PTQ_BASE}')


if __name__ == '__main__':
    main()
