# MixA-Q PTQ W4 A8/A2 at 1.35x over W4A8 (ptq_mixaq_w4a8a2_shapes.py) on a
# PTQ4ViT base: PTQ4ViT's twin uniform quantizer after the softmax and the
# GELU of both branches of every Two-Branch block, at each branch's bits.
_base_ = './ptq_mixaq_w4a8a2_shapes.py'

model = dict(
    backbone=dict(
        branch_quantizers=dict(
            softmax=dict(type='TwinUniformQuantizer', mode='softmax'),
            fc2_in=dict(type='TwinUniformQuantizer', mode='gelu'))))
