"""The tables as data, their configs as command lines, and the content-keyed cache."""
import argparse
import dataclasses
import glob
import json
import os
import os.path as osp
import shutil

import pytest
from mmengine.config import Config, DictAction

from mixaq_mmdet.tables import (BENCHMARK, COCO, TABLES, Ratios, ResultStore, Row, Search, Table,
                                TableConfig, Target, Training, fingerprint, relocation_options,
                                tool_command)
from mixaq_mmdet.tables.executors import calibrated_images_in, read_test_metrics
from mixaq_mmdet.tables.records import RowRecord, calibrated_images
from ..conftest import REPO


def _table(**changes) -> Table:
    fields = dict(
        name='t',
        title='t',
        config_root=BENCHMARK.config_root,
        data_root='d',
        ann_files=dict(train='a', val='b'),
        img_shape=(32, 32),
        trainings=(Training('fp', 'fp.py'), Training('q', 'q.py', 'fp')),
        rows=(Row('fp', 'fp.py', 'fp', 'fp', 'FP'), Row('q', 'q.py', 'q', 'fp', 'QAT')))
    fields.update(changes)
    return Table(**fields)


def _calibrated(name: str, model: str, ratio: float, calib_ratio: float) -> Row:
    """A row of the calibration 'c' at ``calib_ratio``, evaluated at ``ratio``."""
    return Row(
        name,
        'x.py',
        model,
        'a',
        'PTQ',
        ratios=Ratios(ratio),
        calibration='c',
        calib_ratios=Ratios(calib_ratio))


@pytest.mark.parametrize('changes, message', [
    (dict(rows=(Row('fp', 'fp.py', 'fp', 'fp', 'FP'), Row('fp', 'q.py', 'q', 'fp', 'QAT'))),
     "row names repeat: ['fp']"),
    (dict(rows=(Row('x', 'x.py', 'qat', 'x', 'QAT'), )), "x uses model 'qat', not one of"),
    (dict(trainings=(Training('q', 'q.py', 'fp'), Training('fp', 'fp.py'))),
     "training q continues 'fp', which is not a training listed before it"),
    (dict(targets=(Target('claim', 'fp', 'nope', 'gt'), )), "names row 'nope'"),
    (dict(ann_files=dict(train='a')), 'ann_files needs the splits train, val'),
    (dict(seeds=()), r'seeds must be distinct non-negative integers, got \(\)'),
    (dict(seeds=(1, 1)), r'seeds must be distinct non-negative integers, got \(1, 1\)'),
    (dict(
        trainings=(Training('fp', 'fp.py', checkpoint='fp.pth', seeded=True),
                   Training('q', 'q.py', 'fp'))), 'training fp is a given checkpoint'),
    (dict(rows=(_calibrated('a', 'fp', 0.2, 0.5), _calibrated('b', 'q', 0.4, 0.5))),
     "rows a and b share calibration 'c' but not"),
    (dict(rows=(_calibrated('a', 'fp', 0.2, 0.5), _calibrated('b', 'fp', 0.4, 0.3))),
     "rows a and b share calibration 'c' but not"),
])
def test_a_table_that_does_not_hold_together_is_refused(changes, message):
    with pytest.raises(ValueError, match=message.replace('[', r'\[').replace(']', r'\]')):
        _table(**changes)


@pytest.mark.parametrize('make, message', [
    (lambda: Row('r', 'c.py', 'fp', 'fp', 'QAT?'), r"r: method 'QAT\?' is not one of"),
    (lambda: Row('r', 'c.py', 'fp', 'fp', 'PTQ',
                 (('model.backbone.low_bit_ratios', 0.5), )), 'set the ratios as ratios=Ratios'),
    (lambda: Row('r', 'c.py', 'fp', 'fp', 'PTQ', calibration='c'), 'a row of a calibration'),
    (lambda: Row('r', 'c.py', 'fp', 'fp', 'PTQ', ratios=Ratios(0.2), calibration='c'),
     'a row of a calibration'),
    (lambda: Ratios(1.5), r'Ratios.low_bit must be a ratio in \[0, 1\]'),
    (lambda: Ratios(0.5, (0.1, -0.1)), r'Ratios.prune must be a ratio in \[0, 1\]'),
    (lambda: Ratios((0.1, 0.2)).candidate(3), 'gives 2 ratios; the backbone has 3 pairs'),
    (lambda: Ratios(0.7, 0.4).candidate(2), 'low-bit plus prune ratio exceeds 1'),
    (lambda: Search('s', 'c.py', 'fp', 'fp', (1.35, ), 'FP'), 'a search needs a quantized model'),
])
def test_rows_and_ratios_that_do_not_make_sense_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_ratios_are_typed_and_become_options_and_candidates():
    ratios = Ratios(0.5, 0.2)
    assert ratios.options() == (('model.backbone.low_bit_ratios', 0.5),
                                ('model.backbone.prune_ratios', 0.2))
    candidate = ratios.candidate(3)
    assert candidate.low_bit_ratios == (0.5, ) * 3 and candidate.prune_ratios == (0.2, ) * 3
    per_pair = Row('r', 'c.py', 'fp', 'fp', 'PTQ', (('x', 1), ), ratios=Ratios((0.1, 0.3)))
    assert per_pair.evaluated_options == (('x', 1), ('model.backbone.low_bit_ratios', (0.1, 0.3)),
                                          ('model.backbone.prune_ratios', 0.0))


def test_every_row_of_the_tables_states_its_method():
    """The method comes from the table, not from a training's name: FP is a
    float model (a training that continues none) evaluated with its own config,
    PTQ another config on a float model, QAT a quantized training's row."""
    for table in TABLES.values():
        floats = {t.name for t in table.trainings if t.parent is None}
        for row in table.rows:
            fp = row.model in floats and row.config == table.training(row.model).config
            expected = 'FP' if fp else 'PTQ' if row.model in floats else 'QAT'
            assert row.method == expected, (table.name, row.name)
        for search in table.searches:
            assert search.method == ('PTQ' if search.model in floats else 'QAT'), search.name


def test_a_target_with_an_unknown_test_is_refused():
    with pytest.raises(ValueError, match=r"test 'better' is not one of \('ge', 'gt'"):
        Target('claim', 'a', 'b', 'better')


def test_needed_trainings_include_the_parents_in_order():
    assert COCO.needed_trainings(['qat_mixaq_prune_1.82x']) == ('fp', 'qat_uniform_w4a4',
                                                                'qat_saqa_prune_w4a4a2')
    assert COCO.needed_trainings(['uniform_w4a8']) == ('fp', )
    # a search uses the first seed of a seeded model, a row every seed
    assert BENCHMARK.needed_trainings(['qat_search_1.35x']) == ('fp', 'qat_uniform_w4a4@seed0',
                                                                'qat_saqa_w4a4a2@seed0')
    assert BENCHMARK.needed_trainings([
        'qat_saqa_all_high'
    ]) == ('fp', 'qat_uniform_w4a4@seed0', 'qat_uniform_w4a4@seed1', 'qat_uniform_w4a4@seed2',
           'qat_saqa_w4a4a2@seed0', 'qat_saqa_w4a4a2@seed1', 'qat_saqa_w4a4a2@seed2')
    # an unseeded training continues the first seed of its parent
    assert BENCHMARK.needed_trainings(['qat_mixaq_prune_1.5x']) == ('fp', 'qat_uniform_w4a4@seed0',
                                                                    'qat_saqa_prune_w4a4a2')


def test_the_coco_table_has_the_papers_rows_and_uses_every_mixaq_config():
    used = {t.config
            for t in COCO.trainings} | {r.config
                                        for r in COCO.rows} | {s.config
                                                               for s in COCO.searches}
    configs = {
        osp.relpath(p, COCO.config_root)
        for p in glob.glob(osp.join(COCO.config_root, '**', '*.py'), recursive=True)
    }
    # the 1x model is not the paper's base: it is kept to evaluate its own checkpoint;
    # the -amp config is another recipe for the qat_uniform_w4a4 training, not a row
    # (tests/tools/test_smoke_coco.py checks that the smoke runs both)
    assert configs - used == {
        'mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', 'qat/qat_uniform_w4a4-amp_swin-t_coco.py'
    }
    assert used <= configs
    names = set(COCO.row_names)
    assert {
        'fp', 'uniform_w4a8', 'mixaq_w4a8a4_1.24x', 'mixaq_w4a8a4_1.35x',
        'mixaq_w4a8a4_prune_1.52x', 'qat_uniform_w4a4', 'qat_uniform_w4a3', 'qat_saqa_all_high',
        'qat_search_1.24x', 'qat_search_1.35x', 'qat_search_prune_1.53x', 'qat_search_prune_1.82x',
        'qat_no_saqa_1.35x', 'qat_mixaq_random_1.35x', 'qat_mixaq_reverse_1.35x'
    } <= names
    fp = COCO.training('fp')
    assert fp.checkpoint.endswith('mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_20210906_'
                                  '131725-bacf6f7b.pth')
    # SAQA's comparators are trained as long as SAQA (6 + 6 epochs)
    for target in COCO.targets:
        if 'same length' in target.claim:
            assert target.b.endswith('_12e') and COCO.training(target.b).parent


def test_relocation_moves_every_path_under_the_data_root():
    cfg = Config.fromfile(osp.join(BENCHMARK.config_root, 'ptq/ptq_uniform_w4a8_shapes.py'))
    options = dict(relocation_options(cfg, '/elsewhere/shapes'))
    assert options['train_dataloader.dataset.data_root'] == '/elsewhere/shapes/'
    assert options['test_cfg.calib_dataloader.dataset.data_root'] == '/elsewhere/shapes/'
    assert options['search_dataloader.dataset.data_root'] == '/elsewhere/shapes/'
    assert options['test_evaluator.ann_file'] == \
        '/elsewhere/shapes/annotations/instances_val.json'
    moved = cfg.copy()
    moved.merge_from_dict(options)
    left = [v for v in json.dumps(moved.to_dict()).split('"') if v.startswith('data/shapes')]
    assert left == ['data/shapes_coco/']  # only the top-level variable itself
    assert relocation_options(cfg, 'data/shapes_coco') == ()


def _from_command_line(tc: TableConfig) -> Config:
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(['--cfg-options', *tc.cli_options()])
    cfg = Config.fromfile(tc.path)
    cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir, cfg.launcher = tc.work_dir, 'none'
    return cfg


@pytest.mark.parametrize(
    'row', [r for r in COCO.rows if r.ratios or r.name == 'fp'][:4] + [COCO.rows[4]],
    ids=lambda r: r.name)
def test_a_launched_tool_loads_the_config_the_runner_keys_on(row, tmp_path):
    """The options a launched tool gets rebuild the runner's merged config."""
    out = str(tmp_path / row.name)
    tc = TableConfig(
        osp.join(COCO.config_root, row.config), out, str(tmp_path / 'coco'),
        row.evaluated_options + (('test_evaluator.outfile_prefix', out + '/preds'), ))
    assert _from_command_line(tc).pretty_text == tc.cfg.pretty_text
    assert tc.cfg.test_dataloader.dataset.data_root == str(tmp_path / 'coco') + '/'


def test_tool_commands_launch_on_several_gpus():
    assert tool_command('train', ['c.py', '--work-dir', 'w'],
                        8) == ['bash', 'tools/dist_train.sh', 'c.py', '8', '--work-dir', 'w']
    assert tool_command('test', ['c.py', 'k.pth', '--work-dir', 'w'], 8) == [
        'bash', 'tools/dist_test.sh', 'c.py', 'k.pth', '8', '--work-dir', 'w'
    ]
    assert tool_command('search', ['c.py', 'k.pth'], 4) == [
        'python', '-m', 'torch.distributed.run', '--nproc_per_node=4', 'tools/search_ratios.py',
        'c.py', 'k.pth', '--launcher', 'pytorch'
    ]
    assert tool_command('test', ['c.py', 'k.pth'],
                        1) == ['python', 'tools/test.py', 'c.py', 'k.pth']
    with pytest.raises(ValueError, match="unknown tool 'eval'"):
        tool_command('eval', [], 1)


def test_keys_follow_checkpoint_content_not_file_times(tmp_path):
    cfg = Config(dict(a=1))
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'weights')
    key = fingerprint(cfg, str(checkpoint), 'v')
    os.utime(checkpoint, (1, 1))
    assert fingerprint(cfg, str(checkpoint), 'v') == key
    copy = tmp_path / 'copy.pth'
    shutil.copy(checkpoint, copy)
    assert fingerprint(cfg, str(copy), 'v') == key
    checkpoint.write_bytes(b'other weights')
    assert fingerprint(cfg, str(checkpoint), 'v') != key
    assert fingerprint(Config(dict(a=2)), str(copy), 'v') != key
    assert fingerprint(cfg, str(copy), 'w') != key
    assert fingerprint(cfg, 'https://host/model.pth', 'v') != key


def _record(name: str, **fields) -> RowRecord:
    """A PTQ row's record with ``fields`` changed."""
    record = dict(
        name=name,
        method='PTQ',
        bbox_mAP=1.0,
        segm_mAP=2.0,
        no_detections=False,
        bitops_G=1.5,
        w_bits=4,
        act_bits=6.0,
        a_bits=[8, 4],
        low_bit_ratios=[0.5],
        prune_ratios=[0.0],
        window_score='l2',
        window_order='importance',
        calib_images=4,
        execution='fake_quant',
        backbone_ms=None,
        scope='backbone',
        model='fp',
        base='fp',
        img_shape=[32, 32],
        eval_seconds=1.0)
    record.update(fields)
    return RowRecord(**record)


def test_the_store_reuses_unchanged_rows_and_marks_stale_ones(tmp_path):
    path = str(tmp_path / 'results.json')
    store = ResultStore(path)
    assert store.reuse('a', 'k1', ['a']) == (False, None)
    store.add(_record('a'), 'k1')
    store.add(_record('b'), 'k2')
    store = ResultStore(path)
    done, row = store.reuse('a', 'k1', ['a'])
    assert done and row.name == 'a' and row.fingerprint == 'k1' and not row.stale
    assert store.reuse('a', 'k9', ['a']) == (False, None)  # asked for, inputs changed
    done, row = store.reuse('b', 'k9', ['a'])  # not asked for: kept, flagged
    assert done and row.stale is True
    assert store.reuse('c', 'k3', ['a']) == (True, None)


def test_metrics_are_read_from_the_newest_test_log(tmp_path):
    for stamp, value in (('20261203_100000', 0.1), ('20261203_110000', 0.2)):
        os.makedirs(tmp_path / stamp)
        (tmp_path / stamp / f'{stamp}.json').write_text(json.dumps({'coco/bbox_mAP': value}))
    assert read_test_metrics(str(tmp_path)) == {'coco/bbox_mAP': 0.2}
    with pytest.raises(FileNotFoundError, match='no test log'):
        read_test_metrics(str(tmp_path / 'none'))


def test_calibration_counts_are_read_from_the_checkpoint_meta(tmp_path):
    """A launched row's calibration count is the one ``calibrated.pth``
    records, not a number found in a log."""
    import torch
    torch.save(dict(meta=dict(calib_images=7), state_dict={}), tmp_path / 'calibrated.pth')
    torch.save(dict(meta=dict(epoch=3), state_dict={}), tmp_path / 'qat.pth')
    assert calibrated_images(str(tmp_path / 'calibrated.pth')) == 7
    assert calibrated_images_in(str(tmp_path)) == 7
    assert calibrated_images(str(tmp_path / 'qat.pth')) == 0
    assert calibrated_images_in(str(tmp_path / 'none')) == 0


def test_records_round_trip_and_refuse_another_layout():
    record = _record('r').to_dict()
    loaded = RowRecord.from_dict(record)
    assert RowRecord.from_dict(loaded.to_dict()) == loaded
    with pytest.raises(ValueError, match=r"unknown \['bbox'\], missing \['bbox_mAP'\]"):
        RowRecord.from_dict({('bbox' if k == 'bbox_mAP' else k): v for k, v in record.items()})
    with pytest.raises(ValueError, match="method 'ptq' is not one of"):
        RowRecord.from_dict(dict(record, method='ptq'))


def test_searches_name_their_rows_and_folder():
    search = Search('s', 'c.py', 'fp', 'fp', (1.24, 1.35), 'PTQ', uniform_name='u')
    assert search.row_names() == ('s_1.24x', 's_1.35x', 'u_1.24x', 'u_1.35x')
    assert search.folder == 's_1.24x_1.35x'
    assert dataclasses.replace(search, targets=(1.35, )).folder == 's_1.35x'


def test_repo_root_of_the_tables_is_the_checkout():
    assert osp.samefile(osp.dirname(BENCHMARK.config_root), osp.join(REPO, 'configs'))


def test_a_row_without_any_detection_has_map_zero():
    """mmdet's CocoMetric reports no metric when no image has a detection (a
    model that detects nothing, e.g. random weights on one image): the row's
    mAP is COCO's 0, marked as such, instead of a crash of the table."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mixaq_mmdet.tables.records import row_record
    from ..conftest import FP_BENCH_CONFIG
    init_default_scope('mmdet')
    model = MODELS.build(Config.fromfile(FP_BENCH_CONFIG).model)
    empty = row_record('fp', 'FP', model, {}, 'fp', 'fp', 0, (320, 320), 1.0)
    assert (empty.bbox_mAP, empty.segm_mAP, empty.no_detections) == (0.0, 0.0, True)
    found = row_record('fp', 'FP', model, {
        'coco/bbox_mAP': 0.5,
        'coco/segm_mAP': 0.25
    }, 'fp', 'fp', 0, (320, 320), 1.0)
    assert (found.bbox_mAP, found.segm_mAP, found.no_detections) == (50.0, 25.0, False)
