# Uniform W4A4 QAT with SAQA's total schedule (6 + 6 epochs): the 6-epoch W4A4
# QAT model trained 6 more epochs at W4A4, with SAQA's schedule and hooks but
# no ratio sampling. The comparator of the SAQA rows, so that a SAQA gain is
# not a gain of training length:
#   bash tools/dist_train.sh configs/mixaq/qat/qat_uniform_w4a4-12e_swin-t_coco.py 8
_base_ = './qat_uniform_w4a4_swin-t_coco.py'

load_from = 'work_dirs/qat_uniform_w4a4_swin-t_coco/epoch_6.pth'
