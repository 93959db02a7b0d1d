# Uniform PTQ, W8A8.
_base_ = './ptq_uniform_w4a8_shapes.py'

model = dict(backbone=dict(w_bits=8, a_bits=(8, 8)))
