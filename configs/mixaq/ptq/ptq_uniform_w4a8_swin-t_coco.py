# PTQ of mmdet's 3x Swin-T Mask R-CNN on COCO (the paper's FP base, 46.0 box AP),
# uniform W4A8 (RepQ-ViT's setting, the PTQ base of MixA-Q). Calibrates on 32
# train2017 images; the official checkpoint (or its URL, see
# ../mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py) is checked to be that model:
#   python tools/test.py configs/mixaq/ptq/ptq_uniform_w4a8_swin-t_coco.py \
#       mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_20210906_131725-bacf6f7b.pth
# Other bit settings inherit this file and change a few lines.
_base_ = '../mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'

# The FP detector every MixA-Q COCO setting quantizes: an FP checkpoint whose
# meta or release file name says it is another model (e.g. the 1x one) is
# refused (mixaq_mmdet.engine.checkpoints.check_base_model). The AMP-trained 3x
# release is the same model.
base_model = [
    'mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco', 'mask-rcnn_swin-t-p4-w7_fpn_fp16_ms-crop-3x_coco',
    'mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco'
]

model = dict(
    type='QuantizedDetector',
    detector='MaskRCNN',
    quant_scope='backbone',  # 'detector': also the neck and heads (RepQ-ViT's scope)
    backbone=dict(
        type='MixAQSwinTransformer',
        w_bits=4,
        a_bits=(8, 8),
        low_bit_ratios=0.0,
        prune_ratios=0.0,
        window_score='l2',
        window_order='importance',
        quant=True,
        # A whole detector checkpoint follows: no ImageNet download first.
        init_cfg=None))

test_cfg = dict(
    _delete_=True,
    type='PTQLoop',
    calib_dataloader=dict(
        batch_size=1,
        num_workers=2,
        persistent_workers=False,
        sampler=dict(type='DefaultSampler', shuffle=True),
        dataset=dict(
            type={{_base_.dataset_type}},
            data_root={{_base_.data_root}},
            ann_file='annotations/instances_train2017.json',
            data_prefix=dict(img='train2017/'),
            test_mode=True,
            pipeline={{_base_.test_pipeline}})),
    calib_images=32,
    calib_seed=0)
custom_hooks = [
    dict(type='BitOpsHook'),  # BitOPs speedup of the model's quant scope
    dict(type='BackboneLatencyHook'),  # and the backbone's measured time per image
]
# Images tools/search_ratios.py measures candidate ratios on: train2017 (never
# val2017); the search takes a seeded subset (--search-images) and leaves out
# the calibration images.
search_dataloader = dict(
    batch_size=1,
    dataset=dict(
        type={{_base_.dataset_type}},
        data_root={{_base_.data_root}},
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        test_mode=True,
        pipeline={{_base_.test_pipeline}}))
