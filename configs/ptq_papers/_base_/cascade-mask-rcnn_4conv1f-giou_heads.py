# The Cascade Mask R-CNN heads of microsoft's Swin-Transformer-Object-Detection
# 3x models (configs/swin/cascade_mask_rcnn_swin_*_mstrain_480-800_giou_4conv1f_adamw_3x_coco.py):
# three stages of ConvFCBBoxHead with 4 shared convs (SyncBN) and 1 shared fc
# ("4conv1f"), class-specific regression of decoded boxes with GIoU loss; RPN,
# RoI extractors, mask head, train and test settings as mmdet's Cascade Mask
# R-CNN. Variables, not a model: a detector config puts them into its model.

cascade_bbox_stage = dict(
    type='ConvFCBBoxHead',
    num_shared_convs=4,
    num_shared_fcs=1,
    in_channels=256,
    conv_out_channels=256,
    fc_out_channels=1024,
    roi_feat_size=7,
    num_classes=80,
    bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.]),
    reg_class_agnostic=False,
    reg_decoded_bbox=True,
    norm_cfg=dict(type='SyncBN', requires_grad=True),
    loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
cascade_rcnn_stage_train = dict(
    sampler=dict(
        type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
    mask_size=28,
    pos_weight=-1,
    debug=False)

cascade_rpn_loss_bbox = dict(type='SmoothL1Loss', beta=1.0 / 9.0, loss_weight=1.0)
cascade_rpn_proposal = dict(
    nms_pre=2000, max_per_img=2000, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0)
cascade_roi_head = dict(
    _delete_=True,
    type='CascadeRoIHead',
    num_stages=3,
    stage_loss_weights=[1, 0.5, 0.25],
    bbox_roi_extractor=dict(
        type='SingleRoIExtractor',
        roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
        out_channels=256,
        featmap_strides=[4, 8, 16, 32]),
    bbox_head=[
        dict(
            cascade_bbox_stage, bbox_coder=dict(cascade_bbox_stage['bbox_coder'], target_stds=stds))
        for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
    ],
    mask_roi_extractor=dict(
        type='SingleRoIExtractor',
        roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
        out_channels=256,
        featmap_strides=[4, 8, 16, 32]),
    mask_head=dict(
        type='FCNMaskHead',
        num_convs=4,
        in_channels=256,
        conv_out_channels=256,
        num_classes=80,
        loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0)))
cascade_rcnn_train_cfg = [
    dict(
        cascade_rcnn_stage_train,
        assigner=dict(
            type='MaxIoUAssigner',
            pos_iou_thr=iou,
            neg_iou_thr=iou,
            min_pos_iou=iou,
            match_low_quality=False,
            ignore_iof_thr=-1)) for iou in (0.5, 0.6, 0.7)
]
