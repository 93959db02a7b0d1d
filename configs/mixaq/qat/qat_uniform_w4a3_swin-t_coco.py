# QAT on COCO, uniform W4A3: the same-cost comparator of MixA-Q at 1.33x over
# W4A4 (paper: 41.4 box mAP on the 3x model).
_base_ = './qat_uniform_w4a4_swin-t_coco.py'

model = dict(backbone=dict(a_bits=(3, 3)))
