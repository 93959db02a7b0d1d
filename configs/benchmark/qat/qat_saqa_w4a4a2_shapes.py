# SAQA: sparsity-aware quantization adaptation of the uniform W4A4 QAT model to
# W4 with A4 (important) and A2 (other) windows. Every iteration trains the
# pairs of blocks at random low-bit ratios (SAQAHook), so that any ratio a
# search picks later works without retraining. The low branch starts from the
# high branch's LayerNorms and is calibrated at ratio 0.5 on training images;
# the high branch keeps its learned step sizes. Windows are ranked by the
# 'contrast' score: on this benchmark the paper's 'l2' score ranks object windows
# below background ones at stage 1 (docs/window_analysis.md).
#   python tools/train.py THIS_CONFIG \
#       --cfg-options load_from=work_dirs/qat_uniform_w4a4_shapes/epoch_1.pth
# Evaluate at any ratios (e.g. 1.35x over W4A4):
#   python tools/test.py THIS_CONFIG work_dirs/qat_saqa_w4a4a2_shapes/epoch_1.pth \
#       --cfg-options model.backbone.low_bit_ratios=0.55
_base_ = './qat_uniform_w4a4_shapes.py'

load_from = 'work_dirs/qat_uniform_w4a4_shapes/epoch_1.pth'
model = dict(
    backbone=dict(a_bits=(4, 2), low_bit_ratios=0.0, prune_ratios=0.0, window_score='contrast'))
custom_hooks = [
    dict(
        type='QATInitHook',
        calib_dataloader={{_base_.test_cfg.calib_dataloader}},
        calib_images=64,
        calib_low_bit_ratios=0.5,
        save_init=True),  # qat_init.pth: the W4A4 model + calibrated A2 branch
    dict(type='SAQAHook', max_ratio=0.8),
    dict(type='RandomStateHook'),  # --resume continues the random draws too
    dict(type='BitOpsHook'),
    dict(type='BackboneLatencyHook'),
]
