# SAQA on COCO: the uniform W4A4 QAT model fine-tuned to W4 with A4 (important)
# and A2 (other) windows while every iteration draws random per-pair low-bit
# ratios (SAQAHook, MixA-Q's uniform-sum sampling). The low branch starts from
# the high branch's LayerNorms and is calibrated at ratio 0.5; the high branch
# keeps its learned step sizes. 6 epochs after the 6 of W4A4 QAT: its baselines
# of the same total length are qat_uniform_w4a{4,3}-12e_swin-t_coco.py.
#   bash tools/dist_train.sh configs/mixaq/qat/qat_saqa_w4a4a2_swin-t_coco.py 8
# Evaluate at any ratios, e.g. 1.35x over W4A4 (tools/analysis_tools/bitops.py
# prints the speedup of a setting at 800x1333):
#   bash tools/dist_test.sh configs/mixaq/qat/qat_saqa_w4a4a2_swin-t_coco.py \
#       work_dirs/qat_saqa_w4a4a2_swin-t_coco/epoch_6.pth 8 \
#       --cfg-options model.backbone.low_bit_ratios=0.54
_base_ = './qat_uniform_w4a4_swin-t_coco.py'

load_from = 'work_dirs/qat_uniform_w4a4_swin-t_coco/epoch_6.pth'

model = dict(backbone=dict(a_bits=(4, 2), low_bit_ratios=0.0, prune_ratios=0.0))
custom_hooks = [
    dict(
        type='QATInitHook',
        calib_dataloader={{_base_.test_cfg.calib_dataloader}},
        calib_images=32,
        calib_low_bit_ratios=0.5,
        save_init=True),  # qat_init.pth: the W4A4 model + calibrated A2 branch
    dict(type='SAQAHook', seed=0, max_ratio=0.8),
    dict(type='ConfidenceGuidedAnnealingHook', start=5 / 6, boundary_range=0.005),
    dict(type='OscillationHook', window=500, interval=50),
    dict(type='RandomStateHook'),
    dict(type='BitOpsHook'),
    dict(type='BackboneLatencyHook'),
]
