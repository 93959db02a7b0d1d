# SAQA on the OFQ base: the OFQ W4A4 model adapted to W4 with A4/A2 windows as
# qat_saqa_w4a4a2_shapes.py adapts the LSQ one, StatsQ weights and CGA kept.
#   python tools/train.py THIS_CONFIG \
#       --cfg-options load_from=work_dirs/qat_ofq_w4a4_shapes/epoch_1.pth
_base_ = './qat_saqa_w4a4a2_shapes.py'

load_from = 'work_dirs/qat_ofq_w4a4_shapes/epoch_1.pth'
model = dict(backbone=dict(weight_quantizer=dict(_delete_=True, type='StatsQQuantizer')))
custom_hooks = [
    dict(
        type='QATInitHook',
        calib_dataloader={{_base_.test_cfg.calib_dataloader}},
        calib_images=64,
        calib_low_bit_ratios=0.5,
        save_init=True),
    dict(type='SAQAHook', max_ratio=0.8),
    dict(type='ConfidenceGuidedAnnealingHook', start=2 / 3, boundary_range=0.005),
    dict(type='OscillationHook', window=20, interval=10),
    dict(type='RandomStateHook'),
    dict(type='BitOpsHook'),
    dict(type='BackboneLatencyHook'),
]
