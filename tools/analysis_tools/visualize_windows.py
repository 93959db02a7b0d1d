"""Draw which windows of one image run at high bits, low bits or are pruned.

    python tools/analysis_tools/visualize_windows.py CONFIG CHECKPOINT IMAGE \
        --out windows.png [--low-ratio R] [--prune-ratio P] [--score l2|contrast]

The image goes through the config's test pipeline and data preprocessor, then
the backbone; each stage's windows are grouped by the window policy. A
MixAQSwinTransformer backbone uses its own policy and per-pair ratios unless a
flag overrides them (one ratio for every stage); a plain mmdet Swin uses the
flags, by default low 0.5, prune 0.0, score 'l2'.
"""
import warnings

# Before anything imports it: the pinned stack's deprecation of setuptools'
# pkg_resources (mmengine's package checks); every other warning still shows.
warnings.filterwarnings('ignore', 'pkg_resources is deprecated as an API', UserWarning)

import argparse
import os.path as osp

from mmcv.transforms import Compose
from mmengine.config import DictAction
from mmengine.dataset import pseudo_collate

import mixaq_mmdet  # noqa: F401  (stack fixes)
from mixaq_mmdet.analysis import (GROUP_NAMES, block_geometry, draw_window_groups, load_detector,
                                  stage_strides, window_group_maps)
from mixaq_mmdet.models.backbones import MixAQSwinTransformer
from mixaq_mmdet.models.layers import WINDOW_SCORES, WindowPolicy

ANNOTATION_LOADERS = ('LoadAnnotations', 'LoadPanopticAnnotations')
PLAIN_SWIN_LOW_RATIO = 0.5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='detector config with a Swin backbone')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('image', help='image file')
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument(
        '--low-ratio',
        type=float,
        default=None,
        help='low-bit window ratio of every stage (plain Swin: '
        f'default {PLAIN_SWIN_LOW_RATIO})')
    parser.add_argument(
        '--prune-ratio',
        type=float,
        default=None,
        help='pruned window ratio of every stage (plain Swin: '
        'default 0)')
    parser.add_argument(
        '--score',
        choices=WINDOW_SCORES,
        default=None,
        help="window score (plain Swin: default 'l2')")
    parser.add_argument('--device', default='cpu')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value pairs')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not osp.isfile(args.image):
        raise FileNotFoundError(f'image file {args.image} does not exist')
    model, cfg = load_detector(args.config, args.checkpoint, args.cfg_options, args.device)
    backbone = model.backbone
    pipeline_cfg = [
        t for t in cfg.test_dataloader.dataset.pipeline
        if t['type'].split('.')[-1] not in ANNOTATION_LOADERS
    ]
    data = Compose(pipeline_cfg)(dict(img_path=args.image, img_id=0))
    inputs = model.data_preprocessor(pseudo_collate([data]), False)['inputs']

    window_size = block_geometry(backbone.stages[0].blocks[0])[0]
    low, prune = args.low_ratio, args.prune_ratio
    if isinstance(backbone, MixAQSwinTransformer):
        policy = backbone.policy
        if args.score is not None:
            policy = WindowPolicy(window_size, args.score, policy.order, policy.seed)
    else:
        policy = WindowPolicy(window_size, args.score or 'l2')
        low = PLAIN_SWIN_LOW_RATIO if low is None else low
    maps = window_group_maps(backbone, inputs, policy, low, prune)

    image = data['inputs'].permute(1, 2, 0).numpy()
    if pipeline_cfg[0].get('channel_order', 'bgr') == 'bgr':
        image = image[..., ::-1]
    strides = stage_strides(backbone)
    draw_window_groups(image.copy(), maps, window_size, strides, args.out)

    print(f'{type(backbone).__name__}, {policy}')
    for i, stage_maps in enumerate(maps):
        for part, window_map in stage_maps.items():
            counts = ', '.join(f'{(window_map == g).sum()} {name}'
                               for g, name in enumerate(GROUP_NAMES))
            print(f'stage {i} (stride {strides[i]}) {part}: {counts}')
    print(f'figure written to {args.out}')


if __name__ == '__main__':
    main()
