# PTQ of the PTQ papers' Swin-T Mask R-CNN (microsoft's 3x checkpoint, 46.0 /
# 41.6 AP; see ../mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py) at W4A4 on
# the RepQ-ViT base, in those papers' protocol: the whole detector quantized
# (backbone, FPN and heads; not the ConvTranspose2d of the mask head), RepQ-ViT's
# scale reparameterization, log-sqrt(2) after the softmax, 800x1333. Calibrates
# on 32 train2017 images (RepQ-ViT's detection code used 1):
#   python tools/test.py configs/ptq_papers/ptq/ptq_repqvit_w4a4_mask-rcnn_swin-t.py \
#       mask_rcnn_swin_tiny_patch4_window7.pth
# Published: RepQ-ViT 36.1 / 36.0 (W4A4), 45.1 / 41.2 (W6A6). Every other row
# of this detector inherits this file and changes a few lines.
_base_ = '../mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py'

# The FP detector these rows quantize: a checkpoint that says it is another
# model is refused (mixaq_mmdet.engine.checkpoints.check_base_model).
base_model = [
    'mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco',
    'mask_rcnn_swin_tiny_patch4_window7'
]

model = dict(
    type='QuantizedDetector',
    detector='MaskRCNN',
    quant_scope='detector',
    backbone=dict(
        type='MixAQSwinTransformer',
        w_bits=4,
        a_bits=(4, 4),
        low_bit_ratios=0.0,
        prune_ratios=0.0,
        window_score='l2',
        window_order='importance',
        quant=True,
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
custom_hooks = [dict(type='BitOpsHook'), dict(type='BackboneLatencyHook')]
# Images tools/search_ratios.py measures candidate ratios on (never val2017).
search_dataloader = dict(
    batch_size=1,
    dataset=dict(
        type={{_base_.dataset_type}},
        data_root={{_base_.data_root}},
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        test_mode=True,
        pipeline={{_base_.test_pipeline}}))
