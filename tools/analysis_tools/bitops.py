"""BitOPs of a config's Swin backbone (or detector) at one input size.

    python tools/analysis_tools/bitops.py CONFIG --shape H W \
        [--scope backbone|detector] [--cfg-options KEY=VALUE ...]

The scope defaults to the model's quantization scope (``model.quant_scope`` of a
``QuantizedDetector`` config): the neck and heads are counted at their
quantizers' bits when the config quantizes them.

Builds the config's model (no checkpoint needed: the count depends on the
architecture, the bit widths and the window ratios only) and prints, per
stage, the token grid, the windows per block, the BitOPs of the configuration
and of the same model with every window high-bit and nothing pruned, then the
totals with the speedup and the effective activation bits. H W is the network
input (after resize and padding). Ratios can be changed on the command line,
e.g. ``--cfg-options model.backbone.low_bit_ratios=0.5``.
"""
import warnings

# Before anything imports it: the pinned stack's deprecation of setuptools'
# pkg_resources (mmengine's package checks); every other warning still shows.
warnings.filterwarnings('ignore', 'pkg_resources is deprecated as an API', UserWarning)

import argparse

from mmdet.registry import MODELS
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope

import mixaq_mmdet  # noqa: F401  (stack fixes)
from mixaq_mmdet.analysis import BitOpsReport, count_bitops
from mixaq_mmdet.models import QUANT_SCOPES

GIGA = 1e9


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config of a Swin detector or backbone')
    parser.add_argument(
        '--shape', type=int, nargs=2, required=True, metavar=('H', 'W'), help='network input size')
    parser.add_argument(
        '--scope',
        choices=QUANT_SCOPES,
        default=None,
        help="'backbone' (the paper's) or 'detector' (adds the "
        'neck and the dense heads; RoI heads left out); default: '
        "the model's quantization scope")
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value pairs')
    args = parser.parse_args()
    if min(args.shape) < 1:
        parser.error(f'--shape must be two positive ints, got {args.shape}')
    return args


def format_report(report: BitOpsReport) -> str:
    """The per-stage table and the totals, as printed by the tool."""
    lines = [f'{"stage":>5} {"tokens":>9} {"windows":>7} '
             f'{"GBitOPs":>10} {"uniform":>10}']
    for stage in report.per_stage:
        h, w = stage['resolution']
        lines.append(f'{stage["stage"]:>5} {f"{h}x{w}":>9} '
                     f'{stage["windows"]:>7} {stage["bitops"] / GIGA:>10.2f} '
                     f'{stage["bitops_uniform"] / GIGA:>10.2f}')
    for part, bitops in report.parts.items():
        if part != 'backbone':
            lines.append(f'{part:>23} {bitops / GIGA:>10.2f}')
    h, w = report.img_shape
    lines += [
        f'input {h}x{w}, scope {report.scope}',
        f'BitOPs: {report.bitops / GIGA:.2f} G '
        f'(uniform {report.bitops_uniform / GIGA:.2f} G, '
        f'MACs {report.macs / GIGA:.3f} G)',
        f'speedup: {report.speedup:.3f}x',
        f'act_bits: {report.act_bits:.2f}',
    ]
    return '\n'.join(lines)


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    print(format_report(count_bitops(model, tuple(args.shape), args.scope)))


if __name__ == '__main__':
    main()
