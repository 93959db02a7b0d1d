"""The COCO configs (configs/mixaq): the paper's FP base model, no download
where a detector checkpoint follows, the paper's rows, and equal training
lengths for SAQA and its baselines."""
import glob
import os.path as osp

import pytest
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mixaq_mmdet.analysis import count_bitops
from .conftest import REPO

MIXAQ = osp.join(REPO, 'configs/mixaq')
QAT = osp.join(MIXAQ, 'qat')
THREE_X = 'mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco'
QUANTIZED = sorted(
    glob.glob(osp.join(MIXAQ, 'ptq', '*.py')) + glob.glob(osp.join(MIXAQ, 'qat', '*.py')))


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


@pytest.mark.parametrize('path', QUANTIZED, ids=osp.basename)
def test_quantized_coco_configs_quantize_the_3x_model_without_downloading(path):
    cfg = _cfg(path)
    assert _is_3x(cfg), 'inherits the 1x model'
    assert THREE_X in cfg.base_model
    assert cfg.model.backbone.init_cfg is None
    assert cfg.model.backbone.type == 'MixAQSwinTransformer'


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


@pytest.mark.parametrize('name, speedup', [
    ('mixaq_w4a4a2-1.24x_swin-t_coco.py', 1.24),
    ('mixaq_w4a4a2-1.35x_swin-t_coco.py', 1.35),
    ('mixaq_w4a4a2-prune-1.53x_swin-t_coco.py', 1.53),
    ('mixaq_w4a4a2-prune-1.82x_swin-t_coco.py', 1.82),
])
def test_coco_qat_rows_have_their_stated_speedup(name, speedup):
    """At 800x1333 padded to 32 (800x1344), over uniform W4A4 QAT."""
    base = MODELS.build(_cfg(osp.join(QAT, 'qat_uniform_w4a4_swin-t_coco.py')).model.backbone)
    backbone = MODELS.build(_cfg(osp.join(QAT, name)).model.backbone)
    assert backbone.a_bits == (4, 2)
    ratio = count_bitops(base, (800, 1344)).bitops / count_bitops(backbone, (800, 1344)).bitops
    assert ratio == pytest.approx(speedup, abs=0.006)
