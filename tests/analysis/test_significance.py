"""Paired mAP differences with their noise over folds of the val images."""
import json

import pytest

from mixaq_mmdet.analysis import coco_map, paired_difference


@pytest.fixture()
def gt_file(tmp_path):
    images = [dict(id=i, width=100, height=100, file_name=f'{i}.png') for i in range(1, 21)]
    anns = [
        dict(id=i, image_id=i, category_id=1, bbox=[10, 10, 40, 40], area=1600, iscrowd=0)
        for i in range(1, 21)
    ]
    path = tmp_path / 'gt.json'
    json.dump(
        dict(images=images, annotations=anns, categories=[dict(id=1, name='box')]), open(path, 'w'))
    return str(path)


def _preds(hit):
    """One detection per image: on the object where ``hit(image_id)``, else beside it."""
    return [
        dict(
            image_id=i,
            category_id=1,
            score=0.9,
            bbox=[10, 10, 40, 40] if hit(i) else [55, 55, 40, 40]) for i in range(1, 21)
    ]


def test_a_better_model_beats_the_noise(gt_file):
    perfect, half = _preds(lambda i: True), _preds(lambda i: i % 2 == 0)
    diff = paired_difference(gt_file, perfect, half)
    assert len(diff.folds) == 5
    assert 40 < diff.mean <= 100
    assert diff.exceeds_noise() and not paired_difference(gt_file, half, perfect).exceeds_noise()
    from pycocotools.coco import COCO
    assert coco_map(COCO(gt_file), perfect) == pytest.approx(100.0)


def test_identical_results_differ_by_nothing(gt_file):
    preds = _preds(lambda i: i % 3 == 0)
    diff = paired_difference(gt_file, preds, preds)
    assert diff.mean == 0 and diff.std_error == 0 and not diff.exceeds_noise()
    assert diff.not_worse_beyond_noise()


def test_a_difference_on_few_images_is_within_the_noise(gt_file):
    """Two models that differ on one image out of 20: the folds disagree."""
    a, b = _preds(lambda i: True), _preds(lambda i: i != 7)
    diff = paired_difference(gt_file, a, b)
    assert diff.mean > 0 and not diff.exceeds_noise()
    # the other way round: worse, but not beyond the noise
    reverse = paired_difference(gt_file, b, a)
    assert reverse.mean < 0 and reverse.not_worse_beyond_noise()
    much_worse = paired_difference(gt_file, _preds(lambda i: i % 2 == 0), a)
    assert not much_worse.not_worse_beyond_noise()


def test_bad_fold_counts(gt_file):
    with pytest.raises(ValueError, match='num_folds must be at least 2, got 1'):
        paired_difference(gt_file, [], [], num_folds=1)
    with pytest.raises(ValueError, match='has 20 images, fewer than num_folds=30'):
        paired_difference(gt_file, [], [], num_folds=30)
