# MixA-Q PTQ on the W4A4 base: A4 for important windows, A2 for half of them
# (the paper's QAT bit widths, here calibrated only): against uniform W4A3 it
# shows how much the choice of windows is worth without any training.
_base_ = './ptq_uniform_w4a8_shapes.py'

model = dict(backbone=dict(a_bits=(4, 2), low_bit_ratios=0.5, window_score='contrast'))
