# W6A6 PTQ of the PTQ papers' Swin-T Mask R-CNN (FP 46.0 / 41.6 AP) on the UQ-ViT base.
# Published: UQ-ViT 45.6 / 41.4.
_base_ = './ptq_uqvit_w4a4_mask-rcnn_swin-t.py'

model = dict(backbone=dict(w_bits=6, a_bits=(6, 6)))
