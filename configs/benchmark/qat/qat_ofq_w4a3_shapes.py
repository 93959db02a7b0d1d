# OFQ QAT, uniform W4A3: the OFQ base's same-cost comparator of MixA-Q.
_base_ = './qat_ofq_w4a4_shapes.py'

model = dict(backbone=dict(a_bits=(3, 3)))
