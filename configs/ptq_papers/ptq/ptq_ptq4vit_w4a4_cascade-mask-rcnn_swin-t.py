# W4A4 PTQ of the PTQ papers' Swin-T Cascade Mask R-CNN (FP 50.4 / 43.7 AP) on the PTQ4ViT base:
# PTQ4ViT's twin uniform quantizer after the softmax and the GELU of every
# Two-Branch block, everything else as the RepQ-ViT row (no published figure).
_base_ = './ptq_repqvit_w4a4_cascade-mask-rcnn_swin-t.py'

model = dict(
    backbone=dict(
        branch_quantizers=dict(
            softmax=dict(type='TwinUniformQuantizer', mode='softmax'),
            fc2_in=dict(type='TwinUniformQuantizer', mode='gelu'))))
