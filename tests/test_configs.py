"""The configs build real mmdet models through the registry."""
import pytest
import torch
from mmdet.registry import DATASETS, MODELS
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

from .conftest import COCO_CONFIG, FP_BENCH_CONFIG, data_root_options


def _cfg(path, options=()):
    cfg = Config.fromfile(path)
    if options:
        import argparse

        from mmengine.config import DictAction
        parser = argparse.ArgumentParser()
        parser.add_argument('--o', nargs='+', action=DictAction)
        cfg.merge_from_dict(parser.parse_args(['--o', *options]).o)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    return cfg


def _sample(h, w, n_classes):
    sample = DetDataSample(
        metainfo=dict(
            img_shape=(h, w),
            ori_shape=(h, w),
            pad_shape=(h, w),
            scale_factor=(1., 1.),
            batch_input_shape=(h, w)))
    from mmdet.structures.mask import BitmapMasks
    gt = InstanceData()
    gt.bboxes = torch.tensor([[10., 20., 90., 110.], [150., 40., 230., 200.]])
    gt.labels = torch.tensor([0, n_classes - 1])
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 20:110, 10:90] = 1
    masks[1, 40:200, 150:230] = 1
    gt.masks = BitmapMasks(masks.numpy(), h, w)
    sample.gt_instances = gt
    return sample


def test_benchmark_config_builds_and_trains_one_step():
    cfg = _cfg(FP_BENCH_CONFIG)
    assert cfg.custom_imports['imports'] == ['mixaq_mmdet']
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == 'MaskRCNN'
    assert type(model.backbone).__name__ == 'SwinTransformer'
    assert model.backbone.stages[0].blocks[0].attn.w_msa.embed_dims == 32
    assert model.roi_head.bbox_head.num_classes == 4
    assert cfg.train_dataloader.dataset.metainfo['classes'] == ('disc', 'square', 'triangle',
                                                                'star')
    assert cfg.val_evaluator.metric == ['bbox', 'segm']
    torch.manual_seed(0)
    model.train()
    data = dict(
        inputs=[torch.randint(0, 255, (3, 256, 256), dtype=torch.uint8)],
        data_samples=[_sample(256, 256, 4)])
    losses = model.train_step(data, _optim(model))
    assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(losses)
    assert all(torch.isfinite(v).all() for v in losses.values())


def _optim(model):
    from mmengine.optim import OptimWrapper
    return OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-3))


def test_full_size_coco_config_builds_and_predicts():
    cfg = _cfg(COCO_CONFIG)
    assert cfg.model.backbone.init_cfg.type == 'Pretrained'
    assert cfg.model.backbone.convert_weights is True
    assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
    model = MODELS.build(cfg.model)  # weights are not loaded: init_weights() is not called
    model.eval()
    assert model.backbone.stages[2].blocks[0].attn.w_msa.embed_dims == 384
    assert len(model.backbone.stages[2].blocks) == 6
    assert model.roi_head.bbox_head.num_classes == 80
    torch.manual_seed(0)
    data = dict(
        inputs=[torch.randint(0, 255, (3, 200, 300), dtype=torch.uint8)],
        data_samples=[
            DetDataSample(
                metainfo=dict(img_shape=(200, 300), ori_shape=(200, 300), scale_factor=(1., 1.)))
        ])
    with torch.no_grad():
        feats = model.extract_feat(model.data_preprocessor(data)['inputs'])
        (result, ) = model.test_step(data)
    # pad_size_divisor 32: 224 x 320 input, FPN strides 4..64
    assert [tuple(f.shape[-2:]) for f in feats] == [(56, 80), (28, 40), (14, 20), (7, 10), (4, 5)]
    assert result.pred_instances.bboxes.shape[1] == 4
    assert len(result.pred_instances.masks) == len(result.pred_instances.bboxes)


def test_unknown_type_names_itself():
    cfg = _cfg(FP_BENCH_CONFIG, ['model.backbone.type=SwinTransformerTypo'])
    with pytest.raises(KeyError, match='SwinTransformerTypo'):
        MODELS.build(cfg.model)


def test_missing_data_root_names_the_file(tmp_path):
    cfg = _cfg(FP_BENCH_CONFIG, data_root_options(str(tmp_path / 'no_such_root')))
    with pytest.raises(FileNotFoundError, match='no_such_root/annotations/instances_train.json'):
        DATASETS.build(cfg.train_dataloader.dataset)


def test_benchmark_dataset_loads_masks(tiny_shapes):
    cfg = _cfg(FP_BENCH_CONFIG, data_root_options(tiny_shapes))
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    item = dataset[0]
    sample = item['data_samples']
    assert item['inputs'].shape[0] == 3
    assert max(item['inputs'].shape[1:]) == 320
    gt = sample.gt_instances
    assert len(gt) > 0 and gt.masks.masks.shape[0] == len(gt)
    # every mask lies inside its box
    for box, mask in zip(gt.bboxes.tensor, gt.masks.masks):
        ys, xs = mask.nonzero()
        assert xs.min() >= int(box[0]) - 1 and xs.max() <= int(box[2]) + 1
        assert ys.min() >= int(box[1]) - 1 and ys.max() <= int(box[3]) + 1


@pytest.mark.parametrize('name, speedup', [
    ('ptq_uniform_w8a8_swin-t_coco.py', 0.52),
    ('ptq_uniform_w4a8_swin-t_coco.py', 1.00),
    ('ptq_uniform_w4a4_swin-t_coco.py', 2.06),
    ('ptq_mixaq_w4a8a4-1.24x_swin-t_coco.py', 1.24),
    ('ptq_mixaq_w4a8a4-1.35x_swin-t_coco.py', 1.35),
    ('ptq_mixaq_w4a8a4-prune-1.52x_swin-t_coco.py', 1.52),
])
def test_coco_ptq_configs_have_their_stated_speedup(name, speedup):
    import os.path as osp

    from mixaq_mmdet.analysis import count_bitops
    from .conftest import REPO
    ptq = osp.join(REPO, 'configs/mixaq/ptq')
    base = MODELS.build(_cfg(osp.join(ptq, 'ptq_uniform_w4a8_swin-t_coco.py')).model.backbone)
    cfg = _cfg(osp.join(ptq, name))
    assert cfg.test_cfg.type == 'PTQLoop' and cfg.test_cfg.calib_images == 32
    assert cfg.test_cfg.calib_dataloader.dataset.ann_file.endswith('instances_train2017.json')
    # the ratio search tunes on train2017, never on val2017
    assert cfg.search_dataloader.dataset.ann_file.endswith('instances_train2017.json')
    assert cfg.search_dataloader.dataset.data_prefix.img == 'train2017/'
    backbone = MODELS.build(cfg.model.backbone)
    ratio = count_bitops(base, (800, 1333)).bitops / count_bitops(backbone, (800, 1333)).bitops
    assert ratio == pytest.approx(speedup, abs=0.006)


@pytest.mark.parametrize('name, a_bits', [
    ('qat_uniform_w4a4_swin-t_coco.py', (4, 4)),
    ('qat_uniform_w4a3_swin-t_coco.py', (3, 3)),
    ('qat_saqa_w4a4a2_swin-t_coco.py', (4, 2)),
])
def test_coco_qat_configs(name, a_bits):
    """LSQ quantizers, mmdet's Swin parameter groups plus no decay for quantizer
    parameters, the QAT hooks calibrating on train2017; SAQA at 1.35x over W4A4
    with the ratio its header gives."""
    import os.path as osp

    from mixaq_mmdet.analysis import count_bitops
    from mixaq_mmdet.quantization import LSQQuantizer, quantizers_of
    from .conftest import REPO
    qat = osp.join(REPO, 'configs/mixaq/qat')
    cfg = _cfg(osp.join(qat, name))
    backbone = MODELS.build(cfg.model.backbone)
    assert backbone.a_bits == a_bits
    assert all(isinstance(q, LSQQuantizer) for q in quantizers_of(backbone) if q.kind == 'uniform')
    paramwise = cfg.optim_wrapper.paramwise_cfg
    assert paramwise.quantizer_decay_mult == 0.0 and paramwise.custom_keys.norm.decay_mult == 0
    assert cfg.optim_wrapper.constructor == 'QATOptimWrapperConstructor'
    hooks = {h.type: h for h in cfg.custom_hooks}
    assert hooks['QATInitHook'].calib_dataloader.dataset.ann_file.endswith(
        'instances_train2017.json')
    assert ('SAQAHook' in hooks) == (a_bits == (4, 2)) and 'RandomStateHook' in hooks
    assert cfg.test_cfg.type == 'PTQLoop' and cfg.test_cfg.reparam is False
    assert cfg.search_dataloader.dataset.ann_file.endswith('instances_train2017.json')
    if a_bits == (4, 2):
        base = MODELS.build(_cfg(osp.join(qat, 'qat_uniform_w4a4_swin-t_coco.py')).model.backbone)
        backbone.set_ratios(0.54, 0.0)
        ratio = count_bitops(base, (800, 1333)).bitops / \
            count_bitops(backbone, (800, 1333)).bitops
        assert ratio == pytest.approx(1.35, abs=0.006)
