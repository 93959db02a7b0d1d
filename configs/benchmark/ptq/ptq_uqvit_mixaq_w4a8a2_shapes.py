# MixA-Q PTQ W4 A8/A2 at 1.35x over W4A8 (ptq_mixaq_w4a8a2_shapes.py) on a
# UQ-ViT base: DeMax after the softmax and NormQuant before fc2 in both
# branches of every Two-Branch block, at each branch's bits; one NormQuant map
# per block for both branches.
_base_ = './ptq_mixaq_w4a8a2_shapes.py'

model = dict(
    backbone=dict(
        branch_quantizers=dict(
            softmax=dict(type='DeMaxQuantizer'), fc2_in=dict(type='NormQuantizer'))))
