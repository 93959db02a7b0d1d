# Uniform PTQ of Swin-T Mask R-CNN on COCO, W4A4.
_base_ = './ptq_uniform_w4a8_swin-t_coco.py'

model = dict(backbone=dict(w_bits=4, a_bits=(4, 4)))
