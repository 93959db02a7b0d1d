# MixA-Q PTQ of the PTQ papers' Swin-T Cascade Mask R-CNN at 1.24x backbone BitOPs over
# uniform W4A8 (800x1344), on the UQ-ViT base.
_base_ = './ptq_mixaq_w4a8a4-1.35x_cascade-mask-rcnn_swin-t.py'

model = dict(backbone=dict(low_bit_ratios=0.4))
