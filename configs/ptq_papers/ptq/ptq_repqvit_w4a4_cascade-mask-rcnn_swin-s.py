# RepQ-ViT W4A4 PTQ of the PTQ papers' Swin-S Cascade Mask R-CNN (microsoft's
# 3x GIoU 4conv1f checkpoint, 51.9 / 45.0 AP;
# ../cascade-mask-rcnn_swin-s-p4-w7_fpn_4conv1f-giou_amp-ms-crop-3x_coco.py).
# Published: RepQ-ViT 49.3 / 43.1 (W4A4), 51.4 / 44.6 (W6A6).
_base_ = './ptq_repqvit_w4a4_cascade-mask-rcnn_swin-t.py'

base_model = [
    'cascade_mask_rcnn_swin_small_patch4_window7_mstrain_480-800_giou_4conv1f_adamw_3x_coco',
    'cascade_mask_rcnn_swin_small_patch4_window7'
]
model = dict(backbone=dict(depths=[2, 2, 18, 2]))
