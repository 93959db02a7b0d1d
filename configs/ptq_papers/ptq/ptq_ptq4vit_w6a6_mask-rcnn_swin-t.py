# W6A6 PTQ of the PTQ papers' Swin-T Mask R-CNN (FP 46.0 / 41.6 AP) on the PTQ4ViT base.
_base_ = './ptq_ptq4vit_w4a4_mask-rcnn_swin-t.py'

model = dict(backbone=dict(w_bits=6, a_bits=(6, 6)))
