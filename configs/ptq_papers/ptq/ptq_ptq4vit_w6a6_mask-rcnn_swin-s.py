# W6A6 PTQ of the PTQ papers' Swin-S Mask R-CNN (FP 48.5 / 43.3 AP) on the PTQ4ViT base.
_base_ = './ptq_ptq4vit_w4a4_mask-rcnn_swin-s.py'

model = dict(backbone=dict(w_bits=6, a_bits=(6, 6)))
