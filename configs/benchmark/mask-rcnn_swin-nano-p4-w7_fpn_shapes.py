# FP model of the embedded benchmark: a Swin Mask R-CNN small enough to train on
# two CPU cores in about 12 minutes (embed 32, depths 2-2-2-2, FPN 32 channels),
# trained from scratch. Every quantized benchmark config inherits this one.
_base_ = '../_base_/datasets/shapes_coco_instance.py'

custom_imports = dict(imports=['mixaq_mmdet'], allow_failed_imports=False)
# checkpoints and the pytorch launcher as the stack needs them (mixaq_mmdet.compat)
runner_type = 'MixAQRunner'

num_classes = 4
model = dict(
    backbone=dict(
        embed_dims=32,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 4, 8],
        drop_path_rate=0.1,
        convert_weights=False,
        init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=128, num_classes=num_classes),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(in_channels=32, conv_out_channels=32, num_classes=num_classes)),
    train_cfg=dict(rcnn=dict(sampler=dict(num=64))))

max_epochs = 7
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        begin=0,
        end=max_epochs,
        eta_min=1e-5,
        convert_to_iter_based=True)
]
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.05))

default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=1, max_keep_ckpts=1))
# CPU-friendly distributed settings: gloo, and DDP without a CUDA device id
# (device_ids=None also works with one GPU per process).
env_cfg = dict(dist_cfg=dict(backend='gloo'))
model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False)
randomness = dict(seed=0)
auto_scale_lr = dict(enable=False, base_batch_size=4)

# The backbone's measured time per image, reported with the test metrics.
custom_hooks = [dict(type='BackboneLatencyHook')]
