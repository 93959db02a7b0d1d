"""The embedded benchmark's table (``make demo``): the nano Swin Mask R-CNN on
the shapes data at 320x320, PTQ and QAT rows, the window-policy sweep, two
ratio searches and the paper's claims on them."""
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple

from ..analysis import plot_policy_curves
from ..datasets import generate_split
from .rows import Options, Ratios, Row, Search, Table, Target, Training, ablation_targets

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
FP_CONFIG = 'mask-rcnn_swin-nano-p4-w7_fpn_shapes.py'
PTQ_BASE, QAT_BASE = 'uniform_w4a8', 'qat_uniform_w4a4'
SAQA = 'qat/qat_saqa_w4a4a2_shapes.py'
#: SAQA on the OFQ base (StatsQ weights, CGA), from the OFQ W4A4 model.
SAQA_OFQ = 'qat/qat_saqa_ofq_w4a4a2_shapes.py'
#: Low-bit ratios of the QAT rows: BitOPs speedups over uniform W4A4 of about
#: 1.25x and 1.35x (1.245x, 1.337x at 320x320), and 1.53x with prune 0.2.
RATIO_125, RATIO_135 = 0.49, 0.55
#: Window orders of the sweeps: label, score, order. 'random' and 'reverse'
#: use the 'contrast' score (the one the MixA-Q rows use on the benchmark).
ORDERS: Tuple[Tuple[str, str, str],
              ...] = (('l2', 'l2', 'importance'), ('contrast', 'contrast', 'importance'),
                      ('random', 'contrast', 'random'), ('reverse', 'contrast', 'reverse'))
#: The sweeps calibrate every pair at this low-bit ratio (both branches see data).
CALIB_RATIO = 0.5
#: Low-bit ratio of W4 A8/A2 at 1.35x over W4A8 (320x320).
RATIO_A2_135 = 0.42
#: The sweeps: row prefix, config, base row, low-bit ratios evaluated (W4
#: A8/A2; the demo's 60 minutes left out an A4/A2 sweep and the ratio 0.5).
SWEEPS: Tuple[Tuple[str, str, str, Tuple[float, ...]],
              ...] = (('policy_w4a8a2', 'ptq/ptq_mixaq_w4a8a2_shapes.py', PTQ_BASE,
                       (0.25, RATIO_A2_135, 0.75)), )


def policy(order: Optional[str] = None, score: Optional[str] = None) -> Options:
    """Options of a row evaluated with another window order or score."""
    options = []
    if order:
        options.append(('model.backbone.window_order', order))
    if score:
        options.append(('model.backbone.window_score', score))
    return tuple(options)


def _qat(name: str, config: str, model: str, **kwargs) -> Row:
    return Row(name, config, model, QAT_BASE, 'QAT', **kwargs)


def sweep_rows() -> Tuple[Row, ...]:
    """``<prefix>_<order>_<ratio>``: each order calibrated once at
    :data:`CALIB_RATIO`, then evaluated at each ratio (same on every pair)."""
    rows = []
    for prefix, config, base, ratios in SWEEPS:
        for label, score, order in ORDERS:
            rows += [
                Row(f'{prefix}_{label}_{ratio:g}',
                    config,
                    'fp',
                    base,
                    'PTQ',
                    options=policy(order, score),
                    ratios=Ratios(ratio),
                    calibration=f'{prefix}_{label}',
                    calib_ratios=Ratios(CALIB_RATIO),
                    plotted=False) for ratio in ratios
            ]
    return tuple(rows)


def plot_policy(rows: Sequence[Dict], out_file: str) -> None:
    """bbox mAP against speedup over W4A8 along the low-bit ratio of the W4
    A8/A2 sweep, one line per window order from uniform W4A8 (ratio 0) to
    uniform W4A2 (ratio 1); the uniform bit widths and the searched point."""
    by_name = {r['name']: r for r in rows if r.get('speedup')}
    prefix, _, _, ratios = SWEEPS[0]
    ends = [by_name[n] for n in (PTQ_BASE, 'uniform_w4a2') if n in by_name]
    curves = {}
    for label, score, order in ORDERS:
        points = [
            by_name[f'{prefix}_{label}_{r:g}'] for r in ratios
            if f'{prefix}_{label}_{r:g}' in by_name
        ]
        if points:
            name = f'{score}/{order}' if order != 'importance' else f'{score} (importance)'
            curves[name] = [(r['speedup'], r['bbox_mAP']) for r in ends[:1] + points + ends[1:]]
    singles = [(n, by_name[n]['speedup'], by_name[n]['bbox_mAP'])
               for n in ('uniform_w4a8', 'uniform_w4a6', 'uniform_w4a4', 'uniform_w4a3',
                         'uniform_w4a2', 'search_1.35x') if n in by_name]
    if curves:
        plot_policy_curves(
            curves,
            singles,
            out_file,
            title='Window policy, PTQ W4 A8/A2 (val, 320x320)',
            xlabel=f'BitOPs speedup over {PTQ_BASE}')


def generate_shapes(data_root: str, sizes: Dict[str, int]) -> None:
    """Generate each split of the shapes data whose annotation file is absent."""
    missing = [
        s for s in sizes
        if not osp.isfile(osp.join(data_root, 'annotations', f'instances_{s}.json'))
    ]
    if not missing:
        print(f'[table] data: {data_root} (present)')
        return
    print('[table] data: generating ' + ', '.join(f'{sizes[s]} {s}'
                                                  for s in missing) + f' images into {data_root}')
    for split in missing:
        generate_split(data_root, split, sizes[split], seed=0)


def _ptq(name: str, options: Options = (), suffix: str = '') -> Row:
    return Row(
        name + suffix,
        f'ptq/ptq_{name}_shapes.py',
        'fp',
        PTQ_BASE,
        'PTQ',
        options,
        plotted=not suffix)


#: Rows on integer kernels (the quantized products as int8 products of the
#: codes), each beside its fake-quantized row: the PTQ ones calibrated the
#: same way (same images, seed and threads), and one SAQA row.
INTEGER = (('test_cfg.execution', 'integer'), )
INTEGER_PTQ_ROWS = ('uniform_w8a8', 'uniform_w4a8', 'uniform_w4a4', 'mixaq_w4a8a4',
                    'mixaq_w4a8a4_prune')
INTEGER_ROWS = INTEGER_PTQ_ROWS + ('qat_mixaq_w4a4a2_1.35x', )

BENCHMARK = Table(
    name='benchmark',
    title='the embedded benchmark (val, 320x320)',
    config_root=osp.join(REPO, 'configs', 'benchmark'),
    data_root='data/shapes_coco',
    work_dir='work_dirs/demo',
    generate_data=generate_shapes,
    ann_files={
        split: f'annotations/instances_{split}.json'
        for split in ('train', 'val', 'search')
    },
    img_shape=(320, 320),
    eval_batch=8,
    # the QAT claims are judged over three trainings of every model behind
    # them (the FP model, shared, is not: the PTQ rows have no training of
    # their own); the rows without a claim (prune, OFQ W4A3, SAQA on OFQ) are
    # trained once, from the first seed of their parent, to keep the demo
    # within 60 minutes
    seeds=(0, 1, 2),
    # each trained model's val mAP is a row of the table
    validate_trainings=False,
    trainings=(
        Training('fp', FP_CONFIG),
        Training('qat_uniform_w4a4', 'qat/qat_uniform_w4a4_shapes.py', 'fp', seeded=True),
        Training('qat_uniform_w4a3', 'qat/qat_uniform_w4a3_shapes.py', 'fp', seeded=True),
        Training('qat_saqa_w4a4a2', SAQA, 'qat_uniform_w4a4', seeded=True),
        Training('qat_saqa_prune_w4a4a2', 'qat/qat_saqa_prune_w4a4a2_shapes.py',
                 'qat_uniform_w4a4'),
        Training('qat_ofq_w4a4', 'qat/qat_ofq_w4a4_shapes.py', 'fp', seeded=True),
        Training('qat_ofq_w4a3', 'qat/qat_ofq_w4a3_shapes.py', 'fp'),
        Training('qat_saqa_ofq_w4a4a2', SAQA_OFQ, 'qat_ofq_w4a4'),
    ),
    rows=(
        Row('fp', FP_CONFIG, 'fp', PTQ_BASE, 'FP'),
        *(_ptq(f'uniform_{bits}') for bits in ('w8a8', 'w4a8', 'w4a6', 'w4a4', 'w4a3', 'w4a2')),
        _ptq('mixaq_w4a8a4'),
        _ptq('mixaq_w4a8a4_prune'),
        *(_ptq(name, INTEGER, '_integer') for name in INTEGER_PTQ_ROWS),
        # the PTQ base: RepQ-ViT's quantizers (above) against PTQ4ViT's twin uniform
        # quantizer and UQ-ViT's DeMax / NormQuant after the softmax and the GELU,
        # same calibration
        _ptq('mixaq_w4a8a2'),
        _ptq('ptq4vit_uniform_w4a4'),
        _ptq('ptq4vit_mixaq_w4a8a2'),
        _ptq('uqvit_uniform_w4a4'),
        _ptq('uqvit_mixaq_w4a8a2'),
        _qat('qat_uniform_w4a4', 'qat/qat_uniform_w4a4_shapes.py', 'qat_uniform_w4a4'),
        _qat('qat_uniform_w4a3', 'qat/qat_uniform_w4a3_shapes.py', 'qat_uniform_w4a3'),
        _qat('qat_saqa_all_high', SAQA, 'qat_saqa_w4a4a2'),
        _qat('qat_mixaq_w4a4a2_1.25x', SAQA, 'qat_saqa_w4a4a2', ratios=Ratios(RATIO_125)),
        _qat('qat_mixaq_w4a4a2_1.35x', SAQA, 'qat_saqa_w4a4a2', ratios=Ratios(RATIO_135)),
        _qat(
            'qat_mixaq_w4a4a2_1.35x_integer',
            SAQA,
            'qat_saqa_w4a4a2',
            options=INTEGER,
            ratios=Ratios(RATIO_135),
            plotted=False),
        _qat(
            'qat_mixaq_prune_1.5x',
            'qat/qat_saqa_prune_w4a4a2_shapes.py',
            'qat_saqa_prune_w4a4a2',
            ratios=Ratios(0.5, 0.2)),
        _qat('qat_no_saqa_1.35x', SAQA, 'qat_saqa_w4a4a2', ratios=Ratios(RATIO_135), init=True),
        _qat(
            'qat_mixaq_l2_1.35x',
            SAQA,
            'qat_saqa_w4a4a2',
            options=policy(score='l2'),
            ratios=Ratios(RATIO_135)),
        _qat(
            'qat_mixaq_random_1.35x',
            SAQA,
            'qat_saqa_w4a4a2',
            options=policy(order='random'),
            ratios=Ratios(RATIO_135)),
        _qat(
            'qat_mixaq_reverse_1.35x',
            SAQA,
            'qat_saqa_w4a4a2',
            options=policy(order='reverse'),
            ratios=Ratios(RATIO_135)),
        # the QAT base: OFQ (StatsQ weights, CGA) beside LSQ, same schedule
        _qat('qat_ofq_w4a4', 'qat/qat_ofq_w4a4_shapes.py', 'qat_ofq_w4a4'),
        _qat('qat_ofq_w4a3', 'qat/qat_ofq_w4a3_shapes.py', 'qat_ofq_w4a3'),
        _qat('qat_saqa_ofq_all_high', SAQA_OFQ, 'qat_saqa_ofq_w4a4a2'),
        _qat(
            'qat_mixaq_ofq_w4a4a2_1.35x', SAQA_OFQ, 'qat_saqa_ofq_w4a4a2',
            ratios=Ratios(RATIO_135)),
        *sweep_rows(),
    ),
    searches=(
        Search(
            'search',
            'ptq/ptq_mixaq_w4a8a2_shapes.py',
            'fp',
            PTQ_BASE, (1.35, ),
            'PTQ',
            uniform_name='uniform_ratio',
            calib_ratio=CALIB_RATIO),
        Search(
            'qat_search',
            SAQA,
            'qat_saqa_w4a4a2',
            QAT_BASE, (1.35, ),
            'QAT',
            uniform_name='qat_uniform_ratio'),
    ),
    targets=(
        Target('PTQ A8/A2 1.35x: contrast order above random, beyond noise',
               'policy_w4a8a2_contrast_0.42', 'policy_w4a8a2_random_0.42', 'noise'),
        Target('PTQ A8/A2 1.35x: contrast order above its reverse, beyond noise',
               'policy_w4a8a2_contrast_0.42', 'policy_w4a8a2_reverse_0.42', 'noise'),
        Target('PTQ A8/A2 1.35x: searched ratios not worse than one ratio for all pairs',
               'search_1.35x', 'uniform_ratio_1.35x', 'not_worse'),
        Target('QAT A4/A2 1.35x: searched ratios not worse than one ratio for all pairs',
               'qat_search_1.35x', 'qat_uniform_ratio_1.35x', 'not_worse'),
        Target('SAQA, every window high-bit >= uniform W4A4 QAT', 'qat_saqa_all_high',
               'qat_uniform_w4a4', 'ge'),
        Target('MixA-Q 1.25x within 0.5 of uniform W4A4 QAT', 'qat_mixaq_w4a4a2_1.25x',
               'qat_uniform_w4a4', 'within'),
        Target('MixA-Q 1.35x above uniform W4A3 QAT (same cost)', 'qat_mixaq_w4a4a2_1.35x',
               'qat_uniform_w4a3', 'gt'),
        *ablation_targets('1.35x'),
        Target('QAT base, uniform W4A4: OFQ above LSQ, beyond noise', 'qat_ofq_w4a4',
               'qat_uniform_w4a4', 'noise'),
        *(Target(f'Integer execution, {name}: equal to fake quantization within 0.1',
                 f'{name}_integer', name, 'equal') for name in INTEGER_ROWS),
        Target('PTQ base, uniform W4A4: twin uniform (PTQ4ViT) not worse than RepQ-ViT\'s',
               'ptq4vit_uniform_w4a4', 'uniform_w4a4', 'not_worse'),
        Target('PTQ base, MixA-Q A8/A2 1.35x: twin uniform (PTQ4ViT) not worse than '
               'RepQ-ViT\'s', 'ptq4vit_mixaq_w4a8a2', 'mixaq_w4a8a2', 'not_worse'),
        Target('PTQ base, uniform W4A4: DeMax + NormQuant (UQ-ViT) not worse than RepQ-ViT\'s',
               'uqvit_uniform_w4a4', 'uniform_w4a4', 'not_worse'),
        Target(
            'PTQ base, MixA-Q A8/A2 1.35x: DeMax + NormQuant (UQ-ViT) not worse than '
            'RepQ-ViT\'s', 'uqvit_mixaq_w4a8a2', 'mixaq_w4a8a2', 'not_worse'),
    ),
    plots={
        'PTQ': (PTQ_BASE, 'pareto.png'),
        'QAT': (QAT_BASE, 'pareto_qat.png')
    },
    extra_plots=((plot_policy, 'policy_curve.png'), ),
)
