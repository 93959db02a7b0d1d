"""What a run loads: the base-model check of FP checkpoints (the 1x Swin-T
Mask R-CNN under the 3x configs) and the refusal to download initial weights
that a loaded detector replaces."""
import pytest
import torch

from mixaq_mmdet.engine import MixAQRunner
from mixaq_mmdet.engine.checkpoints import (check_base_model, checkpoint_model_name,
                                            normalize_model_name, remote_init_checkpoints)
from .test_qat import _config

THREE_X = [
    'mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco', 'mask-rcnn_swin-t-p4-w7_fpn_fp16_ms-crop-3x_coco'
]
RELEASE_3X = 'mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_20210906_131725-bacf6f7b.pth'
RELEASE_1X = 'mask_rcnn_swin-t-p4-w7_fpn_1x_coco_20210902_120937-9d6b7cfa.pth'


def test_names_compare_across_mmdet_spellings():
    assert normalize_model_name('mask_rcnn_swin-t-p4-w7_fpn_1x_coco.py') == \
        normalize_model_name('mask-rcnn_swin-t-p4-w7_fpn_1x_coco')


@pytest.mark.parametrize(
    'checkpoint, path, name',
    [
        # mmdet 2.x's tools/train.py: the config file
        (dict(meta=dict(exp_name='mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py')), 'a.pth',
         'mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'),
        # mmengine's runner: config name and timestamp
        (dict(meta=dict(experiment_name='mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_20261203_1')),
         'epoch_36.pth', 'mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_20261203_1'),
        # a release file without a meta
        (dict(state_dict={}), f'/ckpts/{RELEASE_3X}', 'mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco'),
        (dict(state_dict={}), 'epoch_12.pth', None),
    ])
def test_the_checkpoint_says_which_model_it_is(checkpoint, path, name):
    found = checkpoint_model_name(checkpoint, path)
    assert (found and found[0]) == name
    if name is not None:
        assert check_base_model(checkpoint, path, THREE_X) == name


@pytest.mark.parametrize('checkpoint, path', [
    (dict(meta=dict(exp_name='mask_rcnn_swin-t-p4-w7_fpn_1x_coco.py')), 'fp.pth'),
    (dict(state_dict={}), RELEASE_1X),
    (dict(meta=dict(experiment_name='mask-rcnn_swin-t-p4-w7_fpn_1x_coco_20261203_101010')),
     'epoch_12.pth'),
])
def test_the_1x_model_under_a_3x_config_is_refused(checkpoint, path):
    with pytest.raises(
            ValueError,
            match=r"is 'mask[-_]rcnn_swin-t-p4-w7_fpn_1x_coco.*but "
            r"this config quantizes 'mask-rcnn_swin-t-p4-w7_fpn_"
            r"ms-crop-3x_coco'.*base_model"):
        check_base_model(checkpoint, path, THREE_X)


#: The base_model of the PTQ papers' Swin-T Mask R-CNN configs
#: (configs/ptq_papers/ptq/): the training config and the release file.
SWIN_OD_MASK_T = [
    'mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco',
    'mask_rcnn_swin_tiny_patch4_window7'
]
SWIN_OD_URL = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.2/'


@pytest.mark.parametrize(
    'checkpoint, path, name, source',
    [
        # the release files of Swin-Transformer-Object-Detection: no OpenMMLab suffix
        (dict(state_dict={}), '/ckpts/mask_rcnn_swin_tiny_patch4_window7.pth',
         'mask_rcnn_swin_tiny_patch4_window7', 'its file name'),
        (dict(state_dict={}), SWIN_OD_URL + 'cascade_mask_rcnn_swin_small_patch4_window7.pth',
         'cascade_mask_rcnn_swin_small_patch4_window7', 'its file name'),
        # their conversion, cached under another name, says where it came from
        (dict(
            meta=dict(
                converted_from=dict(source=SWIN_OD_URL +
                                    'mask_rcnn_swin_tiny_patch4_window7.pth'))),
         '/cache/mask_rcnn_swin_tiny_patch4_window7_mmdet3-0123abcd.pth',
         'mask_rcnn_swin_tiny_patch4_window7', 'the name of the file it was converted from'),
        # the training config in the meta comes first
        (dict(
            meta=dict(exp_name='mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_adamw_3x_'
                      'coco.py')), '/ckpts/mask_rcnn_swin_tiny_patch4_window7.pth',
         'mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco.py', "meta['exp_name']"),
        (dict(state_dict={}), '/ckpts/swin_tiny_patch4_window7_224.pth', None, None),
    ])
def test_swin_od_releases_say_which_model_they_are(checkpoint, path, name, source):
    found = checkpoint_model_name(checkpoint, path)
    assert found == (None if name is None else (name, source))
    if name is not None and 'cascade' not in name:
        assert check_base_model(checkpoint, path, SWIN_OD_MASK_T) == name


@pytest.mark.parametrize('checkpoint, path', [
    (dict(
        meta=dict(exp_name='mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_adamw_1x_coco.py')),
     'mask_rcnn_swin_tiny_patch4_window7_1x.pth'),
    (dict(
        meta=dict(exp_name='cascade_mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_giou_'
                  '4conv1f_adamw_3x_coco.py')), 'mask_rcnn_swin_tiny_patch4_window7.pth'),
    (dict(state_dict={}), 'mask_rcnn_swin_small_patch4_window7.pth'),
])
def test_another_swin_od_release_is_refused(checkpoint, path):
    """A base model that is the release's short name matches itself and its
    name with mmengine's timestamp, not longer names it starts (the 1x run)."""
    with pytest.raises(
            ValueError,
            match=r"is '(mask|cascade).*but this config quantizes "
            r"'mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco' or "
            r"'mask_rcnn_swin_tiny_patch4_window7' \(base_model\)"):
        check_base_model(checkpoint, path, SWIN_OD_MASK_T)
    stamped = dict(meta=dict(experiment_name='mask_rcnn_swin_tiny_patch4_window7_20261203_101010'))
    assert check_base_model(stamped, 'epoch_1.pth', SWIN_OD_MASK_T) is not None


def test_an_unnamed_checkpoint_is_not_checked_but_warned():
    assert check_base_model(dict(state_dict={}), 'epoch_12.pth', THREE_X) is None
    assert check_base_model(dict(meta=dict(exp_name='x_1x_coco.py')), 'f.pth', None) is None
    with pytest.raises(ValueError, match='base_model must be a model name'):
        check_base_model(dict(state_dict={}), 'f.pth', [''])


def test_qat_with_load_from_refuses_to_download_initial_weights(tiny_shapes, fp_checkpoint,
                                                                tmp_path):
    url = 'https://download.invalid/swin_tiny_patch4_window7_224.pth'
    cfg = _config(tiny_shapes, tmp_path, fp_checkpoint)
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=url)
    runner = MixAQRunner.from_cfg(cfg)
    assert remote_init_checkpoints(runner.model) == [('backbone', url)]
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    with pytest.raises(
            ValueError,
            match=r'backbone.init_cfg would download https://download'
            r'.invalid/.*load_from=.*model.backbone.init_cfg=None'):
        runner.train()
    after = runner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing ran


def test_qat_of_a_1x_checkpoint_under_a_3x_base_model_is_refused(tiny_shapes, fp_checkpoint,
                                                                 tmp_path):
    state = torch.load(fp_checkpoint, weights_only=False)
    state['meta'] = dict(exp_name='mask_rcnn_swin-t-p4-w7_fpn_1x_coco.py')
    path = str(tmp_path / 'fp_1x.pth')
    torch.save(state, path)
    cfg = _config(tiny_shapes, tmp_path / 'run', path)
    cfg.base_model = THREE_X
    with pytest.raises(ValueError, match=r'fp_1x.pth is .*1x_coco.*base_model'):
        MixAQRunner.from_cfg(cfg).train()


def test_ptq_of_a_1x_checkpoint_under_a_3x_base_model_is_refused(tiny_shapes, fp_checkpoint,
                                                                 tmp_path):
    from ..search.test_detector_search import _config as ptq_config
    state = torch.load(fp_checkpoint, weights_only=False)
    path = str(tmp_path / RELEASE_1X)
    torch.save(state, path)  # named as the 1x release, no meta
    cfg = ptq_config(tiny_shapes, tmp_path / 'run', path)
    cfg.base_model = THREE_X
    with pytest.raises(
            ValueError, match=r"is 'mask_rcnn_swin-t-p4-w7_fpn_1x_coco' \(its file "
            r"name\)"):
        MixAQRunner.from_cfg(cfg).test()
    cfg = ptq_config(tiny_shapes, tmp_path / 'run3x', str(tmp_path / RELEASE_1X))
    cfg.base_model = 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco'  # what the 1x config's header says
    assert 'coco/bbox_mAP' in MixAQRunner.from_cfg(cfg).test()
