"""A data_root without the expected files is an error naming them, before mmdet
reads anything (mixaq_mmdet.datasets.layout)."""
import os.path as osp

import pytest
from mmengine.config import Config

from mixaq_mmdet.datasets import COCO_LAYOUT, check_dataset_files, generate_coco_fixture
from ..conftest import REPO, run_tool

COCO_PTQ = osp.join(REPO, 'configs/mixaq/ptq/ptq_uniform_w4a8_swin-t_coco.py')


def _val(data_root):
    dataset = Config.fromfile(COCO_PTQ).test_dataloader.dataset
    dataset.data_root = data_root
    return dataset


def test_a_data_root_without_coco_layout_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        check_dataset_files(_val(str(tmp_path) + '/'), 'test_dataloader.dataset')
    message = str(error.value)
    assert message.startswith('test_dataloader.dataset: annotation file')
    assert osp.join(str(tmp_path), 'annotations/instances_val2017.json') in message
    assert osp.join(str(tmp_path), 'val2017/') in message and 'do not exist' in message
    assert f'data_root={str(tmp_path) + "/"!r}' in message
    assert all(part in message for part in COCO_LAYOUT)


def test_the_coco_layout_passes_and_a_missing_image_folder_alone_is_named(tmp_path):
    root = str(tmp_path / 'coco') + '/'
    generate_coco_fixture(root, num_train_listed=4, num_train_files=2, num_val=2)
    check_dataset_files(_val(root), 'test_dataloader.dataset')
    wrapped = dict(
        type='RepeatDataset', times=2, dataset=dict(_val(root), data_prefix=dict(img='x/')))
    with pytest.raises(
            FileNotFoundError, match=r"dataset\.dataset: image folder '.*x/' "
            r'does not exist'):
        check_dataset_files(wrapped, 'train_dataloader.dataset')


def test_backends_and_absolute_paths(tmp_path):
    check_dataset_files(dict(_val('s3://bucket/coco/')), 'test_dataloader.dataset')
    ann = tmp_path / 'a.json'
    ann.write_text('{}')
    (tmp_path / 'img').mkdir()
    check_dataset_files(
        dict(
            type='CocoDataset',
            data_root='/nowhere',
            ann_file=str(ann),
            data_prefix=dict(img=str(tmp_path / 'img'))), 'x.dataset')


def test_test_tool_stops_before_building_the_model(tmp_path):
    checkpoint = tmp_path / 'fp.pth'
    checkpoint.write_bytes(b'')  # never read: the data check comes first
    proc = run_tool([
        'tools/test.py', COCO_PTQ,
        str(checkpoint), '--work-dir',
        str(tmp_path / 'w'), '--cfg-options', f'test_dataloader.dataset.data_root={tmp_path}/'
    ],
                    check=False)
    assert proc.returncode != 0
    assert (f"test_dataloader.dataset: annotation file '{tmp_path}/annotations/"
            "instances_val2017.json'") in proc.stderr
    assert 'A COCO data_root holds' in proc.stderr
