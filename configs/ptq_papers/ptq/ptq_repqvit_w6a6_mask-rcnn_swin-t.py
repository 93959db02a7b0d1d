# RepQ-ViT W6A6 PTQ of the PTQ papers' Swin-T Mask R-CNN (FP 46.0 / 41.6 AP).
# Published: RepQ-ViT 45.1 / 41.2.
_base_ = './ptq_repqvit_w4a4_mask-rcnn_swin-t.py'

model = dict(backbone=dict(w_bits=6, a_bits=(6, 6)))
