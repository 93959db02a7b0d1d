# RepQ-ViT W4A4 PTQ of the PTQ papers' Swin-T Cascade Mask R-CNN (microsoft's
# 3x GIoU 4conv1f checkpoint, 50.4 / 43.7 AP;
# ../cascade-mask-rcnn_swin-t-p4-w7_fpn_4conv1f-giou_amp-ms-crop-3x_coco.py): the
# Mask R-CNN row's settings on that detector. Published: RepQ-ViT 47.0 / 41.4
# (W4A4), 50.0 / 43.5 (W6A6).
_base_ = [
    './ptq_repqvit_w4a4_mask-rcnn_swin-t.py', '../_base_/cascade-mask-rcnn_4conv1f-giou_heads.py'
]

base_model = [
    'cascade_mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_giou_4conv1f_adamw_3x_coco',
    'cascade_mask_rcnn_swin_tiny_patch4_window7'
]
model = dict(
    detector='CascadeRCNN',
    rpn_head=dict(loss_bbox={{_base_.cascade_rpn_loss_bbox}}),
    roi_head={{_base_.cascade_roi_head}},
    train_cfg=dict(
        rpn_proposal={{_base_.cascade_rpn_proposal}}, rcnn={{_base_.cascade_rcnn_train_cfg}}))
