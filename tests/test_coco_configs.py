"""The COCO tables' configs (configs/mixaq, configs/ptq_papers): each quantized
row quantizes its table's FP model, no download where a detector checkpoint
follows, the speedups rows name, and equal training lengths for SAQA and its
baselines. The checks hold per table (:data:`~mixaq_mmdet.tables.COCO_TABLES`)."""
import glob
import os.path as osp
import re

import pytest
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mixaq_mmdet.analysis import count_bitops
from mixaq_mmdet.engine.checkpoints import check_base_model
from mixaq_mmdet.tables import COCO_TABLES
from .conftest import REPO

MIXAQ = osp.join(REPO, 'configs/mixaq')
QAT = osp.join(MIXAQ, 'qat')
THREE_X = 'mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco'


def _cfg(path):
    init_default_scope('mmdet')
    return Config.fromfile(path)


def _is_3x(cfg):
    """mmdet's 3x config trains with multi-scale crops (RandomChoice); 1x does not."""
    return any(t['type'] == 'RandomChoice' for t in cfg.train_dataloader.dataset.pipeline)


def test_fp_base_is_the_3x_model_and_the_1x_one_is_marked():
    fp = _cfg(osp.join(MIXAQ, f'{THREE_X}.py'))
    assert _is_3x(fp) and fp.train_cfg.max_epochs == 36
    assert fp.model.backbone.init_cfg.type == 'Pretrained'  # training it starts from ImageNet
    one_x = _cfg(osp.join(MIXAQ, 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'))
    assert not _is_3x(one_x)
    header = open(osp.join(MIXAQ, 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py')).read()
    assert 'NOT the FP base' in header
    assert 'ms-crop-3x_coco_20210906_131725-bacf6f7b.pth' in \
        open(osp.join(MIXAQ, f'{THREE_X}.py')).read()


def _quantized_rows():
    """(table, row) of every quantized row of the COCO tables."""
    return [(t, r) for t in COCO_TABLES for r in t.rows if r.method != 'FP']


def _row_id(item):
    return f'{item[0].name}:{item[1].name}'


def _row_cfg(table, row):
    cfg = _cfg(osp.join(table.config_root, row.config))
    cfg.merge_from_dict(dict(row.evaluated_options))
    return cfg


def _quantized_configs(table):
    root = table.config_root
    return sorted(
        glob.glob(osp.join(root, 'ptq', '*.py')) + glob.glob(osp.join(root, 'qat', '*.py')))


@pytest.mark.parametrize(
    'path', [p for t in COCO_TABLES for p in _quantized_configs(t)],
    ids=lambda p: osp.relpath(p, osp.join(REPO, 'configs')))
def test_quantized_coco_configs_quantize_a_3x_model_without_downloading(path):
    cfg = _cfg(path)
    assert _is_3x(cfg), 'inherits a 1x model'
    assert cfg.base_model
    assert cfg.model.backbone.init_cfg is None
    assert cfg.model.backbone.type == 'MixAQSwinTransformer'


#: Keys of a QuantizedDetector config that say how it is quantized, not what it is.
QUANT_KEYS = ('type', 'detector', 'quant_scope')
#: The backbone's architecture: what a checkpoint's weights must fit.
ARCHITECTURE = ('embed_dims', 'depths', 'num_heads', 'window_size', 'mlp_ratio', 'patch_size',
                'out_indices', 'qkv_bias', 'patch_norm')


def _detector(model):
    """A detector config without its quantization and initialization."""
    parts = {k: v for k, v in model.items() if k not in QUANT_KEYS + ('backbone', )}
    backbone = {k: model.backbone.get(k) for k in ARCHITECTURE}
    return parts, backbone


@pytest.mark.parametrize('item', _quantized_rows(), ids=_row_id)
def test_each_quantized_row_quantizes_its_fp_model(item):
    """The row's detector is its FP model's (heads, neck, backbone
    architecture), and the row's config accepts that model's release and
    refuses the other FP models of the table."""
    table, row = item
    cfg = _row_cfg(table, row)
    training = table.training(row.model)
    while training.checkpoint is None:  # a QAT model: its FP ancestor
        training = table.training(training.parent)
    fp = _cfg(osp.join(table.config_root, training.config))
    assert cfg.model.detector == fp.model.type
    assert _detector(cfg.model) == _detector(fp.model)
    release = osp.basename(training.checkpoint)
    assert check_base_model({}, release, cfg.base_model)
    for other in table.trainings:
        if other.checkpoint is not None and other.name != training.name:
            with pytest.raises(ValueError, match='but this config quantizes'):
                check_base_model({}, osp.basename(other.checkpoint), cfg.base_model)


def _stated_speedup(name):
    match = re.search(r'_(\d+\.\d+)x$', name)
    return float(match.group(1)) if match else None


@pytest.mark.parametrize(
    'item', [i for i in _quantized_rows() if _stated_speedup(i[1].name)], ids=_row_id)
def test_rows_that_name_a_speedup_have_it(item):
    """At the table's network input (800x1333 padded to 32: 800x1344), the
    backbone BitOPs of the row's base row over the row's own."""
    table, row = item
    base = next(r for r in table.rows if r.name == row.base)
    backbone = MODELS.build(_row_cfg(table, row).model.backbone)
    reference = MODELS.build(_row_cfg(table, base).model.backbone)
    ratio = count_bitops(reference, table.img_shape, scope='backbone').bitops / \
        count_bitops(backbone, table.img_shape, scope='backbone').bitops
    assert ratio == pytest.approx(_stated_speedup(row.name), abs=0.006)


def test_saqa_and_its_baselines_train_equally_long():
    """SAQA fine-tunes the 6-epoch W4A4 model for 6 more; its W4A4 and W4A3
    baselines of the table continue their 6-epoch models for as long, with the
    same schedule and optimizer."""
    first = {n: _cfg(osp.join(QAT, f'qat_uniform_{n}_swin-t_coco.py')) for n in ('w4a4', 'w4a3')}
    rows = {
        'saqa': _cfg(osp.join(QAT, 'qat_saqa_w4a4a2_swin-t_coco.py')),
        'saqa-prune': _cfg(osp.join(QAT, 'qat_saqa-prune_w4a4a2_swin-t_coco.py')),
        'w4a4': _cfg(osp.join(QAT, 'qat_uniform_w4a4-12e_swin-t_coco.py')),
        'w4a3': _cfg(osp.join(QAT, 'qat_uniform_w4a3-12e_swin-t_coco.py'))
    }
    parents = {'saqa': 'w4a4', 'saqa-prune': 'w4a4', 'w4a4': 'w4a4', 'w4a3': 'w4a3'}
    saqa = rows['saqa']
    for name, cfg in rows.items():
        parent = first[parents[name]]
        assert cfg.load_from == (f'work_dirs/qat_uniform_{parents[name]}_swin-t_coco/'
                                 f'epoch_{parent.train_cfg.max_epochs}.pth')
        total = parent.train_cfg.max_epochs + cfg.train_cfg.max_epochs
        assert total == 12, name
        assert cfg.param_scheduler == saqa.param_scheduler
        assert cfg.optim_wrapper == saqa.optim_wrapper
        assert cfg.train_dataloader.batch_size == saqa.train_dataloader.batch_size
    hooks = {h.type: h for h in rows['saqa-prune'].custom_hooks}
    assert hooks['SAQAHook'].prune_max_ratio == 0.4
