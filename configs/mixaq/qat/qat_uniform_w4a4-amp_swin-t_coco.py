# QAT of qat_uniform_w4a4_swin-t_coco.py under mixed precision, as mmdet's
# mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py trains the FP model: fp16
# autocast with a dynamic loss scale (mmengine's AmpOptimWrapper, GPU only).
# The quantizers compute in float32 inside autocast and the LSQ step sizes and
# zero points stay float32 parameters, unscaled and skipped with the others
# when a step overflows. 8 GPUs, 2 images each:
#   bash tools/dist_train.sh configs/mixaq/qat/qat_uniform_w4a4-amp_swin-t_coco.py 8 \
#       --cfg-options \
#       load_from=mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_20210906_131725-bacf6f7b.pth
# On CPU (the tests and make smoke-coco), bf16 with
# --cfg-options optim_wrapper.type=CPUAmpOptimWrapper: mmcv's CPU kernels take
# float32 only, so there autocast covers the backbone (every quantizer).
_base_ = './qat_uniform_w4a4_swin-t_coco.py'

optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')
