# Full-size Swin-T Mask R-CNN on real COCO (data/coco, mmdet's layout), FP.
# The backbone starts from the official ImageNet weights as in mmdet; to evaluate
# mmdet's trained detector pass its checkpoint to tools/test.py. The MixA-Q
# settings for real COCO inherit this config.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'

custom_imports = dict(imports=['mixaq_mmdet'], allow_failed_imports=False)
