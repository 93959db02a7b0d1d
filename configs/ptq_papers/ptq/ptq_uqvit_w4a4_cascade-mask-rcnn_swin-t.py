# W4A4 PTQ of the PTQ papers' Swin-T Cascade Mask R-CNN (FP 50.4 / 43.7 AP) on the UQ-ViT base:
# DeMax after the softmax and NormQuant on the GELU output (fc2's input) of
# every Two-Branch block, everything else as the RepQ-ViT row.
# Published: UQ-ViT 47.3 / 41.6.
_base_ = './ptq_repqvit_w4a4_cascade-mask-rcnn_swin-t.py'

model = dict(
    backbone=dict(
        branch_quantizers=dict(
            softmax=dict(type='DeMaxQuantizer'), fc2_in=dict(type='NormQuantizer'))))
