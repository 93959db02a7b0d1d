"""A table's rows' speedups and means over seeds, the claims between them and
the printed table."""
import dataclasses
import json
import os.path as osp
import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..analysis import SeededDifference, over_seeds, paired_difference, plot_pareto
from .records import RowRecord
from .rows import Published, Table, Target

#: Folds of the val images for the standard error of a difference.
NUM_FOLDS = 5
#: The 'within' test: how far (bbox mAP points) A may fall below B.
WITHIN = 0.5
#: The 'equal' test: how far (bbox mAP points) A may lie from B, either side.
EQUAL = 0.1
#: A claim 'met' beyond its noise, holding only as a point estimate (noise
#: could reverse it), or not holding.
VERDICTS = ('met', 'within noise', 'MISSED')
#: (seed, folder) of each evaluation of a row (seed None: evaluated once).
SeedDirs = Callable[[str], List[Tuple[Optional[int], str]]]


def add_speedups(rows: List[RowRecord]) -> None:
    """Each row's speedup: its base row's BitOPs over its own (None if the base
    row is absent)."""
    bitops = {r.name: r.bitops_G for r in rows}
    for row in rows:
        base = bitops.get(row.base)
        row.speedup = round(base / row.bitops_G, 3) if base else None


def with_seed_means(rows: Sequence[RowRecord]) -> List[RowRecord]:
    """``rows`` with the mean over seeds of each row evaluated per seed (its
    records carry ``row`` and ``seed``), placed before the first of them."""
    groups: Dict[str, List[RowRecord]] = {}
    for r in rows:
        if r.seed is not None:
            groups.setdefault(r.row, []).append(r)
    out = []
    for r in rows:
        if r.seeds is not None:  # a mean of an earlier run: computed anew
            continue
        if r.seed is not None and r is groups[r.row][0]:
            out.append(seed_mean(groups[r.row]))
        out.append(r)
    return out


def seed_mean(records: Sequence[RowRecord]) -> RowRecord:
    """One row from its per-seed records: bbox and segm mAP averaged, with the
    per-seed values and their standard deviation; the setting of the first."""
    first = records[0]
    mean = dataclasses.replace(
        first,
        name=first.row,
        row=None,
        seed=None,
        fingerprint=None,
        commands=[],
        model=re.sub(r'@seed\d+', '', first.model),
        seeds=[r.seed for r in records],
        no_detections=any(r.no_detections for r in records),
        stale=any(r.stale for r in records),
        trained_by_other_code=any(r.trained_by_other_code for r in records),
        eval_seconds=round(sum(r.eval_seconds for r in records), 1))
    for metric in ('bbox_mAP', 'segm_mAP'):
        values = [getattr(r, metric) for r in records]
        setattr(mean, metric, round(float(np.mean(values)), 2))
        setattr(mean, f'{metric}_seeds', values)
        setattr(mean, f'{metric}_std',
                round(float(np.std(values, ddof=1)), 2) if len(values) > 1 else 0.0)
    return mean


def verdict(test: str, diff: SeededDifference) -> str:
    """How ``diff`` (A - B) stands on the claim ``test``: one of :data:`VERDICTS`.

    'met' needs the claim to hold two standard errors away from the point
    estimate (for 'noise' and 'not_worse', which already count the noise, the
    test itself)."""
    m, e = diff.mean, 2 * diff.std_error
    holds, shown = dict(
        ge=(m >= 0, m - e >= 0),
        gt=(m > 0, m - e > 0),
        within=(m >= -WITHIN, m - e >= -WITHIN),
        equal=(abs(m) <= EQUAL, abs(m) + e <= EQUAL),
        noise=(m > e, m > e),
        not_worse=(m >= -e, m >= -e))[test]
    return VERDICTS[0] if shown else VERDICTS[1] if holds else VERDICTS[2]


def pair_seeds(a: List[Tuple[Optional[int], str]],
               b: List[Tuple[Optional[int], str]]) -> List[Tuple[Optional[int], str, str]]:
    """(seed, folder of A, folder of B) of each paired evaluation: the same
    seed where both rows are seeded, else the one-off row against each seed."""
    if a[0][0] is None or b[0][0] is None:
        return [(sa if sa is not None else sb, da, db) for sa, da in a for sb, db in b]
    folders = dict(b)
    return [(seed, folder, folders[seed]) for seed, folder in a if seed in folders]


def compare(targets: Sequence[Target], rows: Sequence[RowRecord], seed_dirs: SeedDirs,
            ann_file: str) -> List[Dict]:
    """The ``targets`` whose two rows are present with their detections (in
    the folders ``seed_dirs(name)``): paired bbox mAP differences on val, per
    seed, their mean and standard error over :data:`NUM_FOLDS` folds of the
    images and over the seeds (:func:`~mixaq_mmdet.analysis.over_seeds`)."""
    by_name = {r.name: r for r in rows}
    with open(ann_file) as f:
        folds = min(NUM_FOLDS, len(json.load(f)['images']))
    results = []
    loaded: Dict[str, List[Dict]] = {}

    def detections(folder: str) -> List[Dict]:
        if folder not in loaded:
            with open(osp.join(folder, 'preds.bbox.json')) as f:
                loaded[folder] = json.load(f)
        return loaded[folder]

    for target in targets:
        if target.a not in by_name or target.b not in by_name or folds < 2:
            continue
        pairs = pair_seeds(seed_dirs(target.a), seed_dirs(target.b))
        if not pairs or not all(
                osp.isfile(osp.join(folder, 'preds.bbox.json')) for _, *folders in pairs
                for folder in folders):
            continue
        diff = over_seeds([
            paired_difference(ann_file, detections(da), detections(db), num_folds=folds)
            for _, da, db in pairs
        ])
        status = verdict(target.test, diff)
        seeds = [seed for seed, _, _ in pairs]
        results.append(
            dict(
                claim=target.claim,
                a=target.a,
                b=target.b,
                test=target.test,
                diff=diff.mean,
                std_error=diff.std_error,
                std_error_images=diff.std_error_images,
                std_error_seeds=diff.std_error_seeds,
                seeds=None if seeds == [None] else seeds,
                per_seed=diff.per_seed,
                folds=folds,
                status=status,
                met=status == VERDICTS[0]))
    return results


def format_table(rows: Sequence[RowRecord],
                 published: Optional[Mapping[str, Sequence[Published]]] = None) -> str:
    """The rows as a text table; with ``published`` (row name -> figures), a
    last column of the published box / mask AP of each row, marked as such."""
    width = 36 if published is not None else 30
    header = (f"{'name':<{width}}{'bbox mAP':>9}{'segm mAP':>9}{'speedup':>9}{'backbone':>10}"
              f"{'W':>4}{'A eff':>7}  {'low / prune ratios':<20}{'windows':<14}{'calib':>6}")
    if published is not None:
        header += '  published box / mask AP (not run here)'
    lines = [header, '-' * len(header)]
    for r in rows:
        if r.seed is not None:  # in results.json; the table shows their mean
            continue
        ratios = '-' if r.low_bit_ratios is None else \
            f"{_ratios(r.low_bit_ratios)} / {_ratios(r.prune_ratios)}"
        speedup = '-' if r.speedup is None else f"{r.speedup:.3f}x"
        order = '-' if r.window_order is None else f"{r.window_score}/{r.window_order[:3]}"
        stale = '  (stale: inputs changed since)' if r.stale else ''
        other = '  (model trained by other code)' if r.trained_by_other_code else ''
        seeds = f"  (mean of {len(r.seeds)} seeds, bbox sd {r.bbox_mAP_std:.2f})" \
            if r.seeds else ''
        latency = '-' if r.backbone_ms is None else f"{r.backbone_ms:.1f}ms"
        reference = ''
        if published is not None:
            reference = '  ' + ('; '.join(map(str, published.get(r.name, ()))) or '-')
        lines.append(f"{r.name:<{width}}{r.bbox_mAP:>9.2f}{r.segm_mAP:>9.2f}"
                     f"{speedup:>9}{latency:>10}{r.w_bits:>4}{r.act_bits:>7.2f}  "
                     f"{ratios:<20}{order:<14}{r.calib_images:>6}{reference}{seeds}{stale}{other}")
    return '\n'.join(lines)


def format_targets(targets: Sequence[Dict]) -> str:
    lines = []
    for t in targets:
        seeds = '' if not t.get('seeds') else \
            f"; images {t['std_error_images']:.2f}, seeds {t['std_error_seeds']:.2f}; per seed " + \
            ', '.join(f'{d:+.2f}' for d in t['per_seed'])
        lines.append(f"  [{t['status']}] {t['claim']}: {t['diff']:+.2f} bbox mAP "
                     f"(standard error {t['std_error']:.2f}{seeds})")
    return '\n'.join(lines)


def published_figures(table: Table) -> Optional[Dict[str, Tuple[Published, ...]]]:
    """The published figures of the table's rows (None: it has none)."""
    figures = {r.name: r.published for r in table.rows if r.published}
    return figures or None


def _ratios(values: Optional[Sequence[float]]) -> str:
    return f'{values[0]:g}' if len(set(values)) == 1 else ','.join(f'{v:g}' for v in values)


def plot_table(table: Table, rows: Sequence[RowRecord], work_dir: str) -> None:
    """The table's Pareto plot of each method (the mean row of a seeded row,
    rows marked ``plotted``) and its extra plots, into ``work_dir``."""
    dicts = [r.to_dict() for r in rows]
    for method, (base, png) in table.plots.items():
        points = [
            d for d, r in zip(dicts, rows)
            if r.method == method and r.speedup and r.plotted and r.seed is None
        ]
        if points:
            plot_pareto(
                points,
                osp.join(work_dir, png),
                title=f'{method} on {table.title}',
                xlabel=f'BitOPs speedup over {base}')
    for draw, png in table.extra_plots:
        draw(dicts, osp.join(work_dir, png))
