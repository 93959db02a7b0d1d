# Uniform PTQ W4A4 on a UQ-ViT base: UQ-ViT's DeMax after the softmax (each
# attention row's maximum kept exactly, the rest on a per-row uniform grid)
# and NormQuant before fc2 (a per-channel map folded into fc2, one map per
# Two-Branch block, per-tensor grids), every other quantizer as in
# ptq_uniform_w4a4_shapes.py (RepQ-ViT's base), calibrated the same way.
_base_ = './ptq_uniform_w4a4_shapes.py'

model = dict(
    backbone=dict(
        branch_quantizers=dict(
            softmax=dict(type='DeMaxQuantizer'), fc2_in=dict(type='NormQuantizer'))))
