"""Evaluate one detector at many window ratios: what the ratio search and the
policy sweeps of ``make demo`` need.

The detector stays in memory, calibrated once; each candidate only sets the
per-pair ratios of its backbone. Its images are loaded once (this rank's share)
and every candidate runs on the same ones. Two measures of a candidate:

- ``bbox_map``: COCO bbox mAP (pycocotools through mmdet's ``CocoMetric``),
  the quantity the search optimizes;
- ``feature_distortion``: the normalized squared error of the neck's features
  (FPN levels) against the float model on the same images, a cheap proxy (no
  heads, no NMS, no COCO evaluation).

Candidates whose window groups have the same sizes on these images compute the
same thing and are evaluated once. Under ``torchrun`` the images are sharded
over the ranks like mmengine's ``DefaultSampler`` and the measures reduced, so
every rank returns the same number.
"""
import contextlib
import io
import logging
import math
from typing import Collection, Dict, Hashable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmdet.registry import DATASETS, METRICS
from mmengine.dataset import pseudo_collate
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.evaluator import Evaluator
from mmengine.logging import MMLogger, print_log
from torch import Tensor, nn

from mixaq_mmdet.analysis.bitops import count_bitops
from mixaq_mmdet.engine.calibration import all_reduce_sum
from mixaq_mmdet.models import MixAQSwinTransformer
from mixaq_mmdet.models.layers import TwoBranchSwinBlock
from mixaq_mmdet.quantization import quantization_disabled, quantizers_of
from .nsga import Candidate


def check_branches_calibrated(backbone: MixAQSwinTransformer, prune_only: bool = False) -> None:
    """Raise unless both branches of every pair are calibrated: a search sets
    any ratio on any pair, and an uncalibrated branch must never run.

    With ``prune_only`` (no low-bit genes) only the high branches must be.
    """
    branches = ('high', ) if prune_only else ('high', 'low')
    for i, stage in enumerate(backbone.stages):
        for j, block in enumerate(stage.blocks):
            if not isinstance(block, TwoBranchSwinBlock):
                continue
            for branch in branches:
                missing = [q for q in quantizers_of(block.branches[branch]) if not q.is_calibrated]
                if missing:
                    pair = backbone.pair_index[i][j]
                    raise ValueError(
                        f'pair {pair} (stage {i}, block {j}): the {branch}-bit branch is '
                        f'not calibrated ({len(missing)} quantizers, e.g. '
                        f'{missing[0].display_name}); the search needs both branches of '
                        'every pair calibrated: calibrate at a low-bit ratio that reaches '
                        'every pair (e.g. 0.5; tools/search_ratios.py --calib-low-bit-ratio) '
                        'or use a SAQA checkpoint')


#: Search images a ratio search holds by default: a bounded subset of a split
#: (train2017 has 118k images). At 800x1333 one held image is about 3.2 MB
#: (uint8 after the test pipeline), so 256 take about 0.8 GB over all ranks.
DEFAULT_SEARCH_IMAGES = 256
#: Host memory the proxy's float reference features may take on one rank (MB).
#: At 800x1333 an image's FPN features are about 46 MB (float16); batches
#: beyond the budget recompute theirs for each candidate instead of storing them.
DEFAULT_REFERENCE_BUDGET_MB = 2048


class RatioEvaluator:
    """A calibrated detector and a fixed set of images, evaluated at any ratios.

    Args:
        model: the detector (quantized, calibrated, in eval mode while used).
        dataset: a dataset config or object (test pipeline, with annotations).
        num_images: evaluate a seeded random subset of this many images (None:
            all); more than the dataset has (after ``exclude``) is an error.
        max_images: with ``num_images`` None, a subset of at most this many
            (e.g. :data:`DEFAULT_SEARCH_IMAGES`); None: no bound.
        seed: seed of that subset.
        exclude: image paths left out before drawing it (e.g. the
            calibration images, when the search split is part of train).
        batch_size: images per forward.
        metrics: CocoMetric metrics of :meth:`evaluate` ('bbox', 'segm').
        hold_images: load this rank's images once and keep them (what a search
            over many candidates needs); False loads them again for each
            evaluation, so that memory does not grow with the number of images
            (a one-off evaluation on a large split such as val2017).
        reference_budget_mb: host memory for the proxy's stored float features
            on this rank; batches beyond it recompute theirs each time.
    """

    def __init__(self,
                 model: nn.Module,
                 dataset,
                 num_images: Optional[int] = None,
                 max_images: Optional[int] = None,
                 seed: int = 0,
                 exclude: Collection[str] = (),
                 batch_size: int = 8,
                 metrics: Sequence[str] = ('bbox', ),
                 hold_images: bool = True,
                 reference_budget_mb: float = DEFAULT_REFERENCE_BUDGET_MB) -> None:
        backbone = getattr(model, 'backbone', None)
        if not isinstance(backbone, MixAQSwinTransformer):
            raise TypeError(f'{type(model).__name__} has no MixAQSwinTransformer backbone: '
                            'only MixA-Q models have window ratios to evaluate')
        if not reference_budget_mb >= 0:
            raise ValueError(f'reference_budget_mb must be >= 0, got {reference_budget_mb!r}')
        self.model = model
        self.backbone = backbone
        dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        if len(dataset) == 0:
            raise ValueError(f'{type(dataset).__name__} ({getattr(dataset, "ann_file", "")}) '
                             'has no images to evaluate on')
        if exclude:
            kept = [
                i for i in range(len(dataset))
                if dataset.get_data_info(i)['img_path'] not in exclude
            ]
            if len(kept) < len(dataset):
                print_log(
                    f'search: {len(dataset) - len(kept)} images of {dataset.ann_file} '
                    'are calibration images; left out',
                    logger='current')
                dataset = dataset.get_subset(kept)
            if len(dataset) == 0:
                raise ValueError(f'every image of {dataset.ann_file} is excluded '
                                 '(calibration images): no image left to evaluate on')
        if num_images is None and max_images is not None:
            if isinstance(max_images, bool) or not isinstance(max_images, int) \
                    or not 1 <= max_images:
                raise ValueError(f'max_images must be a positive int, got {max_images!r}')
            num_images = min(max_images, len(dataset))
        if num_images is not None:
            if isinstance(num_images, bool) or not isinstance(num_images, int) \
                    or not 1 <= num_images:
                raise ValueError(f'num_images must be a positive int, got {num_images!r}')
            if num_images > len(dataset):
                raise ValueError(
                    f'num_images={num_images} is more than the {len(dataset)} images of '
                    f'{dataset.ann_file}' +
                    (' left after excluding the calibration images' if exclude else '') +
                    f': ask for at most {len(dataset)}')
            if num_images < len(dataset):
                rng = np.random.default_rng(seed)
                chosen = sorted(rng.choice(len(dataset), num_images, replace=False).tolist())
                dataset = dataset.get_subset(chosen)
        self.dataset = dataset
        self.num_images = len(dataset)
        self.batch_size = batch_size
        self.metrics = tuple(metrics)
        self.hold_images = hold_images
        self.reference_budget_mb = reference_budget_mb
        self._positions = self._shard_positions()
        self._held = list(self._load_batches()) if hold_images else None
        self.img_shapes = self._network_shapes()
        self._cost_cache: Dict[Hashable, float] = {}
        self._map_cache: Dict[Hashable, float] = {}
        self._distortion_cache: Dict[Hashable, float] = {}
        self._reference: Optional[List[Optional[List[Tensor]]]] = None
        self._evaluator: Optional[Evaluator] = None

    @property
    def img_paths(self) -> List[str]:
        """The images evaluated (all ranks)."""
        return [self.dataset.get_data_info(i)['img_path'] for i in range(self.num_images)]

    @property
    def img_ids(self) -> List[int]:
        """The COCO image ids evaluated (all ranks): what the metric scores over."""
        return [self.dataset.get_data_info(i)['img_id'] for i in range(self.num_images)]

    def _shard_positions(self) -> List[int]:
        """This rank's positions: r, r + W, ... of the list padded to a multiple
        of the world size W, as ``DefaultSampler`` does; the metric gathers
        them back in order and drops the padding."""
        world, rank = get_world_size(), get_rank()
        total = math.ceil(self.num_images / world) * world
        return list(range(rank, total, world))

    def _load_batches(self) -> Iterator[Tuple[dict, Tensor]]:
        """This rank's images, collated in batches, with which of them only
        pad the shards."""
        positions = self._positions
        for k in range(0, len(positions), self.batch_size):
            chunk = positions[k:k + self.batch_size]
            yield (pseudo_collate([self.dataset[p % self.num_images] for p in chunk]),
                   torch.tensor([p >= self.num_images for p in chunk]))

    def batches(self) -> Iterable[Tuple[dict, Tensor]]:
        """(batch, padding mask) of this rank: held, or loaded again."""
        return self._held if self._held is not None else self._load_batches()

    def _network_shapes(self) -> List[Tuple[int, int]]:
        """(H, W) of each image as the backbone receives it alone (resized,
        padded to the preprocessor's divisor), over all ranks: read from the
        loaded shards (gathered in the sampler's order)."""
        divisor = getattr(self.model.data_preprocessor, 'pad_size_divisor', 1)
        local = [tuple(s.img_shape) for batch, _ in self.batches() for s in batch['data_samples']]
        shards = all_gather_object(local)
        world = len(shards)
        shapes = [shards[p % world][p // world] for p in range(self.num_images)]
        return [(math.ceil(h / divisor) * divisor, math.ceil(w / divisor) * divisor)
                for h, w in shapes]

    def set_candidate(self, candidate: Candidate) -> None:
        """Set the backbone's per-pair ratios (validated by the backbone)."""
        self.backbone.set_ratios(list(candidate.low_bit_ratios), list(candidate.prune_ratios))

    def group_key(self, candidate: Candidate) -> Hashable:
        """The window group sizes of every block on these images' shapes: two
        candidates with the same key compute the same thing."""
        self.set_candidate(candidate)
        return tuple(
            tuple(
                tuple(map(tuple, stage['groups']))
                for stage in count_bitops(self.model, shape).per_stage)
            for shape in sorted(set(self.img_shapes)))

    def cost(self, candidate: Candidate) -> float:
        """Mean BitOPs per image (the analytic count at each image's size)."""
        key = self.group_key(candidate)
        if key not in self._cost_cache:
            counts: Dict[Tuple[int, int], int] = {}
            for shape in self.img_shapes:
                counts[shape] = counts.get(shape, 0) + 1
            self._cost_cache[key] = sum(n * count_bitops(self.model, shape).bitops
                                        for shape, n in counts.items()) / self.num_images
        return self._cost_cache[key]

    def uniform_cost(self) -> float:
        """Mean BitOPs per image with every window high-bit: speedups divide it."""
        return self.cost(
            Candidate((0.0, ) * self.backbone.num_pairs, (0.0, ) * self.backbone.num_pairs))

    @torch.no_grad()
    def evaluate(self,
                 candidate: Candidate,
                 outfile_prefix: Optional[str] = None,
                 quiet: bool = True) -> Dict[str, float]:
        """COCO metrics of ``candidate`` (the ``metrics`` of the constructor),
        as mmdet reports them (``coco/bbox_mAP``, ...); with ``outfile_prefix``
        the detections are written as mmdet's CocoMetric writes them."""
        self.set_candidate(candidate)
        if self._evaluator is None:  # built once: the annotation file is read once
            metric = METRICS.build(
                dict(type='CocoMetric', ann_file=self.dataset.ann_file, metric=list(self.metrics)))
            # Score exactly the images evaluated: CocoMetric otherwise scores
            # every image of the annotation file (all of train2017 for a
            # subset of it), as if the others had no detections.
            metric.img_ids = self.img_ids
            self._evaluator = Evaluator(metric)
            self._evaluator.dataset_meta = self.dataset.metainfo
        evaluator = self._evaluator
        evaluator.metrics[0].outfile_prefix = outfile_prefix
        self.model.eval()
        for batch, _ in self.batches():
            evaluator.process(data_samples=self.model.test_step(batch), data_batch=batch)
        logger = MMLogger.get_current_instance()
        level = logger.level
        with contextlib.ExitStack() as stack:
            if quiet:
                logger.setLevel(logging.WARNING)
                stack.callback(logger.setLevel, level)
                stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            return evaluator.evaluate(self.num_images)

    def bbox_map(self, candidate: Candidate) -> float:
        """COCO bbox mAP (0-100) of ``candidate`` on these images."""
        key = self.group_key(candidate)
        if key not in self._map_cache:
            self._map_cache[key] = 100 * self.evaluate(candidate)['coco/bbox_mAP']
        return self._map_cache[key]

    @torch.no_grad()
    def _features(self, batch: dict) -> List[Tensor]:
        inputs = self.model.data_preprocessor(batch, False)['inputs']
        return list(self.model.extract_feat(inputs))

    @contextlib.contextmanager
    def _float_model(self) -> Iterator[None]:
        """The model's float function: quantization off, every window in the
        high branch, none pruned; the ratios and switches restored after."""
        ratios = (list(self.backbone.low_bit_ratios), list(self.backbone.prune_ratios))
        self.backbone.set_ratios(0.0, 0.0)
        try:
            with quantization_disabled(self.model):
                self.model.eval()
                yield
        finally:
            self.backbone.set_ratios(*ratios)

    def _float_features(self, batch: dict) -> List[Tensor]:
        """The float model's neck features of ``batch`` (rounded to float16, as
        stored)."""
        with self._float_model():
            return [f.half() for f in self._features(batch)]

    def _reference_features(self) -> List[Optional[List[Tensor]]]:
        """The float model's neck features of every held batch, computed once,
        as long as they fit ``reference_budget_mb``; None for the others
        (recomputed when needed) and for images that are not held."""
        if self._reference is None:
            budget = self.reference_budget_mb * 2**20
            stored, self._reference = 0, []
            for batch, _ in (self._held or []):
                features = self._float_features(batch) if stored < budget else None
                size = sum(f.numel() * f.element_size() for f in features or [])
                if features is not None and stored + size > budget:
                    features, size = None, 0
                stored += size
                self._reference.append(features)
        return self._reference

    @property
    def reference_bytes(self) -> int:
        """Host memory the stored reference features take on this rank."""
        return sum(f.numel() * f.element_size() for features in self._reference or [] if features
                   for f in features)

    def feature_distortion(self, candidate: Candidate) -> float:
        """Mean over images of ``sum_levels |f - f_float|^2 / sum_levels |f_float|^2``
        for the neck's features ``f`` (0: the float model's features)."""
        key = self.group_key(candidate)
        if key not in self._distortion_cache:
            reference = self._reference_features()
            self.set_candidate(candidate)
            total, count = 0.0, 0
            for k, (batch, padding) in enumerate(self.batches()):
                ref = reference[k] if k < len(reference) else None
                if ref is None:
                    ref = self._float_features(batch)
                self.model.eval()
                err = energy = 0
                for f, r in zip(self._features(batch), ref):
                    r = r.float()
                    err = err + (f - r).pow(2).flatten(1).sum(1)
                    energy = energy + r.pow(2).flatten(1).sum(1)
                distortion = (err / energy.clamp_min(1e-12))[~padding]
                total += float(distortion.sum())
                count += len(distortion)
            self._distortion_cache[key] = all_reduce_sum(total) / all_reduce_sum(count)
        return self._distortion_cache[key]


__all__ = [
    'RatioEvaluator', 'check_branches_calibrated', 'DEFAULT_SEARCH_IMAGES',
    'DEFAULT_REFERENCE_BUDGET_MB'
]
