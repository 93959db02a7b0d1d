"""The paper's COCO table (``tools/run_demo.py --table coco``): Swin-T Mask
R-CNN at 800x1333 from mmdet's 3x multi-scale-crop checkpoint (46.0 box AP),
PTQ on W4A8, QAT on W4A4, SAQA and its ablations, and the per-pair searches.

Every run is one of ``configs/mixaq/`` launched through the project's tools;
the 6-epoch W4A4 / W4A3 QAT models are continued 6 more epochs (``-12e``) so
that the SAQA rows (6 + 6 epochs) are compared at the same training length.
"""
import os.path as osp

from ..search import DEFAULT_SEARCH_IMAGES
from .rows import Ratios, Row, Search, SearchSettings, Table, Target, Training, ablation_targets

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
#: mmdet's metafile (configs/swin/metafile.yml): the FP base of the paper's tables.
FP_CHECKPOINT = ('https://download.openmmlab.com/mmdetection/v2.0/swin/'
                 'mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco/'
                 'mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_20210906_131725-bacf6f7b.pth')
FP_CONFIG = 'mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
PTQ_BASE, QAT_BASE = 'uniform_w4a8', 'qat_uniform_w4a4'
SAQA, SAQA_PRUNE = 'qat/qat_saqa_w4a4a2_swin-t_coco.py', 'qat/qat_saqa-prune_w4a4a2_swin-t_coco.py'
#: One low-bit ratio on every pair for 1.35x over W4A4 at 800x1333 (the
#: ``mixaq_w4a4a2-1.35x`` config's); the ablations change one thing at it.
RATIO_135 = 0.54


def _ptq(name: str, config: str) -> Row:
    return Row(name, f'ptq/{config}_swin-t_coco.py', 'fp', PTQ_BASE, 'PTQ')


def _qat(name: str, config: str, model: str) -> Row:
    return Row(name, config, model, QAT_BASE, 'QAT')


def _at_135(name: str, init: bool = False, **policy: str) -> Row:
    """A SAQA row at one low-bit ratio on every pair (1.35x), with another
    window ``policy`` (``window_score``, ``window_order``) or at its QAT
    initialization (``init``)."""
    options = tuple((f'model.backbone.{k}', v) for k, v in policy.items())
    return Row(
        name,
        SAQA,
        'qat_saqa_w4a4a2',
        QAT_BASE,
        'QAT',
        options,
        ratios=Ratios(RATIO_135),
        init=init)


COCO = Table(
    name='coco',
    title='COCO val2017, Swin-T Mask R-CNN 3x (800x1333)',
    config_root=osp.join(REPO, 'configs', 'mixaq'),
    data_root='data/coco',
    ann_files=dict(
        train='annotations/instances_train2017.json',
        val='annotations/instances_val2017.json',
        search='annotations/instances_train2017.json'),
    img_shape=(800, 1344),
    eval_batch=1,
    search_settings=SearchSettings(pop=16, gens=8, images=DEFAULT_SEARCH_IMAGES),
    trainings=(
        Training('fp', FP_CONFIG, checkpoint=FP_CHECKPOINT),
        Training('qat_uniform_w4a4', 'qat/qat_uniform_w4a4_swin-t_coco.py', 'fp'),
        Training('qat_uniform_w4a3', 'qat/qat_uniform_w4a3_swin-t_coco.py', 'fp'),
        Training('qat_uniform_w4a4_12e', 'qat/qat_uniform_w4a4-12e_swin-t_coco.py',
                 'qat_uniform_w4a4'),
        Training('qat_uniform_w4a3_12e', 'qat/qat_uniform_w4a3-12e_swin-t_coco.py',
                 'qat_uniform_w4a3'),
        Training('qat_saqa_w4a4a2', SAQA, 'qat_uniform_w4a4'),
        Training('qat_saqa_prune_w4a4a2', SAQA_PRUNE, 'qat_uniform_w4a4'),
    ),
    rows=(
        Row('fp', FP_CONFIG, 'fp', PTQ_BASE, 'FP'),
        _ptq('uniform_w8a8', 'ptq_uniform_w8a8'),
        _ptq('uniform_w4a8', 'ptq_uniform_w4a8'),
        _ptq('uniform_w4a4', 'ptq_uniform_w4a4'),
        _ptq('mixaq_w4a8a4_1.24x', 'ptq_mixaq_w4a8a4-1.24x'),
        _ptq('mixaq_w4a8a4_1.35x', 'ptq_mixaq_w4a8a4-1.35x'),
        _ptq('mixaq_w4a8a4_prune_1.52x', 'ptq_mixaq_w4a8a4-prune-1.52x'),
        _qat('qat_uniform_w4a4', 'qat/qat_uniform_w4a4_swin-t_coco.py', 'qat_uniform_w4a4'),
        _qat('qat_uniform_w4a3', 'qat/qat_uniform_w4a3_swin-t_coco.py', 'qat_uniform_w4a3'),
        _qat('qat_uniform_w4a4_12e', 'qat/qat_uniform_w4a4-12e_swin-t_coco.py',
             'qat_uniform_w4a4_12e'),
        _qat('qat_uniform_w4a3_12e', 'qat/qat_uniform_w4a3-12e_swin-t_coco.py',
             'qat_uniform_w4a3_12e'),
        _qat('qat_saqa_all_high', SAQA, 'qat_saqa_w4a4a2'),
        _qat('qat_mixaq_w4a4a2_1.24x', 'qat/mixaq_w4a4a2-1.24x_swin-t_coco.py', 'qat_saqa_w4a4a2'),
        _qat('qat_mixaq_w4a4a2_1.35x', 'qat/mixaq_w4a4a2-1.35x_swin-t_coco.py', 'qat_saqa_w4a4a2'),
        _qat('qat_mixaq_prune_1.53x', 'qat/mixaq_w4a4a2-prune-1.53x_swin-t_coco.py',
             'qat_saqa_prune_w4a4a2'),
        _qat('qat_mixaq_prune_1.82x', 'qat/mixaq_w4a4a2-prune-1.82x_swin-t_coco.py',
             'qat_saqa_prune_w4a4a2'),
        _at_135('qat_no_saqa_1.35x', init=True),
        _at_135('qat_mixaq_l2_1.35x', window_score='l2'),
        _at_135('qat_mixaq_random_1.35x', window_order='random'),
        _at_135('qat_mixaq_reverse_1.35x', window_order='reverse'),
    ),
    searches=(
        Search(
            'ptq_search',
            'ptq/ptq_mixaq_w4a8a4-1.35x_swin-t_coco.py',
            'fp',
            PTQ_BASE, (1.24, 1.35),
            'PTQ',
            objective='map',
            calib_ratio=0.5),
        Search(
            'qat_search', SAQA, 'qat_saqa_w4a4a2', QAT_BASE, (1.24, 1.35), 'QAT', objective='map'),
        Search(
            'qat_search_prune',
            SAQA_PRUNE,
            'qat_saqa_prune_w4a4a2',
            QAT_BASE, (1.53, 1.82),
            'QAT',
            objective='map',
            prune=True),
    ),
    targets=(
        Target('SAQA, every window high-bit >= uniform W4A4 QAT of the same length',
               'qat_saqa_all_high', 'qat_uniform_w4a4_12e', 'ge'),
        Target('MixA-Q 1.24x within 0.5 of uniform W4A4 QAT of the same length', 'qat_search_1.24x',
               'qat_uniform_w4a4_12e', 'within'),
        Target('MixA-Q 1.35x above uniform W4A3 QAT of the same length (same cost)',
               'qat_search_1.35x', 'qat_uniform_w4a3_12e', 'gt'),
        Target('QAT 1.35x: searched ratios not worse than one ratio for all pairs',
               'qat_search_1.35x', 'qat_mixaq_w4a4a2_1.35x', 'not_worse'),
        *ablation_targets('1.35x'),
        Target('PTQ 1.35x: searched ratios not worse than one ratio for all pairs',
               'ptq_search_1.35x', 'mixaq_w4a8a4_1.35x', 'not_worse'),
    ),
    plots={
        'PTQ': (PTQ_BASE, 'pareto.png'),
        'QAT': (QAT_BASE, 'pareto_qat.png')
    },
)
