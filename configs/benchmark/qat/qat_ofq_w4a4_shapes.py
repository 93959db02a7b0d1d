# QAT of the FP benchmark model on OFQ (Liu et al., ICML 2023), the paper's QAT
# base, uniform W4A4, with the schedule of the LSQ rows: StatsQ weights (each
# output channel's scale is 2 * mean|w|, not learned), LSQ activations, and
# confidence-guided annealing (CGA) over the last third of the iterations, where
# only the weights within 0.005 of a rounding boundary train. The weights'
# oscillation is logged (train/weight_flip_rate, train/weight_oscillation_rate).
# OFQ's query-key reparameterization is not implemented (docs/qat.md, OFQ).
#   python tools/train.py THIS_CONFIG --cfg-options load_from=work_dirs/demo/fp/epoch_7.pth
_base_ = './qat_uniform_w4a4_shapes.py'

model = dict(backbone=dict(weight_quantizer=dict(_delete_=True, type='StatsQQuantizer')))
custom_hooks = [
    dict(
        type='QATInitHook', calib_dataloader={{_base_.test_cfg.calib_dataloader}}, calib_images=64),
    dict(type='ConfidenceGuidedAnnealingHook', start=2 / 3, boundary_range=0.005),
    dict(type='OscillationHook', window=20, interval=10),
    dict(type='RandomStateHook'),  # --resume continues the random draws too
    dict(type='BitOpsHook'),
    dict(type='BackboneLatencyHook'),
]
