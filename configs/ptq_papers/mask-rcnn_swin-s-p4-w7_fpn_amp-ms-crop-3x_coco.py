# Swin-S Mask R-CNN 3x (depths 2-2-18-2) as microsoft's Swin-Transformer-Object-
# Detection trained it: 48.5 box / 43.3 mask AP on val2017 (that repository's
# README; mmdet's own Swin-S 3x release,
# mmdet::swin/mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py, reports 48.2 /
# 43.2). Checkpoint, loaded as it is:
#   https://github.com/SwinTransformer/storage/releases/download/v1.0.2/mask_rcnn_swin_small_patch4_window7.pth
_base_ = './mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py'

pretrained = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_small_patch4_window7_224.pth'  # noqa
model = dict(
    backbone=dict(depths=[2, 2, 18, 2], init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
