"""The PTQ papers' COCO table (``tools/run_demo.py --table ptq-papers``): the
four Swin detectors RepQ-ViT set and APHQ-ViT, UQ-ViT, QwT and others repeat,
from microsoft's Swin-Transformer-Object-Detection checkpoints, at W4A4 and
W6A6 on each PTQ base and MixA-Q at 1.24x and 1.35x, with the published
figures beside them.

Every row quantizes the whole detector (backbone, FPN and heads: those papers'
protocol) at 800x1333 and calibrates on 32 train2017 images. MixA-Q runs on the
UQ-ViT base, the best base of the published W4A4 figures (the highest mean box
AP over the four detectors; chosen from them, not from this table's val
results), against uniform W4A8 on the same base (the row
``<detector>_uqvit_w4a8``: the UQ-ViT W4A4 config at A8, no config of its own).
"""
import os.path as osp
from typing import Dict, NamedTuple, Tuple

from .rows import Published, Row, Table, Target, Training

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
RELEASES = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.2/'
#: The PTQ bases: their rows' infix and their name in the papers.
BASES = {'repqvit': 'RepQ-ViT', 'ptq4vit': 'PTQ4ViT', 'uqvit': 'UQ-ViT'}
#: PTQ4ViT's base as options of a RepQ-ViT config: its twin uniform quantizer
#: after the softmax and the GELU of every Two-Branch block (the benchmark's
#: ``ptq_ptq4vit_*`` configs), everything else as RepQ-ViT's.
PTQ4VIT_OPTIONS = (('model.backbone.branch_quantizers.softmax.type', 'TwinUniformQuantizer'),
                   ('model.backbone.branch_quantizers.softmax.mode', 'softmax'),
                   ('model.backbone.branch_quantizers.fc2_in.type', 'TwinUniformQuantizer'),
                   ('model.backbone.branch_quantizers.fc2_in.mode', 'gelu'))
#: The base MixA-Q's rows run on.
MIXAQ_BASE = 'uqvit'


class Detector(NamedTuple):
    """One detector of the table: its FP config, its release file and the
    published figures of its rows (row suffix -> figures)."""
    name: str
    fp_config: str
    release: str
    published: Dict[str, Tuple[Published, ...]]


def _fig(source: str, box: float, mask: float) -> Tuple[Published]:
    return (Published(source, box, mask), )


#: The detectors, their checkpoints' figures (Swin-Transformer-Object-Detection's
#: README) and the published PTQ figures (the detection READMEs of zkkli/RepQ-ViT
#: and jiujiuwei/UQ-ViT; APHQ-ViT's paper; QwT's rerun of RepQ-ViT, RepQ-ViT
#: issue #5).
DETECTORS = (
    Detector(
        'mask-rcnn_swin-t', 'mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py',
        'mask_rcnn_swin_tiny_patch4_window7.pth',
        dict(
            fp=_fig('Swin-OD', 46.0, 41.6),
            repqvit_w4a4=_fig('RepQ-ViT', 36.1, 36.0) + _fig('APHQ-ViT', 38.9, 38.1),
            repqvit_w6a6=_fig('RepQ-ViT', 45.1, 41.2),
            uqvit_w4a4=_fig('UQ-ViT', 39.0, 37.3),
            uqvit_w6a6=_fig('UQ-ViT', 45.6, 41.4))),
    Detector(
        'mask-rcnn_swin-s', 'mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py',
        'mask_rcnn_swin_small_patch4_window7.pth',
        dict(
            fp=_fig('Swin-OD', 48.5, 43.3),
            repqvit_w4a4=_fig('RepQ-ViT', 44.2, 40.2) + _fig('QwT rerun', 42.6, 40.0),
            repqvit_w6a6=_fig('RepQ-ViT', 47.8, 43.0),
            uqvit_w4a4=_fig('UQ-ViT', 43.3, 40.3),
            uqvit_w6a6=_fig('UQ-ViT', 48.0, 43.0))),
    Detector(
        'cascade-mask-rcnn_swin-t',
        'cascade-mask-rcnn_swin-t-p4-w7_fpn_4conv1f-giou_amp-ms-crop-3x_coco.py',
        'cascade_mask_rcnn_swin_tiny_patch4_window7.pth',
        dict(
            fp=_fig('Swin-OD', 50.4, 43.7),
            repqvit_w4a4=_fig('RepQ-ViT', 47.0, 41.4),
            repqvit_w6a6=_fig('RepQ-ViT', 50.0, 43.5),
            uqvit_w4a4=_fig('UQ-ViT', 47.3, 41.6),
            uqvit_w6a6=_fig('UQ-ViT', 50.1, 43.7))),
    Detector(
        'cascade-mask-rcnn_swin-s',
        'cascade-mask-rcnn_swin-s-p4-w7_fpn_4conv1f-giou_amp-ms-crop-3x_coco.py',
        'cascade_mask_rcnn_swin_small_patch4_window7.pth',
        dict(
            fp=_fig('Swin-OD', 51.9, 45.0),
            repqvit_w4a4=_fig('RepQ-ViT', 49.3, 43.1),
            repqvit_w6a6=_fig('RepQ-ViT', 51.4, 44.6),
            uqvit_w4a4=_fig('UQ-ViT', 49.6, 43.4),
            uqvit_w6a6=_fig('UQ-ViT', 51.5, 44.7))),
)


def fp_training(detector: Detector) -> str:
    return f'fp_{detector.name}'


def detector_rows(detector: Detector) -> Tuple[Row, ...]:
    """FP, W4A4 and W6A6 on each base (PTQ4ViT's: the RepQ-ViT configs with
    :data:`PTQ4VIT_OPTIONS`), uniform W4A8 and MixA-Q at 1.24x and 1.35x on
    :data:`MIXAQ_BASE`."""
    d, model = detector.name, fp_training(detector)
    w4a8 = f'{d}_{MIXAQ_BASE}_w4a8'

    def row(suffix: str, config: str, base: str = w4a8, **kwargs) -> Row:
        return Row(
            f'{d}_{suffix}',
            config,
            model,
            base,
            'FP' if suffix == 'fp' else 'PTQ',
            published=detector.published.get(suffix, ()),
            **kwargs)

    rows = [row('fp', detector.fp_config)]
    for base in BASES:
        for bits in ('w4a4', 'w6a6'):
            if base == 'ptq4vit':
                rows.append(
                    row(f'{base}_{bits}', f'ptq/ptq_repqvit_{bits}_{d}.py',
                        options=PTQ4VIT_OPTIONS))
            else:
                rows.append(row(f'{base}_{bits}', f'ptq/ptq_{base}_{bits}_{d}.py'))
    rows.append(
        row(f'{MIXAQ_BASE}_w4a8',
            f'ptq/ptq_{MIXAQ_BASE}_w4a4_{d}.py',
            options=(('model.backbone.a_bits', (8, 8)), )))
    for speedup in ('1.24x', '1.35x'):
        rows.append(row(f'mixaq_w4a8a4_{speedup}', f'ptq/ptq_mixaq_w4a8a4-{speedup}_{d}.py'))
    return tuple(rows)


PTQ_PAPERS = Table(
    name='ptq-papers',
    title='COCO val2017, the PTQ papers\' Swin detectors (Swin-Transformer-Object-Detection '
    '3x checkpoints, whole detector quantized, 800x1333)',
    config_root=osp.join(REPO, 'configs', 'ptq_papers'),
    data_root='data/coco',
    ann_files=dict(
        train='annotations/instances_train2017.json', val='annotations/instances_val2017.json'),
    img_shape=(800, 1344),
    eval_batch=1,
    trainings=tuple(
        Training(fp_training(d), d.fp_config, checkpoint=RELEASES + d.release) for d in DETECTORS),
    rows=tuple(row for d in DETECTORS for row in detector_rows(d)),
    targets=tuple(
        Target(f'{d.name}: MixA-Q 1.35x within 0.5 of uniform W4A8 ({BASES[MIXAQ_BASE]} base)',
               f'{d.name}_mixaq_w4a8a4_1.35x', f'{d.name}_{MIXAQ_BASE}_w4a8', 'within')
        for d in DETECTORS),
)
