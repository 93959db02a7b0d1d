# MixA-Q PTQ at the ratios of ptq_mixaq_w4a8a4_shapes.py, window_order='random'.
_base_ = './ptq_mixaq_w4a8a4_shapes.py'

model = dict(backbone=dict(window_order='random'))
