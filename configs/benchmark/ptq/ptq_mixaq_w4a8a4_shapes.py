# MixA-Q PTQ, W4 with A8 for important windows and A4 for the rest; the same
# low-bit ratio for every pair of blocks, set for a BitOPs speedup of about 1.35x
# over uniform W4A8 at 320x320 (tools/analysis_tools/bitops.py prints it).
# Window score: 'l2', the paper's.
_base_ = './ptq_uniform_w4a8_shapes.py'

model = dict(backbone=dict(a_bits=(8, 4), low_bit_ratios=0.5))
