# Uniform PTQ W4A4 on a PTQ4ViT base: PTQ4ViT's twin uniform quantizer after
# the softmax and the GELU of every Two-Branch block (mode 'softmax' and
# 'gelu'), every other quantizer as in ptq_uniform_w4a4_shapes.py (RepQ-ViT's
# base), calibrated the same way.
_base_ = './ptq_uniform_w4a4_shapes.py'

model = dict(
    backbone=dict(
        branch_quantizers=dict(
            softmax=dict(type='TwinUniformQuantizer', mode='softmax'),
            fc2_in=dict(type='TwinUniformQuantizer', mode='gelu'))))
