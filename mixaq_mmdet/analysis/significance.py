"""How much of a difference between two rows is the noise of a small val split."""
import contextlib
import io
import math
from typing import Dict, List, NamedTuple, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


class PairedDifference(NamedTuple):
    """``mean`` mAP difference (points) of A minus B on the whole split, and the
    standard error of that difference estimated from disjoint folds."""
    mean: float
    std_error: float
    folds: List[float]

    def exceeds_noise(self, sigmas: float = 2.0) -> bool:
        """Whether A beats B by more than ``sigmas`` standard errors."""
        return self.mean > sigmas * self.std_error

    def not_worse_beyond_noise(self, sigmas: float = 2.0) -> bool:
        """Whether A is at least as good as B up to ``sigmas`` standard errors."""
        return self.mean >= -sigmas * self.std_error


def coco_map(gt: COCO,
             results: Sequence[Dict],
             iou_type: str = 'bbox',
             img_ids: Sequence[int] = ()) -> float:
    """COCO mAP (IoU .50:.95, points) of ``results`` on ``img_ids`` (all if empty)."""
    with contextlib.redirect_stdout(io.StringIO()):
        ids = list(img_ids) or sorted(gt.getImgIds())
        picked = [r for r in results if r['image_id'] in set(ids)]
        if not picked:
            return 0.0
        evaluator = COCOeval(gt, gt.loadRes(picked), iou_type)
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return 100.0 * max(float(evaluator.stats[0]), 0.0)


def paired_difference(ann_file: str,
                      results_a: Sequence[Dict],
                      results_b: Sequence[Dict],
                      iou_type: str = 'bbox',
                      num_folds: int = 5) -> PairedDifference:
    """mAP(A) - mAP(B) on the split of ``ann_file``, with its standard error.

    The images are split into ``num_folds`` disjoint folds (by sorted image
    id, every ``num_folds``-th image); the difference is computed on each fold
    with the same images for A and B (paired), and the standard error of the
    whole-split difference is ``std(fold differences) / sqrt(num_folds)``: the
    spread one would see between val splits of the same size.
    """
    if num_folds < 2:
        raise ValueError(f'num_folds must be at least 2, got {num_folds}')
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
    ids = sorted(gt.getImgIds())
    if len(ids) < num_folds:
        raise ValueError(f'{ann_file} has {len(ids)} images, fewer than num_folds='
                         f'{num_folds}')
    folds = [
        coco_map(gt, results_a, iou_type, ids[k::num_folds]) -
        coco_map(gt, results_b, iou_type, ids[k::num_folds]) for k in range(num_folds)
    ]
    mean = coco_map(gt, results_a, iou_type) - coco_map(gt, results_b, iou_type)
    std_error = float(np.std(folds, ddof=1)) / math.sqrt(num_folds)
    return PairedDifference(round(mean, 3), round(std_error, 3), [round(f, 3) for f in folds])


class SeededDifference(NamedTuple):
    """A difference A - B measured on several trainings (seeds) of the same
    rows, on the same val images: ``mean`` over the seeds, and its standard
    error from both sources of noise (see :func:`over_seeds`)."""
    mean: float
    std_error: float
    std_error_images: float
    std_error_seeds: float
    per_seed: List[float]

    # the same tests on the mean and its (combined) standard error
    exceeds_noise = PairedDifference.exceeds_noise
    not_worse_beyond_noise = PairedDifference.not_worse_beyond_noise


def over_seeds(differences: Sequence[PairedDifference]) -> SeededDifference:
    """The mean of ``differences`` (one per training seed, all on the same val
    folds) with a standard error that counts both the val images and the
    trainings.

    The images' part is the fold standard error of the seed-averaged fold
    differences (the val split is shared, so its noise does not average out
    over seeds); the trainings' part is the spread of the per-seed differences,
    ``std / sqrt(seeds)``. They add in quadrature. The per-seed spread already
    holds some image noise (each seed meets the images differently), so the sum
    errs on the wide side. One seed: the images' part alone.
    """
    if not differences:
        raise ValueError('over_seeds needs the difference of at least one seed')
    num_folds = {len(d.folds) for d in differences}
    if len(num_folds) != 1 or min(num_folds) < 2:
        raise ValueError(f'the seeds\' differences must share at least 2 folds, got '
                         f'{sorted(num_folds)} folds')
    folds = np.mean([d.folds for d in differences], axis=0)
    images = float(np.std(folds, ddof=1)) / math.sqrt(len(folds))
    means = [d.mean for d in differences]
    seeds = float(np.std(means, ddof=1)) / math.sqrt(len(means)) if len(means) > 1 else 0.0
    return SeededDifference(
        round(float(np.mean(means)), 3), round(math.hypot(images, seeds), 3), round(images, 3),
        round(seeds, 3), means)


__all__ = ['PairedDifference', 'SeededDifference', 'coco_map', 'over_seeds', 'paired_difference']
