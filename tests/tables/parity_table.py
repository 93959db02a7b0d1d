"""Runs a small table in process or launched (``python parity_table.py
DATA_ROOT WORK_DIR local|launched``), for tests/tables/test_parity.py: every
kind of row the runner computes, on the benchmark's configs."""
import sys

import mixaq_mmdet  # noqa: F401  (stack fixes, registries)
from mixaq_mmdet.tables import (BENCHMARK, LaunchExecutor, LocalExecutor, Ratios, Row, Search,
                                SearchSettings, Table, TableRunner, Training)
from mixaq_mmdet.tables.configs import quick_options

FP = 'mask-rcnn_swin-nano-p4-w7_fpn_shapes.py'
MIXAQ = 'ptq/ptq_mixaq_w4a8a2_shapes.py'
BASE = 'uniform_w4a8'


def _calibrated(name: str, a_bits) -> Row:
    """A row of its own calibration at the ratio 0.5, evaluated at 0.25."""
    return Row(
        name,
        MIXAQ,
        'fp',
        BASE,
        'PTQ',
        options=(('model.backbone.a_bits', a_bits), ),
        ratios=Ratios(0.25),
        calibration=name,
        calib_ratios=Ratios(0.5))


def parity_table(data_root: str) -> Table:
    """Rows on their own config, two calibrations that differ only in
    ``a_bits``, and a prune search with its uniform-ratio rows; its search
    split is the training split, as on COCO (calibration images left out)."""
    return Table(
        name='parity',
        title='parity',
        config_root=BENCHMARK.config_root,
        data_root=data_root,
        ann_files=dict(BENCHMARK.ann_files, search=BENCHMARK.ann_files['train']),
        img_shape=(320, 320),
        eval_batch=4,
        validate_trainings=False,
        search_tolerance=0.1,
        search_settings=SearchSettings(pop=4, gens=1, images=3),
        trainings=(Training('fp', FP), ),
        rows=(Row('fp', FP, 'fp', BASE,
                  'FP'), Row(BASE, 'ptq/ptq_uniform_w4a8_shapes.py', 'fp', BASE,
                             'PTQ'), _calibrated('a8a2', [8, 2]), _calibrated('a8a4', [8, 4])),
        searches=(Search(
            'prune_search',
            MIXAQ,
            'fp',
            BASE, (1.4, ),
            'PTQ',
            uniform_name='prune_uniform',
            prune=True), ))


def search_on_train(cfg):
    """The search split moved to the training images (what COCO does)."""
    if 'search_dataloader' not in cfg:
        return ()
    return (('search_dataloader.dataset.ann_file', 'annotations/instances_train.json'),
            ('search_dataloader.dataset.data_prefix.img', 'train/'))


def main() -> None:
    data_root, work_dir, how = sys.argv[1:]
    table = parity_table(data_root)
    executor = LocalExecutor(table) if how == 'local' else LaunchExecutor(table, gpus=0)
    quick = quick_options(max_epochs=1, calib_images=4)
    TableRunner(
        table, work_dir, executor, data_root,
        options=lambda cfg: quick(cfg) + search_on_train(cfg)).run()


if __name__ == '__main__':
    main()
