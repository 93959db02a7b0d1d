# QAT of the FP benchmark model, uniform W4A4: the QAT base of the results table
# (speedups of QAT rows are relative to it). LSQ weights and activations,
# initialized on training images from the FP checkpoint, then fine-tuned:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=work_dirs/demo/fp/epoch_7.pth
#   python tools/test.py THIS_CONFIG work_dirs/<this config>/epoch_1.pth
# Other QAT settings inherit this file and change a few lines.
_base_ = '../ptq/ptq_uniform_w4a4_shapes.py'

load_from = 'work_dirs/demo/fp/epoch_7.pth'
model = dict(
    backbone=dict(
        drop_path_rate=0.0,  # short fine-tune of a trained model
        weight_quantizer=dict(
            type='LSQQuantizer', per_channel=True, calib='percentile_mse', static=True),
        act_quantizer=dict(type='LSQQuantizer', calib='percentile_mse')))

max_epochs = 1
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        begin=0,
        end=max_epochs,
        eta_min=1e-6,
        convert_to_iter_based=True)
]
# Step sizes and zero points get no weight decay (QATOptimWrapperConstructor).
optim_wrapper = dict(
    optimizer=dict(lr=1e-4),
    constructor='QATOptimWrapperConstructor',
    paramwise_cfg=dict(quantizer_decay_mult=0.0))

# The PTQ test loop evaluates a QAT checkpoint as it is, after checking its
# recorded setting; QAT folds no scale reparameterization.
test_cfg = dict(reparam=False)
custom_hooks = [
    dict(
        type='QATInitHook', calib_dataloader={{_base_.test_cfg.calib_dataloader}}, calib_images=64),
    dict(type='RandomStateHook'),  # --resume continues the random draws too
    dict(type='BitOpsHook'),
    dict(type='BackboneLatencyHook'),
]
