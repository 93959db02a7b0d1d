# PTQ of the FP benchmark model, uniform W4A2: the low-bit end of the
# window-policy sweep of make demo (W4 A8/A2).
_base_ = './ptq_uniform_w4a8_shapes.py'

model = dict(backbone=dict(a_bits=(2, 2)))
