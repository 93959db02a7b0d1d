"""A table's rows as records, their speedups, the claims between them and the
printed table."""
import json
import os.path as osp
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch.nn as nn

from ..analysis import count_bitops, paired_difference
from ..models import quant_scope
from .rows import Target

#: Folds of the val images for the standard error of a difference.
NUM_FOLDS = 5


def row_record(name: str, model: nn.Module, metrics: Mapping[str, float], trained: str, base: str,
               quantized: bool, calib_images: int, img_shape: Sequence[int],
               seconds: float) -> Dict:
    """A row of results.json: metrics, BitOPs at ``img_shape`` and the model's
    setting (``model`` is the evaluated model, or one built from the same config)."""
    report = count_bitops(model, tuple(img_shape))
    backbone = model.backbone
    method = 'FP' if not quantized else 'QAT' if trained != 'fp' else 'PTQ'
    # mmdet's CocoMetric reports nothing when no image has a detection: COCO's mAP is 0
    no_detections = 'coco/bbox_mAP' not in metrics
    return dict(
        name=name,
        method=method,
        bbox_mAP=round(100 * metrics.get('coco/bbox_mAP', 0.0), 2),
        segm_mAP=round(100 * metrics.get('coco/segm_mAP', 0.0), 2),
        no_detections=no_detections,
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
        img_shape=list(img_shape),
        eval_seconds=round(seconds, 1))


def add_speedups(rows: List[Dict]) -> None:
    """Each row's speedup: its base row's BitOPs over its own (None if the base
    row is absent)."""
    bitops = {r['name']: r['bitops_G'] for r in rows}
    for row in rows:
        base = bitops.get(row.get('base'))
        row['speedup'] = round(base / row['bitops_G'], 3) if base else None


def compare(targets: Sequence[Target], rows: Sequence[Dict], row_dir: Callable[[str], str],
            ann_file: str) -> List[Dict]:
    """The ``targets`` whose two rows are present with their detections (in
    ``row_dir(name)``): paired bbox mAP differences on val with their standard
    error over :data:`NUM_FOLDS` folds of the images."""
    by_name = {r['name']: r for r in rows}
    with open(ann_file) as f:
        folds = min(NUM_FOLDS, len(json.load(f)['images']))
    results = []
    for target in targets:
        if target.a not in by_name or target.b not in by_name or folds < 2:
            continue
        preds = [osp.join(row_dir(name), 'preds.bbox.json') for name in (target.a, target.b)]
        if not all(osp.isfile(p) for p in preds):
            continue
        detections = []
        for path in preds:
            with open(path) as f:
                detections.append(json.load(f))
        diff = paired_difference(ann_file, *detections, num_folds=folds)
        met = dict(
            ge=diff.mean >= 0,
            gt=diff.mean > 0,
            within=abs(diff.mean) <= 0.5,
            noise=diff.exceeds_noise(),
            not_worse=diff.not_worse_beyond_noise())[target.test]
        results.append(
            dict(
                claim=target.claim,
                a=target.a,
                b=target.b,
                test=target.test,
                diff=diff.mean,
                std_error=diff.std_error,
                folds=diff.folds,
                met=bool(met)))
    return results


def format_table(rows: Sequence[Dict]) -> str:
    header = (f"{'name':<26}{'bbox mAP':>9}{'segm mAP':>9}{'speedup':>9}"
              f"{'W':>4}{'A eff':>7}  {'low / prune ratios':<20}{'windows':<14}{'calib':>6}")
    lines = [header, '-' * len(header)]
    for r in rows:
        ratios = '-' if r['low_bit_ratios'] is None else \
            f"{_ratios(r['low_bit_ratios'])} / {_ratios(r['prune_ratios'])}"
        speedup = '-' if r.get('speedup') is None else f"{r['speedup']:.3f}x"
        order = '-' if r.get('window_order') is None else \
            f"{r['window_score']}/{r['window_order'][:3]}"
        stale = '  (stale: inputs changed since)' if r.get('stale') else ''
        lines.append(f"{r['name']:<26}{r['bbox_mAP']:>9.2f}{r['segm_mAP']:>9.2f}"
                     f"{speedup:>9}{r['w_bits']:>4}{r['act_bits']:>7.2f}  "
                     f"{ratios:<20}{order:<14}{r['calib_images']:>6}{stale}")
    return '\n'.join(lines)


def format_targets(targets: Sequence[Dict]) -> str:
    return '\n'.join(f"  [{'met' if t['met'] else 'MISSED'}] {t['claim']}: "
                     f"{t['diff']:+.2f} bbox mAP (standard error {t['std_error']:.2f})"
                     for t in targets)


def _ratios(values: Optional[Sequence[float]]) -> str:
    return f'{values[0]:g}' if len(set(values)) == 1 else ','.join(f'{v:g}' for v in values)
