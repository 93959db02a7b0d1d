# W4A4 PTQ of the PTQ papers' Swin-S Cascade Mask R-CNN (FP 51.9 / 45.0 AP) on the UQ-ViT base:
# DeMax after the softmax and NormQuant on the GELU output (fc2's input) of
# every Two-Branch block, everything else as the RepQ-ViT row.
# Published: UQ-ViT 49.6 / 43.4.
_base_ = './ptq_repqvit_w4a4_cascade-mask-rcnn_swin-s.py'

model = dict(
    backbone=dict(
        branch_quantizers=dict(
            softmax=dict(type='DeMaxQuantizer'), fc2_in=dict(type='NormQuantizer'))))
