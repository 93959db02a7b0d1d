"""Write the embedded shapes benchmark in COCO format.

    python tools/data/make_shapes_coco.py [--out data/shapes_coco] [--seed 0]

Same seed, same files: every image has its own random stream.
"""
import warnings

# Before anything imports it: the pinned stack's deprecation of setuptools'
# pkg_resources (mmengine's package checks); every other warning still shows.
warnings.filterwarnings('ignore', 'pkg_resources is deprecated as an API', UserWarning)

import argparse
import time

from mixaq_mmdet.datasets import ShapesCocoSpec, generate


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/shapes_coco')
    parser.add_argument('--num-train', type=int, default=600)
    parser.add_argument('--num-val', type=int, default=200)
    parser.add_argument(
        '--num-search',
        type=int,
        default=100,
        help='images of the search split (tools/search_ratios.py)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--img-size', type=int, nargs=2, default=(320, 320), metavar=('H', 'W'))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    start = time.time()
    files = generate(
        args.out,
        args.num_train,
        args.num_val,
        args.seed,
        ShapesCocoSpec(img_size=tuple(args.img_size)),
        num_search=args.num_search)
    for split, path in files.items():
        print(f'{split}: {path}')
    print(f'done in {time.time() - start:.1f} s')


if __name__ == '__main__':
    main()
