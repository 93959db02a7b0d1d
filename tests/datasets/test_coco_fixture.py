"""The COCO-layout fixture (data/coco for full-size smoke runs) and the
random-weight checkpoint in the official release's format."""
import copy
import glob
import json
import os
import os.path as osp
import zipfile

import cv2
import numpy as np
import pytest
import torch
from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS, MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mixaq_mmdet.compat import load_from_local_weights_only
from mixaq_mmdet.datasets import COCO_CATEGORY_IDS, COCO_CLASSES, generate_coco_fixture
from mixaq_mmdet.datasets.coco_fixture import COCO_IMAGE_SIZES
from mixaq_mmdet.engine.checkpoints import check_base_model, check_float_checkpoint
from mixaq_mmdet.models.backbones import MixAQSwinTransformer
from mixaq_mmdet.utils.official_checkpoint import (EXP_NAME, OFFICIAL_META_KEYS,
                                                   build_release_model, write_official_checkpoint)
from ..conftest import REPO

FP_3X = osp.join(REPO, 'configs/mixaq/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py')
PTQ_W4A8 = osp.join(REPO, 'configs/mixaq/ptq/ptq_uniform_w4a8_swin-t_coco.py')
LISTED, WRITTEN, VAL = 2000, 8, 4


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('coco'))
    generate_coco_fixture(root, LISTED, WRITTEN, VAL, seed=0)
    return root


def _load(root, split):
    with open(osp.join(root, 'annotations', f'instances_{split}.json')) as f:
        return json.load(f)


def _by_image(coco):
    anns = {im['id']: [] for im in coco['images']}
    for ann in coco['annotations']:
        anns[ann['image_id']].append(ann)
    return anns


def _kinds(anns):
    kinds = set()
    for ann in anns:
        seg = ann['segmentation']
        if ann['iscrowd']:
            kinds.add('crowd' if isinstance(seg['counts'], list) else 'crowd-compressed')
        else:
            kinds.add('polygon' if isinstance(seg, list) else 'rle')
    return kinds


def test_layout_and_categories_are_coco_2017s(coco_root):
    assert sorted(os.listdir(coco_root)) == ['annotations', 'train2017', 'val2017']
    assert sorted(os.listdir(osp.join(
        coco_root, 'annotations'))) == ['instances_train2017.json', 'instances_val2017.json']
    for split in ('train2017', 'val2017'):
        coco = _load(coco_root, split)
        assert list(coco) == ['info', 'licenses', 'images', 'annotations', 'categories']
        ids = [c['id'] for c in coco['categories']]
        assert ids == list(COCO_CATEGORY_IDS)
        assert len(ids) == 80 and ids[-1] == 90 and ids != list(range(1, 81))
        assert set(range(1, 91)) - set(ids) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
        assert tuple(c['name'] for c in coco['categories']) == \
            tuple(CocoDataset.METAINFO['classes']) == COCO_CLASSES
        assert all(set(c) == {'id', 'name', 'supercategory'} for c in coco['categories'])
        assert {c['supercategory']
                for c in coco['categories']
                } >= {'person', 'vehicle', 'animal', 'kitchen', 'indoor'}
        for im in coco['images']:
            assert {'id', 'file_name', 'width', 'height'} <= set(im)
            assert im['file_name'] == f"{im['id']:012d}.jpg"
            assert (im['width'], im['height']) in COCO_IMAGE_SIZES
        for ann in coco['annotations']:
            assert set(ann) == {
                'id', 'image_id', 'category_id', 'bbox', 'area', 'iscrowd', 'segmentation'
            }
            assert ann['category_id'] in COCO_CATEGORY_IDS and len(ann['bbox']) == 4
    sizes = {(im['width'], im['height']) for im in _load(coco_root, 'train2017')['images']}
    assert {(640, 480), (480, 640)} <= sizes


def test_train_lists_many_more_images_than_it_writes(coco_root):
    train, val = _load(coco_root, 'train2017'), _load(coco_root, 'val2017')
    assert len(train['images']) == LISTED
    written = sorted(os.listdir(osp.join(coco_root, 'train2017')))
    assert written == sorted(im['file_name'] for im in train['images'][:WRITTEN])
    assert sorted(os.listdir(osp.join(coco_root, 'val2017'))) == \
        sorted(im['file_name'] for im in val['images'])
    assert len(val['images']) == VAL
    ids = [im['id'] for im in train['images'] + val['images']]
    assert len(set(ids)) == len(ids)
    ann_ids = [a['id'] for a in train['annotations']]
    assert len(set(ann_ids)) == len(ann_ids)
    for im in train['images'][:2] + val['images'][:2]:
        split = 'train2017' if im in train['images'] else 'val2017'
        img = cv2.imread(osp.join(coco_root, split, im['file_name']))
        assert img.shape == (im['height'], im['width'], 3)


def test_crowd_polygon_rle_and_empty_images_are_present(coco_root):
    val = _load(coco_root, 'val2017')
    per_image = _by_image(val)
    assert any(not anns for anns in per_image.values())  # evaluation sees empty images
    assert _kinds(val['annotations']) == {'crowd', 'polygon', 'rle'}
    train = _load(coco_root, 'train2017')
    per_image = _by_image(train)
    listed_only = [per_image[im['id']] for im in train['images'][WRITTEN:]]
    assert sum(not anns for anns in listed_only) > 100  # mmdet's filter removes them
    written = [per_image[im['id']] for im in train['images'][:WRITTEN]]
    assert all(any(not a['iscrowd'] for a in anns) for anns in written)
    assert set().union(*map(_kinds, written)) == {'crowd', 'polygon', 'rle'}
    crowd = next(a for a in train['annotations'] if a['iscrowd'])
    assert crowd['id'] > 900100000000  # COCO's crowd ids


def test_pycocotools_decodes_every_kind_of_mask(coco_root):
    coco = COCO(osp.join(coco_root, 'annotations', 'instances_val2017.json'))
    train = COCO(osp.join(coco_root, 'annotations', 'instances_train2017.json'))
    for db in (coco, train):
        assert db.getCatIds() == list(COCO_CATEGORY_IDS)
        for ann in db.loadAnns(db.getAnnIds(imgIds=db.getImgIds()[:WRITTEN])):
            img = db.imgs[ann['image_id']]
            mask = db.annToMask(ann)
            assert mask.shape == (img['height'], img['width']) and mask.any()
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann['bbox']
            assert x - 1 <= xs.min() and xs.max() <= x + w + 1
            assert y - 1 <= ys.min() and ys.max() <= y + h + 1
            assert int(mask.sum()) == ann['area']
            if ann['iscrowd']:
                rle = mask_utils.frPyObjects(ann['segmentation'], img['height'], img['width'])
                assert np.array_equal(mask_utils.decode(rle), mask)
                assert mask_utils.area(rle) == ann['area']


def test_cocoeval_scores_the_ground_truth_as_perfect(coco_root):
    """COCO's evaluation handles the crowd regions (ignored) and empty images."""
    gt = COCO(osp.join(coco_root, 'annotations', 'instances_val2017.json'))
    dets = [
        dict(
            image_id=a['image_id'],
            category_id=a['category_id'],
            bbox=a['bbox'],
            score=1.0,
            segmentation=gt.annToRLE(a)) for a in gt.dataset['annotations'] if not a['iscrowd']
    ]
    for iou_type in ('bbox', 'segm'):
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0)


def _tree(root):
    return {
        osp.relpath(p, root): open(p, 'rb').read()
        for p in sorted(glob.glob(osp.join(root, '*', '*')))
    }


def test_a_rerun_writes_the_same_bytes_and_prefixes_are_stable(tmp_path):
    a, b, c = (str(tmp_path / n) for n in 'abc')
    generate_coco_fixture(a, 40, 3, 4, seed=1)
    generate_coco_fixture(b, 40, 3, 4, seed=1)
    assert _tree(a) == _tree(b)
    generate_coco_fixture(a, 40, 3, 4, seed=1)  # over its own output
    assert _tree(a) == _tree(b)
    generate_coco_fixture(c, 80, 5, 4, seed=1)  # more listed, more written
    small, large = _load(a, 'train2017'), _load(c, 'train2017')
    assert large['images'][:40] == small['images']
    first = {im['id'] for im in small['images'][:3]}
    assert [x for x in small['annotations'] if x['image_id'] in first] == \
        [x for x in large['annotations'] if x['image_id'] in first]
    for name in os.listdir(osp.join(a, 'train2017')):
        assert open(osp.join(a, 'train2017', name), 'rb').read() == \
            open(osp.join(c, 'train2017', name), 'rb').read()
    generate_coco_fixture(c, 40, 3, 4, seed=2)  # fewer files: stale ones go
    assert len(os.listdir(osp.join(c, 'train2017'))) == 3
    assert _load(c, 'val2017')['annotations'] != _load(a, 'val2017')['annotations']


def test_refuses_to_write_over_a_real_coco(tmp_path):
    os.makedirs(tmp_path / 'annotations')
    real = tmp_path / 'annotations' / 'instances_val2017.json'
    real.write_text(json.dumps(dict(info=dict(description='COCO 2017 Dataset'))))
    with pytest.raises(FileExistsError, match='not a mixaq_mmdet COCO-layout fixture'):
        generate_coco_fixture(str(tmp_path), 10, 2, 2)
    assert json.loads(real.read_text())['info']['description'] == 'COCO 2017 Dataset'
    other = tmp_path / 'other'
    os.makedirs(other / 'train2017')
    (other / 'train2017' / '000000000139.jpg').write_bytes(b'x')
    with pytest.raises(FileExistsError, match='holds images'):
        generate_coco_fixture(str(other), 10, 2, 2)


def _coco_cfg():
    init_default_scope('mmdet')
    return Config.fromfile(FP_3X)


def test_mmdet_loaders_with_indices_read_exactly_the_written_files(coco_root):
    """mmdet's 3x training set (filter_empty_gt, min_size 32) and a test-mode
    train2017 set (calibration, search) given ``indices=num_train_files``."""
    cfg = _coco_cfg()
    root = coco_root + '/'
    train_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    assert train_cfg.filter_cfg == dict(filter_empty_gt=True, min_size=32)
    written = {osp.join(root, 'train2017', f) for f in os.listdir(osp.join(root, 'train2017'))}
    everything = DATASETS.build(dict(train_cfg, data_root=root))
    assert WRITTEN < len(everything) < LISTED  # the empty ones are filtered
    assert sum(not osp.exists(everything.get_data_info(i)['img_path'])
               for i in range(len(everything))) == len(everything) - WRITTEN
    train = DATASETS.build(dict(train_cfg, data_root=root, indices=WRITTEN))
    assert {train.get_data_info(i)['img_path'] for i in range(len(train))} == written
    for i in range(len(train)):  # the full 3x pipeline: multi-scale crops, masks
        sample = train[i]
        assert sample['inputs'].shape[0] == 3
    test_cfg = dict(
        copy.deepcopy(cfg.val_dataloader.dataset),
        data_root=root,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        indices=WRITTEN)
    calib = DATASETS.build(test_cfg)
    assert [calib.get_data_info(i)['img_path'] for i in range(len(calib))] == \
        [train.get_data_info(i)['img_path'] for i in range(len(train))]
    val = DATASETS.build(dict(copy.deepcopy(cfg.val_dataloader.dataset), data_root=root))
    assert len(val) == VAL
    h, w = val[0]['inputs'].shape[1:]  # mmdet's 1333x800 test scale
    assert max(h, w) <= 1333 and min(h, w) <= 800 and (max(h, w) >= 1332 or min(h, w) >= 799)


@pytest.fixture(scope='module')
def release_model():
    return build_release_model(seed=0)


@pytest.fixture(scope='module')
def official(tmp_path_factory, release_model):
    root = tmp_path_factory.mktemp('ckpt')
    return dict(
        full=write_official_checkpoint(str(root / 'official.pth'), model=release_model),
        published=write_official_checkpoint(
            str(root / 'published.pth'), publish=True, model=release_model))


def test_checkpoint_has_the_official_format_and_loads_weights_only(official, release_model):
    ckpt = torch.load(official['full'], map_location='cpu', weights_only=True)
    assert list(ckpt) == ['meta', 'state_dict', 'optimizer']
    meta = ckpt['meta']
    assert tuple(meta) == OFFICIAL_META_KEYS
    assert meta['CLASSES'] == COCO_CLASSES and isinstance(meta['CLASSES'], tuple)
    assert meta['exp_name'] == EXP_NAME
    assert meta['mmdet_version'].startswith('2.16.0') and meta['mmcv_version'].startswith('1.')
    assert (meta['epoch'], meta['iter']) == (36, 36 * 7330)
    assert meta['hook_msgs']['last_ckpt'].endswith('epoch_35.pth')
    assert "type='SwinTransformer'" in meta['config'] and 'AdamW' in meta['config']
    assert isinstance(meta['env_info'], str) and meta['seed'] is None
    state = ckpt['state_dict']
    assert type(state).__name__ == 'OrderedDict' and not hasattr(state, '_metadata')
    for key in ('backbone.patch_embed.projection.weight',
                'backbone.stages.0.blocks.0.attn.w_msa.qkv.weight',
                'backbone.stages.0.blocks.0.attn.w_msa.relative_position_index',
                'backbone.stages.3.blocks.1.ffn.layers.0.0.weight',
                'backbone.stages.2.downsample.reduction.weight', 'backbone.norm3.weight',
                'neck.lateral_convs.0.conv.weight', 'neck.fpn_convs.3.conv.weight',
                'rpn_head.rpn_conv.weight', 'rpn_head.rpn_cls.weight',
                'roi_head.bbox_head.shared_fcs.0.weight', 'roi_head.bbox_head.fc_cls.weight',
                'roi_head.bbox_head.fc_reg.weight', 'roi_head.mask_head.convs.0.conv.weight',
                'roi_head.mask_head.upsample.weight', 'roi_head.mask_head.conv_logits.weight'):
        assert key in state, key
    assert state['roi_head.bbox_head.fc_cls.weight'].shape == (81, 1024)
    optim = ckpt['optimizer']
    params = list(release_model.named_parameters())
    assert list(optim) == ['state', 'param_groups']
    assert [g['params'] for g in optim['param_groups']] == [[i] for i in range(len(params))]
    for (name, _), group in zip(params, optim['param_groups']):
        no_decay = any(k in name for k in ('norm', 'relative_position_bias_table'))
        assert group['weight_decay'] == (0.0 if no_decay else 0.05), name
        assert group['betas'] == (0.9, 0.999) and group['initial_lr'] == 1e-4
        assert group['lr'] == pytest.approx(1e-6)
    assert sorted(optim['state']) == [0, 1]
    assert optim['state'][0]['step'] == 36 * 7330
    assert optim['state'][0]['exp_avg'].shape == params[0][1].shape
    assert zipfile.is_zipfile(official['full'])
    published = torch.load(official['published'], weights_only=True)
    assert list(published) == ['meta', 'state_dict']  # publish_model.py's output
    assert not zipfile.is_zipfile(official['published'])  # legacy serialization
    assert published['state_dict'].keys() == state.keys()


@pytest.mark.parametrize('kind', ['full', 'published'])
def test_checkpoint_loads_strictly_into_mmdets_3x_model(official, release_model, kind):
    """Through mmengine's loader (the project's weights-only local loader, as
    tools/test.py loads), every key of mmdet 3.3.0's model and no other."""
    assert load_from_local_weights_only(official[kind])['meta']['exp_name'] == EXP_NAME
    model = build_release_model(seed=1)
    expected = release_model.state_dict()
    assert not all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    load_checkpoint(model, official[kind], map_location='cpu', strict=True)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_mixaq_ptq_model_accepts_the_checkpoint(official, release_model):
    """The MixA-Q COCO configs' quantized detector: every float weight present
    with its shape, the base-model check passes, and the backbone loads."""
    init_default_scope('mmdet')
    cfg = Config.fromfile(PTQ_W4A8)
    model = MODELS.build(cfg.model)
    assert isinstance(model.backbone, MixAQSwinTransformer)
    ckpt = torch.load(official['full'], weights_only=True)
    check_float_checkpoint(model, ckpt, official['full'])
    assert check_base_model(ckpt, official['full'], cfg.base_model) == EXP_NAME
    load_checkpoint(model, official['full'], map_location='cpu', strict=False)
    expected = release_model.state_dict()
    for key, value in model.backbone.state_dict().items():
        full = f'backbone.{key}'
        if full in expected:
            assert torch.equal(value, expected[full]), key
