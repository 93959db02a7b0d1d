# PTQ of the FP benchmark model, uniform W4A8 (the PTQ base of the results table).
# tools/test.py THIS_CONFIG work_dirs/demo/fp/epoch_7.pth calibrates on training
# images, saves <work_dir>/calibrated.pth and reports COCO mAP and the BitOPs speedup.
# Other bit settings inherit this file and change a few lines.
_base_ = '../mask-rcnn_swin-nano-p4-w7_fpn_shapes.py'

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
        quant=True))

test_cfg = dict(
    _delete_=True,
    type='PTQLoop',
    calib_dataloader=dict(
        batch_size=4,
        num_workers=1,
        persistent_workers=False,
        sampler=dict(type='DefaultSampler', shuffle=True),
        dataset=dict(
            type={{_base_.dataset_type}},
            data_root={{_base_.data_root}},
            metainfo={{_base_.metainfo}},
            ann_file='annotations/instances_train.json',
            data_prefix=dict(img='train/'),
            test_mode=True,
            pipeline={{_base_.test_pipeline}})),
    calib_images=64,
    calib_seed=0)
custom_hooks = [
    dict(type='BitOpsHook'),  # BitOPs speedup of the model's quant scope
    dict(type='BackboneLatencyHook'),  # and the backbone's measured time per image
]
# Images tools/search_ratios.py measures candidate ratios on: the benchmark's
# 'search' split, which shares no image with train (calibration) or val.
search_dataloader = dict(
    batch_size=8,
    dataset=dict(
        type={{_base_.dataset_type}},
        data_root={{_base_.data_root}},
        metainfo={{_base_.metainfo}},
        ann_file='annotations/instances_search.json',
        data_prefix=dict(img='search/'),
        test_mode=True,
        pipeline={{_base_.test_pipeline}}))
