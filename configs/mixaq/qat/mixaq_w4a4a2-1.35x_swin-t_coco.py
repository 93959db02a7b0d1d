# MixA-Q after SAQA on COCO at 1.35x BitOPs over uniform W4A4 QAT (800x1333,
# tools/analysis_tools/bitops.py): the SAQA model evaluated with one low-bit
# ratio for all 6 pairs. An evaluation setting (train qat_saqa_w4a4a2_swin-t_coco.py):
#   bash tools/dist_test.sh THIS_CONFIG work_dirs/qat_saqa_w4a4a2_swin-t_coco/epoch_6.pth 8
# The paper's rows use per-pair ratios from its search (not published):
# tools/search_ratios.py writes a config of this shape with searched ones.
_base_ = './qat_saqa_w4a4a2_swin-t_coco.py'

model = dict(backbone=dict(low_bit_ratios=0.54))
