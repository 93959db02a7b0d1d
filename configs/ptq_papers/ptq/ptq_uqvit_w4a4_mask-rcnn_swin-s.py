# W4A4 PTQ of the PTQ papers' Swin-S Mask R-CNN (FP 48.5 / 43.3 AP) on the UQ-ViT base:
# DeMax after the softmax and NormQuant on the GELU output (fc2's input) of
# every Two-Branch block, everything else as the RepQ-ViT row.
# Published: UQ-ViT 43.3 / 40.3.
_base_ = './ptq_repqvit_w4a4_mask-rcnn_swin-s.py'

model = dict(
    backbone=dict(
        branch_quantizers=dict(
            softmax=dict(type='DeMaxQuantizer'), fc2_in=dict(type='NormQuantizer'))))
