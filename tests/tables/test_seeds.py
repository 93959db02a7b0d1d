"""Seeded trainings: each seed trained from the same seed of its parent, each
row evaluated per seed and reported as the mean, claims judged over seeds."""
import json
import os
import os.path as osp

import pytest

from mixaq_mmdet.analysis import over_seeds, paired_difference
from mixaq_mmdet.tables import BENCHMARK, Row, Table, TableRunner, Target, Training
from .test_tables import _record as record

QAT = 'qat/qat_uniform_w4a4_shapes.py'
#: How many val images each (model, seed) detects perfectly.
HITS = {
    'fp': 1,
    'a@seed0': 3,
    'a@seed1': 4,
    'a@seed2': 2,
    'b@seed0': 4,
    'b@seed1': 4,
    'b@seed2': 3,
    'c': 2
}


class RecordingExecutor:
    """Stands in for the tools: records what it is asked to train and writes
    detections whose quality is set by :data:`HITS`."""
    dry_run = False

    def __init__(self, ann_file: str) -> None:
        with open(ann_file) as f:
            gt = json.load(f)
        self.images = sorted(i['id'] for i in gt['images'])
        self.boxes = {a['image_id']: a for a in gt['annotations']}
        self.trained, self.evaluated = [], []

    def train(self, tc, parent, resume):
        self.trained.append((osp.basename(tc.work_dir), parent, tc.cfg.randomness.seed))
        os.makedirs(tc.work_dir, exist_ok=True)
        with open(osp.join(tc.work_dir, f'epoch_{tc.cfg.train_cfg.max_epochs}.pth'), 'w') as f:
            f.write(osp.basename(tc.work_dir))
        return ['train']

    side_by_side = True

    def evaluate(self, info, tc, checkpoint):
        self.evaluated.append((info.name, info.model))
        hits = HITS[info.model]
        detections = [
            dict(
                image_id=i,
                category_id=self.boxes[i]['category_id'],
                score=0.9,
                bbox=self.boxes[i]['bbox'] if k < hits else [0, 0, 1, 1])
            for k, i in enumerate(self.images) if i in self.boxes
        ]
        prefix = tc.cfg.test_evaluator.outfile_prefix
        os.makedirs(osp.dirname(prefix), exist_ok=True)
        with open(prefix + '.bbox.json', 'w') as f:
            json.dump(detections, f)
        return record(
            info.name,
            method=info.method,
            bbox_mAP=10.0 * hits,
            segm_mAP=hits,
            model=info.model,
            base=info.base,
            commands=['test'])


def _table(root: str) -> Table:
    return Table(
        name='seeded',
        title='seeded',
        config_root=BENCHMARK.config_root,
        data_root=root,
        ann_files=BENCHMARK.ann_files,
        img_shape=(320, 320),
        seeds=(0, 1, 2),
        trainings=(Training('fp', 'mask-rcnn_swin-nano-p4-w7_fpn_shapes.py'),
                   Training('a', QAT, 'fp',
                            seeded=True), Training('b', QAT, 'a',
                                                   seeded=True), Training('c', QAT, 'a')),
        rows=(Row('fp', QAT, 'fp', 'fp', 'QAT'), Row('a', QAT, 'a', 'fp', 'QAT'),
              Row('b', QAT, 'b', 'fp', 'QAT'), Row('c', QAT, 'c', 'fp', 'QAT')),
        targets=(Target('a above fp', 'a', 'fp', 'gt'), Target('b above a', 'b', 'a', 'gt')))


def _vals(detections_dir):
    with open(osp.join(detections_dir, 'preds.bbox.json')) as f:
        return json.load(f)


def test_seeded_trainings_rows_and_claims(tiny_shapes, tmp_path):
    table = _table(tiny_shapes)
    ann = osp.join(tiny_shapes, table.ann_files['val'])
    executor = RecordingExecutor(ann)
    work = str(tmp_path / 'work')
    rows, targets = TableRunner(table, work, executor).run()
    final = {n: f'{work}/{n}/epoch_{1 if n != "fp" else 7}.pth' for n in HITS}
    # each seed from the same seed of its parent, an unseeded child from seed 0
    assert executor.trained == [('fp', None, 0)] + [
        (f'a@seed{s}', final['fp'], s) for s in range(3)
    ] + [(f'b@seed{s}', final[f'a@seed{s}'], s) for s in range(3)] + [('c', final['a@seed0'], 0)]
    by_name = {r.name: r for r in rows}
    assert [r.name for r in rows] == [
        'fp', 'a', 'a@seed0', 'a@seed1', 'a@seed2', 'b', 'b@seed0', 'b@seed1', 'b@seed2', 'c'
    ]
    assert by_name['a'].bbox_mAP == 30.0 and by_name['a'].bbox_mAP_seeds == [30, 40, 20]
    assert by_name['a'].seeds == [0, 1, 2] and by_name['a'].bbox_mAP_std == 10.0
    assert by_name['a'].model == 'a' and by_name['a@seed1'].model == 'a@seed1'
    assert by_name['a@seed1'].row == 'a' and by_name['a@seed1'].seed == 1
    # a seeded row against a one-off row: each seed against it; two seeded rows:
    # seed by seed
    claims = {t['claim']: t for t in targets}
    seeds = {s: f'{work}/a@seed{s}/test' for s in range(3)}
    expected = over_seeds([
        paired_difference(ann, _vals(seeds[s]), _vals(f'{work}/fp/test'), num_folds=4)
        for s in range(3)
    ])
    assert claims['a above fp']['seeds'] == [0, 1, 2]
    assert claims['a above fp']['diff'] == expected.mean
    assert claims['a above fp']['per_seed'] == expected.per_seed
    assert claims['a above fp']['std_error'] == expected.std_error > expected.std_error_images
    b_minus_a = [
        paired_difference(ann, _vals(f'{work}/b@seed{s}/test'), _vals(seeds[s]), num_folds=4).mean
        for s in range(3)
    ]
    assert claims['b above a']['per_seed'] == b_minus_a
    assert claims['b above a']['status'] in ('met', 'within noise', 'MISSED')
    with open(osp.join(work, 'results.json')) as f:
        saved = json.load(f)
    assert [r['name'] for r in saved['rows']] == [r.name for r in rows]
    assert sorted(saved['trainings']) == sorted(HITS)
    assert saved['seeds'] == [0, 1, 2] and saved['seeded_trainings'] == ['a', 'b']
    # a rerun trains and evaluates nothing, and gives the same table
    again = RecordingExecutor(ann)
    rows_again, targets_again = TableRunner(table, work, again).run()
    assert again.trained == [] and again.evaluated == []
    assert rows_again == rows and targets_again == targets


@pytest.mark.parametrize('diff, std_error, test, status', [
    (1.0, 0.4, 'gt', 'met'),
    (0.5, 0.4, 'gt', 'within noise'),
    (-0.1, 0.4, 'ge', 'MISSED'),
    (-0.3, 0.05, 'within', 'met'),
    (-0.3, 0.2, 'within', 'within noise'),
    (-0.6, 0.1, 'within', 'MISSED'),
    (0.5, 0.4, 'noise', 'MISSED'),
    (-0.5, 0.4, 'not_worse', 'met'),
])
def test_a_claim_is_met_only_beyond_its_noise(diff, std_error, test, status):
    from mixaq_mmdet.analysis import SeededDifference
    from mixaq_mmdet.tables.report import verdict
    assert verdict(test, SeededDifference(diff, std_error, std_error, 0.0, [diff])) == status
