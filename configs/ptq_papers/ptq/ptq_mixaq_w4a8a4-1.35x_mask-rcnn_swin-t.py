# MixA-Q PTQ of the PTQ papers' Swin-T Mask R-CNN (FP 46.0 / 41.6 AP) on the
# UQ-ViT base (the best published W4A4 base of the table): W4, A8 for the important windows and
# A4 for the rest, one low-bit ratio on every pair of blocks set for 1.35x
# backbone BitOPs over uniform W4A8 at 800x1344 (tools/analysis_tools/bitops.py).
_base_ = './ptq_uqvit_w4a4_mask-rcnn_swin-t.py'

model = dict(backbone=dict(a_bits=(8, 4), low_bit_ratios=0.53))
