# SAQA with pruning on COCO: as qat_saqa_w4a4a2_swin-t_coco.py, and every
# iteration also skips a random fraction (up to 0.4) of each pair's least
# important windows, so that the model serves the paper's pruned rows (1.53x
# and 1.82x over W4A4):
#   bash tools/dist_train.sh configs/mixaq/qat/qat_saqa-prune_w4a4a2_swin-t_coco.py 8
_base_ = './qat_saqa_w4a4a2_swin-t_coco.py'

custom_hooks = [
    dict(
        type='QATInitHook',
        calib_dataloader={{_base_.test_cfg.calib_dataloader}},
        calib_images=32,
        calib_low_bit_ratios=0.5),
    dict(type='SAQAHook', seed=0, max_ratio=0.8, prune_max_ratio=0.4),
    dict(type='ConfidenceGuidedAnnealingHook', start=5 / 6, boundary_range=0.005),
    dict(type='OscillationHook', window=500, interval=50),
    dict(type='RandomStateHook'),
    dict(type='BitOpsHook'),
    dict(type='BackboneLatencyHook'),
]
