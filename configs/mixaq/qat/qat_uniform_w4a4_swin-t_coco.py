# QAT of mmdet's 3x Swin-T Mask R-CNN on COCO, uniform W4A4, 6 epochs, on the
# paper's QAT base OFQ (Liu et al., ICML 2023): StatsQ weights (each output
# channel's scale 2 * mean|w|, not learned), LSQ activations, and
# confidence-guided annealing over the last sixth of the iterations (only the
# weights within 0.005 of a rounding boundary train); the weights' oscillation
# is logged. OFQ's query-key reparameterization is not implemented (docs/qat.md).
# Starts from the trained FP detector (no ImageNet download: the PTQ base sets
# backbone.init_cfg=None, and QATInitHook refuses a run that would download);
# the QATInitHook calibrates every quantizer on 32 train2017 images before the
# first iteration. 8 GPUs, 2 images each:
#   bash tools/dist_train.sh configs/mixaq/qat/qat_uniform_w4a4_swin-t_coco.py 8 \
#       --cfg-options \
#       load_from=mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_20210906_131725-bacf6f7b.pth
# SAQA continues this model for 6 more epochs; its same-length baseline is
# qat_uniform_w4a4-12e_swin-t_coco.py.
#   bash tools/dist_test.sh configs/mixaq/qat/qat_uniform_w4a4_swin-t_coco.py \
#       work_dirs/qat_uniform_w4a4_swin-t_coco/epoch_6.pth 8
# Other QAT settings inherit this file and change a few lines.
_base_ = '../ptq/ptq_uniform_w4a4_swin-t_coco.py'

model = dict(
    backbone=dict(
        weight_quantizer=dict(type='StatsQQuantizer'),
        act_quantizer=dict(type='LSQQuantizer', calib='percentile_mse')))

max_epochs = 6
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=500),
    dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        begin=0,
        end=max_epochs,
        eta_min=1e-7,
        convert_to_iter_based=True)
]
# mmdet's Swin parameter groups (no decay for norms and position tables), and
# none for step sizes and zero points (QATOptimWrapperConstructor).
optim_wrapper = dict(
    optimizer=dict(lr=1e-5),
    constructor='QATOptimWrapperConstructor',
    paramwise_cfg=dict(quantizer_decay_mult=0.0))

# tools/test.py evaluates a QAT checkpoint as it is, after checking its
# recorded setting; QAT folds no scale reparameterization.
test_cfg = dict(reparam=False)
custom_hooks = [
    dict(
        type='QATInitHook', calib_dataloader={{_base_.test_cfg.calib_dataloader}}, calib_images=32),
    dict(type='ConfidenceGuidedAnnealingHook', start=5 / 6, boundary_range=0.005),
    dict(type='OscillationHook', window=500, interval=50),
    dict(type='RandomStateHook'),  # --resume continues the random draws too
    dict(type='BitOpsHook'),
    dict(type='BackboneLatencyHook'),
]
