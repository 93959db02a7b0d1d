"""Write a small data set in COCO 2017's layout (and optionally a random-weight
checkpoint in the official Swin-T Mask R-CNN 3x release's format) for smoke runs
of the COCO configs.

    python tools/data/make_coco_fixture.py [--out data/coco] [--num-train-listed 2000]
        [--num-train-files 8] [--num-val 4] [--seed 0] [--checkpoint PATH [--publish]]

Only the first --num-train-files train2017 entries have files: give every
train2017 dataloader ``indices=<num-train-files>`` (printed at the end).
Refuses to write over a real COCO.
"""
import warnings

# Before anything imports it: the pinned stack's deprecation of setuptools'
# pkg_resources (mmengine's package checks); every other warning still shows.
warnings.filterwarnings('ignore', 'pkg_resources is deprecated as an API', UserWarning)

import argparse
import time

from mixaq_mmdet.datasets import generate_coco_fixture


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/coco')
    parser.add_argument(
        '--num-train-listed',
        type=int,
        default=2000,
        help='images listed in instances_train2017.json')
    parser.add_argument(
        '--num-train-files',
        type=int,
        default=8,
        help='of those, the first ones written to train2017/')
    parser.add_argument('--num-val', type=int, default=4, help='val2017 images (all written)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--checkpoint',
        help='also write a random-weight checkpoint in the official '
        "release's format here")
    parser.add_argument(
        '--publish',
        action='store_true',
        help='the checkpoint as publish_model.py leaves it: no '
        'optimizer, legacy torch serialization')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    start = time.time()
    files = generate_coco_fixture(args.out, args.num_train_listed, args.num_train_files,
                                  args.num_val, args.seed)
    for split, path in files.items():
        print(f'{split}: {path}')
    if args.checkpoint:
        from mixaq_mmdet.utils.official_checkpoint import write_official_checkpoint
        path = write_official_checkpoint(args.checkpoint, args.seed, args.publish)
        print(f'checkpoint: {path}')
    n = args.num_train_files
    print(f'done in {time.time() - start:.1f} s. train2017 dataloaders must read only the '
          f'{n} written files: --cfg-options train_dataloader.dataset.indices={n} '
          f'(PTQ configs: test_cfg.calib_dataloader.dataset.indices={n} '
          f'search_dataloader.dataset.indices={n})')


if __name__ == '__main__':
    main()
