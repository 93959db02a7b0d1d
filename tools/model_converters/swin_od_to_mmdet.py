"""Convert a release of microsoft's Swin-Transformer-Object-Detection to mmdet 3.x keys.

    python tools/model_converters/swin_od_to_mmdet.py SRC DST

SRC is a file or URL in that repository's layout (e.g.
https://github.com/SwinTransformer/storage/releases/download/v1.0.2/mask_rcnn_swin_tiny_patch4_window7.pth);
DST gets mmdet 3.x's keys, the meta (with the conversion recorded) and no
optimizer. ``tools/test.py`` converts on its own (once, cached); this writes
the converted file where you want it.
"""
import warnings

# Before anything imports it: the pinned stack's deprecation of setuptools'
# pkg_resources (mmengine's package checks); every other warning still shows.
warnings.filterwarnings('ignore', 'pkg_resources is deprecated as an API', UserWarning)

import argparse

from mixaq_mmdet.utils.swin_od_checkpoint import convert_swin_od_file


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        'src', help="checkpoint file or URL in Swin-Transformer-Object-Detection's layout")
    parser.add_argument('dst', help='where to write the converted checkpoint')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print(f'{args.src} converted to {convert_swin_od_file(args.src, args.dst)}')


if __name__ == '__main__':
    main()
