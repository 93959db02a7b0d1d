# SAQA with pruning: as qat_saqa_w4a4a2_shapes.py, and every iteration also
# skips a random fraction of each pair's least important windows (prune ratios
# up to 0.4), so that the model serves pruned configurations (e.g. 1.53x over
# W4A4 with prune 0.2 and low-bit 0.5).
_base_ = './qat_saqa_w4a4a2_shapes.py'

custom_hooks = [
    dict(
        type='QATInitHook',
        calib_dataloader={{_base_.test_cfg.calib_dataloader}},
        calib_images=64,
        calib_low_bit_ratios=0.5),
    dict(type='SAQAHook', max_ratio=0.8, prune_max_ratio=0.4),
    dict(type='RandomStateHook'),  # --resume continues the random draws too
    dict(type='BitOpsHook'),
    dict(type='BackboneLatencyHook'),
]
