# QAT, uniform W4A3: MixA-Q's same-cost comparator (every window at 3 bits
# costs about what W4 with A4/A2 windows costs at 1.33x over W4A4).
_base_ = './qat_uniform_w4a4_shapes.py'

model = dict(backbone=dict(a_bits=(3, 3)))
