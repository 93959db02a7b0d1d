"""How often integer execution's codes differ from fake quantization's, per position.

    python tools/analysis_tools/integer_codes.py CONFIG CHECKPOINT \
        [--num-images N] [--out codes.json] [--cfg-options ...]

CONFIG is a quantized config (PTQ or QAT) and CHECKPOINT an FP checkpoint (it
is calibrated first, as ``tools/test.py`` does) or a calibrated / QAT one. The
backbones of the detector, fake-quantized and converted to integer execution
(:func:`mixaq_mmdet.quantization.to_integer`), run on the same test images;
every activation each quantizer quantizes is compared, and the share of
values that differ is reported per position (branch and place in the
Two-Branch blocks, the patch embedding, the patch mergings' reductions).
"""
import warnings

# Before anything imports it: the pinned stack's deprecation of setuptools'
# pkg_resources (mmengine's package checks); every other warning still shows.
warnings.filterwarnings('ignore', 'pkg_resources is deprecated as an API', UserWarning)

import argparse
import copy
import json
from typing import List

import torch

import mixaq_mmdet  # noqa: F401  (registries)
from mixaq_mmdet.analysis import CodeDifference, code_differences
from mixaq_mmdet.engine import prepare_test_loop
from mixaq_mmdet.quantization import to_integer
from mixaq_mmdet.utils import build_runner, load_runner_config, parse_runner_args


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='quantized config')
    parser.add_argument('checkpoint', help='FP, calibrated or QAT checkpoint')
    parser.add_argument('--work-dir', help='where a calibration saves calibrated.pth')
    parser.add_argument('--num-images', type=int, default=8, help='test images to compare on')
    parser.add_argument('--out', help='write the results to this JSON file')
    args = parse_runner_args(parser)
    if args.num_images < 1:
        parser.error(f'--num-images must be positive, got {args.num_images}')
    return args


def format_table(rows: List[CodeDifference]) -> str:
    lines = [f'{"position":<16} {"values":>12} {"differ":>10} {"share":>10}']
    for r in rows:
        lines.append(f'{r.position:<16} {r.compared:>12} {r.differ:>10} {r.fraction:>10.2e}')
    return '\n'.join(lines)


def main() -> None:
    args = parse_args()
    cfg = load_runner_config(args.config, args.work_dir, args.cfg_options)
    cfg.load_from = args.checkpoint
    loop = prepare_test_loop(build_runner(cfg, dataloaders=['test_dataloader']))
    model = loop.model.eval()
    inputs, seen = [], 0
    for batch in loop.dataloader:
        with torch.no_grad():
            images = model.data_preprocessor(batch, False)['inputs']
        inputs.append(images[:args.num_images - seen])
        seen += len(inputs[-1])
        if seen >= args.num_images:
            break
    integer = to_integer(copy.deepcopy(model))
    rows = code_differences(model.backbone, integer.backbone, inputs, lambda m, x: m(x))
    print(f'{args.config}: codes of integer execution against fake quantization, '
          f'{seen} test images')
    print(format_table(rows))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(
                dict(
                    config=args.config,
                    checkpoint=args.checkpoint,
                    num_images=seen,
                    rows=[dict(r._asdict(), fraction=r.fraction) for r in rows]),
                f,
                indent=2)


if __name__ == '__main__':
    main()
