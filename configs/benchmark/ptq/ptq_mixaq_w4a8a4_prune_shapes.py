# MixA-Q PTQ with pruning: the least important windows skip their block pair,
# the next ones run at A4, the most important at A8.
_base_ = './ptq_mixaq_w4a8a4_shapes.py'

model = dict(backbone=dict(low_bit_ratios=0.5, prune_ratios=0.2))
