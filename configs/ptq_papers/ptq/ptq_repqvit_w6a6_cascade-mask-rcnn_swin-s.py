# RepQ-ViT W6A6 PTQ of the PTQ papers' Swin-S Cascade Mask R-CNN (FP 51.9 / 45.0 AP).
# Published: RepQ-ViT 51.4 / 44.6.
_base_ = './ptq_repqvit_w4a4_cascade-mask-rcnn_swin-s.py'

model = dict(backbone=dict(w_bits=6, a_bits=(6, 6)))
