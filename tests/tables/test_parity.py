"""The executors' promise: every kind of row, computed in process and launched
as the tools, gives the same record; and what each executor must refuse."""
import glob
import json
import os
import os.path as osp
import shutil

import pytest

from mixaq_mmdet.tables import LocalExecutor, Search, SearchSettings
from mixaq_mmdet.tables.executors import Calibration, RowInfo, check_method
from ..conftest import REPO, run_tool
from .parity_table import parity_table

SCRIPT = osp.join(osp.dirname(osp.abspath(__file__)), 'parity_table.py')
FIELDS = ('method', 'bbox_mAP', 'segm_mAP', 'bitops_G', 'w_bits', 'a_bits', 'low_bit_ratios',
          'prune_ratios', 'window_order', 'calib_images', 'model', 'base', 'execution', 'config',
          'fingerprint', 'trained_by_other_code')


def _rows(work_dir):
    with open(osp.join(work_dir, 'results.json')) as f:
        return {r['name']: r for r in json.load(f)['rows']}


def _searched_spaces(folder):
    """The search spaces the searches in ``folder`` ran over (their caches)."""
    spaces = []
    for path in sorted(glob.glob(osp.join(folder, 'search_cache*.json'))):
        with open(path) as f:
            spaces.append(json.load(f)['space'])
    return spaces


def test_every_kind_of_row_is_the_same_in_process_and_launched(tiny_shapes, tmp_path):
    local = str(tmp_path / 'local')
    run_tool([SCRIPT, tiny_shapes, local, 'local'], timeout=1200)
    launched = str(tmp_path / 'launched')
    shutil.copytree(local, launched)
    os.remove(osp.join(launched, 'results.json'))
    run_tool([SCRIPT, tiny_shapes, launched, 'launched'], timeout=1200)
    expected, computed = _rows(local), _rows(launched)
    names = ['fp', 'uniform_w4a8', 'a8a2', 'a8a4', 'prune_search_1.4x', 'prune_uniform_1.4x']
    assert list(expected) == names and list(computed) == names
    for name in names:
        for field in FIELDS:
            assert computed[name][field] == expected[name][field], (name, field)
    # two calibrations that differ only in a_bits: two models, not the first one twice
    assert expected['a8a2']['a_bits'] == [8, 2] and expected['a8a4']['a_bits'] == [8, 4]
    assert expected['a8a2']['bitops_G'] < expected['a8a4']['bitops_G']
    # the search had prune genes in both ways, and its uniform-ratio row is computed launched
    for root in (local, launched):
        spaces = _searched_spaces(osp.join(root, 'prune_search_1.4x'))
        assert spaces and all(s['prune_choices'] == s['low_choices'] for s in spaces)
    uniform = computed['prune_uniform_1.4x']
    assert len(set(uniform['low_bit_ratios'])) == 1 and set(uniform['prune_ratios']) == {0.0}
    assert 'uniform_1.4x.py' in uniform['commands'][1]
    # the stated method, and the calibration count from the checkpoint's meta
    assert [computed[n]['method'] for n in names] == ['FP'] + ['PTQ'] * 5
    assert [computed[n]['calib_images'] for n in names] == [0] + [4] * 5


def _prepared_calibration(table, tiny_shapes, fp_checkpoint, tmp_path, search_split):
    from mixaq_mmdet.tables import TableConfig
    from .parity_table import MIXAQ
    tc = TableConfig(
        osp.join(table.config_root, MIXAQ), str(tmp_path / 'search'), tiny_shapes,
        (('test_cfg.calib_images', 4), ('model.backbone.low_bit_ratios', 0.5),
         ('search_dataloader.dataset.ann_file', f'annotations/instances_{search_split}.json'),
         ('search_dataloader.dataset.data_prefix.img', f'{search_split}/')))
    return Calibration(tc, fp_checkpoint, None)


@pytest.mark.parametrize('split, images, message', [
    ('val', 2, 'the search split shares 2 images with val'),
    ('train', 5, 'num_images=5 is more than the 4 images .* left after excluding the calibration'),
])
def test_the_search_in_process_keeps_off_val_and_the_calibration_images(
        split, images, message, tiny_shapes, fp_checkpoint, tmp_path):
    """The rules of tools/search_ratios.py hold in process too: a search split
    sharing images with val is refused, and the calibration images are left
    out of one drawn from the training images (8, of which 4 calibrate)."""
    table = parity_table(tiny_shapes)
    calibration = _prepared_calibration(table, tiny_shapes, fp_checkpoint, tmp_path, split)
    search = Search('s', 'c.py', 'fp', 'fp', (1.4, ), 'PTQ')
    with pytest.raises(ValueError, match=message):
        LocalExecutor(table).search(search, calibration, SearchSettings(4, 1, images), 'k',
                                    {'s_1.4x': str(tmp_path / 'row')})


def test_a_row_whose_method_is_not_its_config_is_refused(tmp_path):
    from mixaq_mmdet.tables import BENCHMARK, TableConfig
    fp = TableConfig(
        osp.join(BENCHMARK.config_root, 'mask-rcnn_swin-nano-p4-w7_fpn_shapes.py'), str(tmp_path),
        osp.join(REPO, 'data', 'shapes_coco'))
    with pytest.raises(ValueError, match='row r is stated PTQ but .* is a float config'):
        check_method(RowInfo('r', 'PTQ', 'fp', 'fp'), fp)
    check_method(RowInfo('r', 'FP', 'fp', 'fp'), fp)
    ptq = TableConfig(
        osp.join(BENCHMARK.config_root, 'ptq', 'ptq_uniform_w4a8_shapes.py'), str(tmp_path),
        osp.join(REPO, 'data', 'shapes_coco'))
    with pytest.raises(ValueError, match=r'row r is stated FP but .* is a quantized \(PTQLoop\)'):
        check_method(RowInfo('r', 'FP', 'fp', 'fp'), ptq)


def test_calibrated_models_are_kept_under_their_full_key_and_bounded(tiny_shapes, fp_checkpoint,
                                                                     tmp_path):
    """Rows that share all the inputs of a calibration share its model; any
    other input (here a_bits alone) is another model; at most KEPT stay."""
    from mixaq_mmdet.tables import TableConfig, fingerprint
    table = parity_table(tiny_shapes)
    executor = LocalExecutor(table)

    def calibration(a_bits):
        tc = TableConfig(
            osp.join(table.config_root, 'ptq', 'ptq_mixaq_w4a8a2_shapes.py'),
            str(tmp_path / str(a_bits)), tiny_shapes,
            (('test_cfg.calib_images', 2), ('model.backbone.a_bits', a_bits)))
        return Calibration(tc, fp_checkpoint, fingerprint(tc.cfg, fp_checkpoint, 'v'))

    first = executor.prepare(calibration([8, 2]))
    assert executor.prepare(calibration([8, 2])) is first
    other = executor.prepare(calibration([8, 4]))
    assert other is not first and list(other.loop.model.backbone.a_bits) == [8, 4]
    executor.prepare(calibration([6, 2]))
    assert len(executor.prepared) == LocalExecutor.KEPT == 2
    assert executor.prepare(calibration([8, 4])) is other  # the last used stays
