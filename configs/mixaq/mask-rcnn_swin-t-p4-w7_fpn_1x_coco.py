# Full-size Swin-T Mask R-CNN on COCO, FP: mmdet's 1x model (42.7 box / 39.3
# mask AP), NOT the FP base of the paper's tables (that is the 3x model,
# mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py, which configs/mixaq/ptq and
# qat inherit). Kept to evaluate the 1x checkpoint:
#   https://download.openmmlab.com/mmdetection/v2.0/swin/mask_rcnn_swin-t-p4-w7_fpn_1x_coco/mask_rcnn_swin-t-p4-w7_fpn_1x_coco_20210902_120937-9d6b7cfa.pth
# To quantize it, run a MixA-Q config with --cfg-options
# base_model=mask-rcnn_swin-t-p4-w7_fpn_1x_coco (the same architecture; the
# checkpoint check otherwise refuses the 1x file under the 3x configs).
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'

custom_imports = dict(imports=['mixaq_mmdet'], allow_failed_imports=False)
# checkpoints and the pytorch launcher as the stack needs them (mixaq_mmdet.compat)
runner_type = 'MixAQRunner'

# The backbone's measured time per image, reported with the test metrics.
custom_hooks = [dict(type='BackboneLatencyHook')]
