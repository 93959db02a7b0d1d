# MixA-Q PTQ of Swin-T Mask R-CNN on COCO: W4, A8 for the important windows and
# A4 for the rest; one low-bit ratio for all 6 pairs of blocks, set for 1.35x
# BitOPs over uniform W4A8 at 800x1333 (tools/analysis_tools/bitops.py), the
# paper's training-free PTQ headline. The paper searches per-pair ratios; give a
# list of 6 values to use searched ones.
_base_ = './ptq_uniform_w4a8_swin-t_coco.py'

model = dict(backbone=dict(a_bits=(8, 4), low_bit_ratios=0.53))
