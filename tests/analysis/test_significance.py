"""Paired mAP differences with their noise over folds of the val images."""
import json

import pytest

from mixaq_mmdet.analysis import PairedDifference, coco_map, over_seeds, paired_difference


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


def test_one_seed_keeps_the_image_noise(gt_file):
    diff = paired_difference(gt_file, _preds(lambda i: True), _preds(lambda i: i != 7))
    seeded = over_seeds([diff])
    assert seeded.mean == diff.mean and seeded.std_error_seeds == 0
    assert seeded.std_error == pytest.approx(diff.std_error, abs=2e-3)


def test_seeds_that_disagree_widen_the_error():
    """Each seed alone is far beyond its image noise, but the trainings
    disagree: the mean over seeds is not."""
    seeds = [PairedDifference(m, 0.1, [m - 0.1, m, m + 0.1, m, m]) for m in (1.5, -0.9, 0.3)]
    seeded = over_seeds(seeds)
    assert seeded.mean == pytest.approx(0.3) and seeded.per_seed == [1.5, -0.9, 0.3]
    assert seeded.std_error_seeds == pytest.approx(1.2 / 3**0.5, abs=1e-3)
    assert seeded.std_error > seeded.std_error_seeds > seeded.std_error_images
    assert seeds[0].exceeds_noise()
    assert not seeded.exceeds_noise()
    agreeing = over_seeds([PairedDifference(m, 0.1, [m] * 5) for m in (1.0, 1.1, 0.9)])
    assert agreeing.exceeds_noise() and agreeing.std_error_images == 0


def test_seeds_measured_on_other_folds_are_refused():
    with pytest.raises(ValueError, match='share at least 2 folds'):
        over_seeds([PairedDifference(1, 0, [1, 1]), PairedDifference(1, 0, [1, 1, 1])])
    with pytest.raises(ValueError, match='at least one seed'):
        over_seeds([])
