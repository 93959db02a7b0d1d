# W6A6 PTQ of the PTQ papers' Swin-T Cascade Mask R-CNN (FP 50.4 / 43.7 AP) on the UQ-ViT base.
# Published: UQ-ViT 50.1 / 43.7.
_base_ = './ptq_uqvit_w4a4_cascade-mask-rcnn_swin-t.py'

model = dict(backbone=dict(w_bits=6, a_bits=(6, 6)))
