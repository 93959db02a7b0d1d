# Full-size Swin-T Mask R-CNN on COCO (data/coco, mmdet's layout), FP: mmdet's
# 3x multi-scale-crop model, the FP base of MixA-Q's and RepQ-ViT's COCO tables
# (46.0 box / 41.6 mask AP on val2017, mmdet's metafile). Official checkpoint:
#   https://download.openmmlab.com/mmdetection/v2.0/swin/mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco/mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_20210906_131725-bacf6f7b.pth
#   python tools/test.py THIS_CONFIG <that URL or the downloaded file>
# Training it (36 epochs) starts the backbone from mmdet's ImageNet weights
# (init_cfg, a download); every MixA-Q setting inherits this file and loads a
# trained detector instead.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'

custom_imports = dict(imports=['mixaq_mmdet'], allow_failed_imports=False)
# checkpoints and the pytorch launcher as the stack needs them (mixaq_mmdet.compat)
runner_type = 'MixAQRunner'

# The backbone's measured time per image, reported with the test metrics.
custom_hooks = [dict(type='BackboneLatencyHook')]
