# MixA-Q PTQ with activation pruning on COCO: the least important windows skip
# their block pair, the next ones run at A4; 1.52x BitOPs over uniform W4A8
# (800x1333), next to the paper's 1.53x pruning setting (floor rounding of the
# group sizes makes the speedup move in steps).
_base_ = './ptq_mixaq_w4a8a4-1.35x_swin-t_coco.py'

model = dict(backbone=dict(low_bit_ratios=0.4, prune_ratios=0.165))
