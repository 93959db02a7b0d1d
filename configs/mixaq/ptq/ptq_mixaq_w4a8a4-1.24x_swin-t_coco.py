# MixA-Q PTQ of Swin-T Mask R-CNN on COCO at 1.24x BitOPs over uniform W4A8
# (800x1333).
_base_ = './ptq_mixaq_w4a8a4-1.35x_swin-t_coco.py'

model = dict(backbone=dict(low_bit_ratios=0.4))
