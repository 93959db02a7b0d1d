import json
import os.path as osp

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mixaq_mmdet.datasets import SHAPES_CLASSES, ShapesCocoSpec, generate_split


def _read_split(root, split):
    with open(osp.join(root, 'annotations', f'instances_{split}.json')) as f:
        coco = json.load(f)
    pixels = [cv2.imread(osp.join(root, split, im['file_name'])) for im in coco['images']]
    return coco, pixels


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    for name, seed in (('a', 3), ('b', 3), ('c', 4)):
        generate_split(str(tmp_path / name), 'val', 3, seed=seed)
    coco_a, px_a = _read_split(tmp_path / 'a', 'val')
    coco_b, px_b = _read_split(tmp_path / 'b', 'val')
    coco_c, px_c = _read_split(tmp_path / 'c', 'val')
    assert coco_a == coco_b
    assert all(np.array_equal(x, y) for x, y in zip(px_a, px_b))
    assert coco_a['annotations'] != coco_c['annotations']
    assert not np.array_equal(px_a[0], px_c[0])


def test_image_does_not_depend_on_split_size(tmp_path):
    generate_split(str(tmp_path / 'small'), 'train', 2, seed=0)
    generate_split(str(tmp_path / 'large'), 'train', 5, seed=0)
    _, px_small = _read_split(tmp_path / 'small', 'train')
    _, px_large = _read_split(tmp_path / 'large', 'train')
    assert np.array_equal(px_small[1], px_large[1])


def test_search_split_shares_no_image_with_train_or_val(tiny_shapes):
    """The ratio search tunes on 'search': none of its pictures is a training,
    calibration or val picture."""
    pixels = {split: _read_split(tiny_shapes, split)[1] for split in ('train', 'val', 'search')}
    assert len(pixels['search']) == 4
    for img in pixels['search']:
        for other in ('train', 'val'):
            assert not any(np.array_equal(img, o) for o in pixels[other])


def test_valid_coco_masks_decode_and_match_boxes(tiny_shapes):
    coco = COCO(osp.join(tiny_shapes, 'annotations', 'instances_train.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES_CLASSES)
    assert len(coco.anns) >= len(coco.imgs)
    for ann in coco.anns.values():
        img = coco.imgs[ann['image_id']]
        mask = coco.annToMask(ann)
        assert mask.shape == (img['height'], img['width'])
        assert mask.sum() == ann['area'] > 0
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann['bbox']
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
        assert mask_utils.area(ann['segmentation']) == ann['area']
        assert ann['iscrowd'] == 0


def test_benchmark_statistics(tmp_path):
    """Objects cover a minority of the image, span small to large, and occlude."""
    spec = ShapesCocoSpec()
    generate_split(str(tmp_path), 'val', 40, seed=0, spec=spec)
    coco = COCO(osp.join(tmp_path, 'annotations', 'instances_val.json'))
    h, w = spec.img_size
    coverage = []
    for img_id in coco.imgs:
        masks = [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(img_id))]
        coverage.append(np.any(masks, axis=0).mean() if masks else 0.0)
    assert 0.02 < np.mean(coverage) < 0.3
    areas = np.array([a['area'] for a in coco.anns.values()])
    assert (areas < 32**2).sum() > 0.1 * len(areas)  # COCO 'small'
    assert (areas > 96**2 * 0.5).sum() > 0  # towards 'large'
    full = [a for a in coco.anns.values()]
    boxes = np.array([a['bbox'] for a in full], dtype=float)
    img_ids = np.array([a['image_id'] for a in full])
    overlapping = 0
    for i in range(len(full)):
        for j in range(i + 1, len(full)):
            if img_ids[i] != img_ids[j]:
                continue
            (x1, y1, w1, h1), (x2, y2, w2, h2) = boxes[i], boxes[j]
            if min(x1 + w1, x2 + w2) > max(x1, x2) and min(y1 + h1, y2 + h2) > max(y1, y2):
                overlapping += 1
    assert overlapping > 0
    assert {a['category_id'] for a in full} == {1, 2, 3, 4}


@pytest.mark.parametrize('kwargs, match', [
    (dict(img_size=(32, 320)), 'img_size'),
    (dict(object_size=(40, 10)), 'object_size'),
    (dict(object_size=(16, 400)), 'does not fit'),
    (dict(objects_per_image=(-1, 3)), 'objects_per_image'),
])
def test_bad_spec(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesCocoSpec(**kwargs)


def test_bad_split_and_count(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'test'"):
        generate_split(str(tmp_path), 'test', 2)
    with pytest.raises(ValueError, match='num_images must be >= 1, got 0'):
        generate_split(str(tmp_path), 'val', 0)
