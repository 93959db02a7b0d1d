"""How well window scores find objects: ROC-AUC of object vs background windows.

    python tools/analysis_tools/window_score_auc.py CONFIG CHECKPOINT \
        [--scores l2 contrast] [--num-images N] [--out auc.json]

Runs the backbone of the config's detector on the test split and scores every
window of every stage, regular and shifted partition, with the code the
backbone ranks with (``token_scores`` and ``window_scores`` of
:mod:`mixaq_mmdet.models.layers.window_policy`). A window is an object window
if it holds a pixel of an annotated mask. Reports per score, stage and
partition the ROC-AUC pooled over all windows of the evaluated images, and the
mean of the per-image AUCs (what the per-image ranking actually sees).
"""
import warnings

# Before anything imports it: the pinned stack's deprecation of setuptools'
# pkg_resources (mmengine's package checks); every other warning still shows.
warnings.filterwarnings('ignore', 'pkg_resources is deprecated as an API', UserWarning)

import argparse
import json
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from mmengine.config import DictAction
from mmengine.runner import Runner

import mixaq_mmdet  # noqa: F401  (stack fixes)
from mixaq_mmdet.analysis import (PARTITIONS, block_geometry, load_detector, roc_auc, stage_inputs,
                                  stage_strides, window_object_labels)
from mixaq_mmdet.models.layers import WINDOW_SCORES, token_scores, window_scores

Key = Tuple[str, int, str]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='detector config with a Swin backbone')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--scores',
        nargs='+',
        default=list(WINDOW_SCORES),
        choices=WINDOW_SCORES,
        help='window scores to compare')
    parser.add_argument(
        '--num-images', type=int, default=None, help='evaluate only the first N test images')
    parser.add_argument('--out', help='write the results to this JSON file')
    parser.add_argument('--device', default='cpu')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value pairs')
    args = parser.parse_args()
    if args.num_images is not None and args.num_images < 1:
        parser.error(f'--num-images must be positive, got {args.num_images}')
    return args


def gt_masks(data_sample) -> np.ndarray:
    """(N, h, w) bool masks of a sample at its network-input size (the test
    pipeline usually loads annotations after the resize, at original size)."""
    if 'masks' not in data_sample.gt_instances:
        raise ValueError('the test pipeline gives no GT masks: it needs '
                         "LoadAnnotations(with_mask=True)")
    masks = data_sample.gt_instances.masks
    img_shape = tuple(data_sample.img_shape[:2])
    if (masks.height, masks.width) != img_shape:
        masks = masks.resize(img_shape)
    return masks.to_ndarray().astype(bool)


def collect(model, dataloader, scores: List[str],
            num_images: Optional[int]) -> Tuple[Dict[Key, list], int, List[int]]:
    """Per (score, stage, partition) a list of (window scores, labels) per
    image; also the number of images and the stage strides."""
    backbone = model.backbone
    strides = stage_strides(backbone)
    geometry = [[block_geometry(b) for b in stage.blocks[:len(PARTITIONS)]]
                for stage in backbone.stages]
    windows: Dict[Key, list] = defaultdict(list)
    seen = 0
    for batch in dataloader:
        data = model.data_preprocessor(batch, False)
        samples = data['data_samples']
        if num_images is not None:
            samples = samples[:num_images - seen]
        inputs = data['inputs'][:len(samples)]
        masks = [gt_masks(s) for s in samples]
        for i, (x, hw_shape) in enumerate(stage_inputs(backbone, inputs)):
            for part, (ws, shift) in zip(PARTITIONS, geometry[i]):
                labels = [window_object_labels(m, hw_shape, strides[i], ws, shift) for m in masks]
                for score in scores:
                    values, has_tokens = window_scores(token_scores(x, hw_shape, score), ws, shift)
                    for b, label in enumerate(labels):
                        keep = has_tokens[b].cpu()
                        windows[(score, i, part)].append(
                            (values[b].cpu()[keep].numpy(), label.cpu()[keep].numpy()))
        seen += len(samples)
        if num_images is not None and seen >= num_images:
            break
    if seen == 0:
        raise ValueError('the test dataloader gave no images')
    return windows, seen, strides


def auc_or_none(values: np.ndarray, labels: np.ndarray) -> Optional[float]:
    """ROC-AUC, or None when one class is absent."""
    if labels.all() or not labels.any():
        return None
    return roc_auc(values, labels)


def summarize(windows: Dict[Key, list], strides: List[int]) -> List[dict]:
    """One result row per (score, stage, partition)."""
    rows = []

    def order(key: Key) -> tuple:
        score, stage, part = key
        return WINDOW_SCORES.index(score), stage, PARTITIONS.index(part)

    for score, stage, part in sorted(windows, key=order):
        per_image = windows[(score, stage, part)]
        values = np.concatenate([v for v, _ in per_image])
        labels = np.concatenate([lab for _, lab in per_image])
        image_aucs = [a for a in (auc_or_none(v, lab) for v, lab in per_image) if a is not None]
        rows.append(
            dict(
                score=score,
                stage=stage,
                stride=strides[stage],
                partition=part,
                num_windows=int(labels.size),
                num_object_windows=int(labels.sum()),
                auc=auc_or_none(values, labels),
                auc_image_mean=float(np.mean(image_aucs)) if image_aucs else None,
                num_images_with_both=len(image_aucs)))
    return rows


def format_table(rows: List[dict]) -> str:

    def fmt(value: Optional[float]) -> str:
        return '    -' if value is None else f'{value:.3f}'

    lines = [
        f'{"score":<9} {"stage":>5} {"stride":>6} {"partition":<9} '
        f'{"windows":>7} {"object":>6} {"AUC":>6} {"AUC/img":>7}'
    ]
    for r in rows:
        lines.append(f'{r["score"]:<9} {r["stage"]:>5} {r["stride"]:>6} '
                     f'{r["partition"]:<9} {r["num_windows"]:>7} '
                     f'{r["num_object_windows"]:>6} {fmt(r["auc"]):>6} '
                     f'{fmt(r["auc_image_mean"]):>7}')
    return '\n'.join(lines)


def main() -> None:
    args = parse_args()
    model, cfg = load_detector(args.config, args.checkpoint, args.cfg_options, args.device)
    dataloader = Runner.build_dataloader(cfg.test_dataloader)
    with torch.no_grad():
        windows, num_images, strides = collect(model, dataloader, args.scores, args.num_images)
    rows = summarize(windows, strides)
    print(f'window score ROC-AUC, object vs background windows, '
          f'{num_images} images (AUC: pooled; AUC/img: mean per image)')
    print(format_table(rows))
    if args.out:
        result = dict(
            config=args.config,
            checkpoint=args.checkpoint,
            num_images=num_images,
            window_size=block_geometry(model.backbone.stages[0].blocks[0])[0],
            rows=rows)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=2)
        print(f'results written to {args.out}')


if __name__ == '__main__':
    main()
