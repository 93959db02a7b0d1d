# PTQ of the FP benchmark model, uniform W4A3: where low activation bits hurt
# (the low-bit end of the window-policy sweep of make demo).
_base_ = './ptq_uniform_w4a8_shapes.py'

model = dict(backbone=dict(a_bits=(3, 3)))
