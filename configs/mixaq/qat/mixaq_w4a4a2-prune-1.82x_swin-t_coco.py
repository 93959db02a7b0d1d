# MixA-Q with pruning after SAQA on COCO at 1.82x BitOPs over uniform W4A4 QAT
# (800x1333, tools/analysis_tools/bitops.py): the SAQA-with-pruning model with
# one low-bit and one prune ratio for all 6 pairs. An evaluation setting (train
# qat_saqa-prune_w4a4a2_swin-t_coco.py):
#   bash tools/dist_test.sh THIS_CONFIG work_dirs/qat_saqa-prune_w4a4a2_swin-t_coco/epoch_6.pth 8
# The paper's rows use per-pair ratios from its search (not published):
# tools/search_ratios.py --prune writes a config of this shape with searched ones.
_base_ = './qat_saqa-prune_w4a4a2_swin-t_coco.py'

model = dict(backbone=dict(low_bit_ratios=0.52, prune_ratios=0.21))
