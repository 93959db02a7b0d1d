# RepQ-ViT W4A4 PTQ of the PTQ papers' Swin-S Mask R-CNN (microsoft's 3x
# checkpoint, 48.5 / 43.3 AP; ../mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py):
# the Swin-T row's settings on depths 2-2-18-2. Published: RepQ-ViT 44.2 / 40.2
# (W4A4; a rerun by QwT got 42.6 / 40.0), 47.8 / 43.0 (W6A6).
_base_ = './ptq_repqvit_w4a4_mask-rcnn_swin-t.py'

base_model = [
    'mask_rcnn_swin_small_patch4_window7_mstrain_480-800_adamw_3x_coco',
    'mask_rcnn_swin_small_patch4_window7'
]
model = dict(backbone=dict(depths=[2, 2, 18, 2]))
