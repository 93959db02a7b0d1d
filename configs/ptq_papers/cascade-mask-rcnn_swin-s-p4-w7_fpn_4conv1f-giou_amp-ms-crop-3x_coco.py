# Swin-S Cascade Mask R-CNN 3x (depths 2-2-18-2) with GIoU loss and 4conv1f box
# heads, as microsoft's Swin-Transformer-Object-Detection trained it: 51.9 box /
# 45.0 mask AP on val2017 (that repository's README). Checkpoint, loaded as it is:
#   https://github.com/SwinTransformer/storage/releases/download/v1.0.2/cascade_mask_rcnn_swin_small_patch4_window7.pth
_base_ = './cascade-mask-rcnn_swin-t-p4-w7_fpn_4conv1f-giou_amp-ms-crop-3x_coco.py'

pretrained = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_small_patch4_window7_224.pth'  # noqa
model = dict(
    backbone=dict(depths=[2, 2, 18, 2], init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
