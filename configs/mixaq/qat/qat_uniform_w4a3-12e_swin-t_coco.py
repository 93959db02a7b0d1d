# Uniform W4A3 QAT with SAQA's total schedule (6 + 6 epochs): the same-cost
# comparator of MixA-Q at about 1.33x over W4A4, trained as long as the SAQA
# model the MixA-Q rows are evaluated on:
#   bash tools/dist_train.sh configs/mixaq/qat/qat_uniform_w4a3-12e_swin-t_coco.py 8
_base_ = './qat_uniform_w4a3_swin-t_coco.py'

load_from = 'work_dirs/qat_uniform_w4a3_swin-t_coco/epoch_6.pth'
