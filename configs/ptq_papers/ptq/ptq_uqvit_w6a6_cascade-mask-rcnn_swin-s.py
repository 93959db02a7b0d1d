# W6A6 PTQ of the PTQ papers' Swin-S Cascade Mask R-CNN (FP 51.9 / 45.0 AP) on the UQ-ViT base.
# Published: UQ-ViT 51.5 / 44.7.
_base_ = './ptq_uqvit_w4a4_cascade-mask-rcnn_swin-s.py'

model = dict(backbone=dict(w_bits=6, a_bits=(6, 6)))
