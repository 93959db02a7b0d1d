# Swin-T Mask R-CNN 3x (multi-scale 480-800 with crops, AdamW, mixed precision)
# as microsoft's Swin-Transformer-Object-Detection trained it: the FP model of the
# PTQ papers' COCO table (RepQ-ViT, APHQ-ViT, UQ-ViT, ...), 46.0 box / 41.6 mask AP
# on val2017 (that repository's README). Its checkpoint (Microsoft's key names,
# mmdet 2.x heads, mmcv 1.x meta) loads as it is, converted on loading:
#   https://github.com/SwinTransformer/storage/releases/download/v1.0.2/mask_rcnn_swin_tiny_patch4_window7.pth
#   python tools/test.py THIS_CONFIG <that URL or the downloaded file>
# mmdet's own release of this model is ../mixaq/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py'

custom_imports = dict(imports=['mixaq_mmdet'], allow_failed_imports=False)
runner_type = 'MixAQRunner'
custom_hooks = [dict(type='BackboneLatencyHook')]
