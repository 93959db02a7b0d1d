# W4A4 PTQ of the PTQ papers' Swin-T Mask R-CNN (FP 46.0 / 41.6 AP) on the UQ-ViT base:
# DeMax after the softmax and NormQuant on the GELU output (fc2's input) of
# every Two-Branch block, everything else as the RepQ-ViT row.
# Published: UQ-ViT 39.0 / 37.3.
_base_ = './ptq_repqvit_w4a4_mask-rcnn_swin-t.py'

model = dict(
    backbone=dict(
        branch_quantizers=dict(
            softmax=dict(type='DeMaxQuantizer'), fc2_in=dict(type='NormQuantizer'))))
