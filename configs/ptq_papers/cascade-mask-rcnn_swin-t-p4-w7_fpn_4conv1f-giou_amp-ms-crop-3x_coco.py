# Swin-T Cascade Mask R-CNN 3x with GIoU loss and 4conv1f box heads, as
# microsoft's Swin-Transformer-Object-Detection trained it (same data pipeline,
# optimizer and schedule as its Mask R-CNN): 50.4 box / 43.7 mask AP on val2017
# (that repository's README). Checkpoint, loaded as it is:
#   https://github.com/SwinTransformer/storage/releases/download/v1.0.2/cascade_mask_rcnn_swin_tiny_patch4_window7.pth
_base_ = [
    './mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py',
    './_base_/cascade-mask-rcnn_4conv1f-giou_heads.py'
]

model = dict(
    type='CascadeRCNN',
    rpn_head=dict(loss_bbox={{_base_.cascade_rpn_loss_bbox}}),
    roi_head={{_base_.cascade_roi_head}},
    train_cfg=dict(
        rpn_proposal={{_base_.cascade_rpn_proposal}}, rcnn={{_base_.cascade_rcnn_train_cfg}}))
