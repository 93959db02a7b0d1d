# W6A6 PTQ of the PTQ papers' Swin-S Mask R-CNN (FP 48.5 / 43.3 AP) on the UQ-ViT base.
# Published: UQ-ViT 48.0 / 43.0.
_base_ = './ptq_uqvit_w4a4_mask-rcnn_swin-s.py'

model = dict(backbone=dict(w_bits=6, a_bits=(6, 6)))
