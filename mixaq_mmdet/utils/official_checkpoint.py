"""A checkpoint in the format of mmdet's official Swin-T Mask R-CNN 3x release
(``mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_20210906_131725-bacf6f7b.pth``,
trained with mmdet 2.x on mmcv 1.x), with random weights: what
``tools/test.py`` and the MixA-Q COCO configs load, for smoke runs without the
real file.

What the release's training stack writes (read in mmcv 1.3.12's
``mmcv/runner`` and mmdet 2.x's ``tools/train.py``):

- mmcv's ``save_checkpoint``: ``{'meta', 'state_dict', 'optimizer'}``, the
  state dict a plain ``OrderedDict`` of CPU tensors (1.3.12's
  ``weights_to_cpu`` drops ``_metadata``; 1.3.13 of 9 Sep 2021 keeps it), the
  optimizer its ``state_dict()``; ``meta`` gets ``mmcv_version`` and
  ``time`` (``time.asctime()``) and ``CLASSES`` from the model.
- mmcv's ``EpochBasedRunner.save_checkpoint``: the runner's meta, then
  ``epoch`` (1-based) and ``iter``; the ``CheckpointHook`` puts
  ``hook_msgs={'last_ckpt': ...}`` into the runner's meta after each save, so
  a later epoch's file carries the previous file's path.
- mmdet's ``tools/train.py``: the runner's meta is ``env_info`` (its
  ``collect_env`` lines), ``config`` (``cfg.pretty_text``), ``seed`` and
  ``exp_name`` (the config's file name); the hook's meta is
  ``mmdet_version`` (``__version__ + get_git_hash()[:7]``) and ``CLASSES``.
- mmdet's ``tools/model_converters/publish_model.py``, which gives release
  files their ``-<sha256[:8]>`` suffix, deletes ``optimizer`` and saves with
  ``_use_new_zipfile_serialization=False``: ``publish=True`` writes that form.

The state dict's keys are mmdet 3.3.0's for the same model: its Swin
(``backbone.stages.0.blocks.0.attn.w_msa.qkv.weight``, ``relative_position_index``
buffers), FPN, RPN and RoI heads keep mmdet 2.x's module names, and mmdet
3.3.0's ``configs/swin/metafile.yml`` gives this 2.x file as the weights of its
3.x config, to load unchanged. The values that are not
recoverable without the real file (versions' git hash, environment, seed, times,
the exact config text, iteration count) are plausible stand-ins, documented at
:func:`official_meta`.
"""
import copy
import logging
import os
import os.path as osp
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Sequence

import torch
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope
from torch import nn

from mixaq_mmdet.datasets.coco_fixture import COCO_CLASSES

#: mmdet 3.x's config of the released model (same architecture and keys).
RELEASE_CONFIG = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
#: The release's config file name in mmdet 2.x (``meta['exp_name']``).
EXP_NAME = 'mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
#: ``meta``'s keys in the order the training stack inserts them.
OFFICIAL_META_KEYS = ('mmdet_version', 'CLASSES', 'env_info', 'config', 'seed', 'exp_name',
                      'hook_msgs', 'epoch', 'iter', 'mmcv_version', 'time')
#: The 2.x config's optimizer: AdamW, no weight decay on these keys.
BASE_LR, WEIGHT_DECAY, BETAS, EPS = 1e-4, 0.05, (0.9, 0.999), 1e-8
NO_DECAY_KEYS = ('absolute_pos_embed', 'relative_position_bias_table', 'norm')
#: 3x schedule: 36 epochs, lr x0.1 after epochs 27 and 33; 7330 iterations per
#: epoch (117266 filtered train2017 images / 16 per batch, rounded up as the
#: group sampler does; the exact count depends on the aspect groups).
MAX_EPOCHS, LR_STEPS, ITERS_PER_EPOCH = 36, (27, 33), 7330


@contextmanager
def _quiet_mmengine() -> Iterator[None]:
    """mmengine's current logger at ERROR: ``init_weights`` logs every
    parameter of the detector (INFO) and that there is no pretrained backbone
    (WARNING)."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_release_model(seed: int = 0) -> nn.Module:
    """mmdet 3.3.0's 3x Swin-T Mask R-CNN with random weights (its own
    ``init_weights`` after ``torch.manual_seed(seed)``; no ImageNet download)."""
    from mmdet.registry import MODELS
    cfg = copy.deepcopy(get_config(RELEASE_CONFIG).model)
    cfg.backbone.init_cfg = None
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg)
    with _quiet_mmengine():
        model.init_weights()
    return model.eval()


def adamw_2x_config() -> Dict[str, Any]:
    """The 3x Swin configs' optimizer in mmdet 2.x's form: AdamW, no weight
    decay on :data:`NO_DECAY_KEYS`."""
    return dict(
        type='AdamW',
        lr=BASE_LR,
        betas=BETAS,
        weight_decay=WEIGHT_DECAY,
        paramwise_cfg=dict(custom_keys={k: dict(decay_mult=0.0)
                                        for k in NO_DECAY_KEYS}))


def release_config_text() -> str:
    """``meta['config']``: a reconstruction of the release's mmdet 2.x config
    as ``cfg.pretty_text`` prints it: mmdet 3.3.0's model of the same name
    (without the 3.x-only data preprocessor) and the 2.x runtime fields of the
    3x schedule (AdamW, step lr, 36 epochs). Not the original text; no tool
    reads it back."""
    model = copy.deepcopy(get_config(RELEASE_CONFIG).model.to_dict())
    model.pop('data_preprocessor', None)
    img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
    data = {
        split:
        dict(
            type='CocoDataset',
            ann_file=f'data/coco/annotations/instances_{name}2017.json',
            img_prefix=f'data/coco/{name}2017/')
        for split, name in (('train', 'train'), ('val', 'val'), ('test', 'val'))
    }
    cfg = Config(
        dict(
            model=model,
            dataset_type='CocoDataset',
            data_root='data/coco/',
            img_norm_cfg=img_norm_cfg,
            data=dict(samples_per_gpu=2, workers_per_gpu=2, **data),
            evaluation=dict(metric=['bbox', 'segm']),
            optimizer=adamw_2x_config(),
            optimizer_config=dict(grad_clip=None),
            lr_config=dict(
                policy='step',
                warmup='linear',
                warmup_iters=1000,
                warmup_ratio=0.001,
                step=list(LR_STEPS)),
            runner=dict(type='EpochBasedRunner', max_epochs=MAX_EPOCHS),
            checkpoint_config=dict(interval=1),
            log_config=dict(interval=50, hooks=[dict(type='TextLoggerHook')]),
            custom_hooks=[dict(type='NumClassCheckHook')],
            dist_params=dict(backend='nccl'),
            log_level='INFO',
            load_from=None,
            resume_from=None,
            workflow=[('train', 1)],
            work_dir=f'./work_dirs/{EXP_NAME[:-3]}',
            gpu_ids=list(range(8))))
    return cfg.pretty_text


def official_meta(classes: Sequence[str] = COCO_CLASSES,
                  epoch: int = MAX_EPOCHS,
                  seed: Optional[int] = None) -> Dict[str, Any]:
    """The ``meta`` of the release file, keys in :data:`OFFICIAL_META_KEYS` order.

    Stand-ins (the real values need the real file): ``mmdet_version``
    '2.16.0' (Swin arrived in 2.16.0, 30 Aug 2021) plus 'unknown', what
    ``get_git_hash()[:7]`` gives outside a git checkout; ``mmcv_version``
    '1.3.12' (the release before the training date); ``env_info`` lines in
    ``collect_env``'s order with plausible values; ``seed`` None (mmdet 2.x's
    ``tools/train.py`` stored ``args.seed``, None without ``--seed``, until
    ``init_random_seed``); ``iter`` ``epoch * 7330``; ``time`` and
    ``hook_msgs`` consistent with a 36-epoch run started on 6 Sep 2021.
    """
    work_dir = f'./work_dirs/{EXP_NAME[:-3]}'
    env_info = '\n'.join([
        'sys.platform: linux',
        'Python: 3.7.10 (default, Feb 26 2021, 18:47:35) [GCC 7.3.0]',
        'CUDA available: True',
        'GPU 0,1,2,3,4,5,6,7: A100-SXM4-40GB',
        'CUDA_HOME: /usr/local/cuda',
        'NVCC: Build cuda_11.1.TC455_06.29190527_0',
        'GCC: gcc (GCC) 5.4.0',
        'PyTorch: 1.9.0+cu111',
        'PyTorch compiling details: PyTorch built with:\n  - GCC 7.3\n  - C++ Version: 201402',
        'TorchVision: 0.10.0+cu111',
        'OpenCV: 4.5.3',
        'MMCV: 1.3.12',
        'MMCV Compiler: GCC 7.3',
        'MMCV CUDA Compiler: 11.1',
        'MMDetection: 2.16.0+unknown',
    ])
    meta: Dict[str, Any] = dict(
        mmdet_version='2.16.0unknown',
        CLASSES=tuple(classes),
        env_info=env_info,
        config=release_config_text(),
        seed=seed,
        exp_name=EXP_NAME)
    if epoch > 1:
        meta['hook_msgs'] = dict(last_ckpt=f'{work_dir}/epoch_{epoch - 1}.pth')
    meta.update(
        epoch=epoch,
        iter=epoch * ITERS_PER_EPOCH,
        mmcv_version='1.3.12',
        time='Thu Sep  9 04:12:39 2021')
    return meta


def mmcv_adamw_state_dict(model: nn.Module,
                          num_state_params: Optional[int] = 2,
                          step: int = MAX_EPOCHS * ITERS_PER_EPOCH,
                          epoch: int = MAX_EPOCHS,
                          seed: int = 0) -> Dict[str, Any]:
    """What torch 1.9's ``AdamW.state_dict()`` returns after mmcv 1.x built it
    with the release's ``paramwise_cfg``: one param group per parameter (mmcv's
    ``DefaultOptimizerConstructor`` with custom keys), weight decay 0 where a
    :data:`NO_DECAY_KEYS` key is in the name, ``initial_lr`` from the lr hook,
    ``lr`` after the steps passed by ``epoch``.

    Args:
        num_state_params: how many parameters (the first ones) get Adam moments
            (``step`` as an int, ``exp_avg``, ``exp_avg_sq``), random but
            seeded; None: all (about twice the model's size).
    """
    lr = BASE_LR * 0.1**sum(epoch >= s for s in LR_STEPS)
    generator = torch.Generator().manual_seed(seed)
    state: Dict[int, Dict[str, Any]] = {}
    groups = []
    for index, (name, param) in enumerate(model.named_parameters()):
        no_decay = any(key in name for key in NO_DECAY_KEYS)
        group: Dict[str, Any] = (
            dict(lr=lr, weight_decay=0.0, betas=BETAS, eps=EPS, amsgrad=False) if no_decay else
            dict(lr=lr, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, amsgrad=False))
        group.update(initial_lr=BASE_LR, params=[index])
        groups.append(group)
        if num_state_params is None or index < num_state_params:
            shape = param.shape
            state[index] = dict(
                step=step,
                exp_avg=torch.randn(shape, generator=generator) * 1e-4,
                exp_avg_sq=torch.rand(shape, generator=generator) * 1e-8)
    return dict(state=state, param_groups=groups)


def official_checkpoint(model: Optional[nn.Module] = None,
                        seed: int = 0,
                        publish: bool = False,
                        num_state_params: Optional[int] = 2) -> Dict[str, Any]:
    """The release's checkpoint dict for ``model`` (default: a random
    :func:`build_release_model`); ``publish`` drops the optimizer as
    ``publish_model.py`` does."""
    if model is None:
        model = build_release_model(seed)
    state_dict = OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items())
    checkpoint: Dict[str, Any] = dict(meta=official_meta(), state_dict=state_dict)
    if not publish:
        checkpoint['optimizer'] = mmcv_adamw_state_dict(model, num_state_params, seed=seed)
    return checkpoint


def write_official_checkpoint(path: str,
                              seed: int = 0,
                              publish: bool = False,
                              num_state_params: Optional[int] = 2,
                              model: Optional[nn.Module] = None) -> str:
    """Write :func:`official_checkpoint` to ``path`` with plain ``torch.save``
    (legacy serialization with ``publish``, as the release files); every value is
    a type ``torch.load(weights_only=True)`` accepts. Returns ``path``."""
    checkpoint = official_checkpoint(model, seed, publish, num_state_params)
    if osp.dirname(path):
        os.makedirs(osp.dirname(path), exist_ok=True)
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not publish)
    return path


__all__ = [
    'RELEASE_CONFIG', 'EXP_NAME', 'OFFICIAL_META_KEYS', 'build_release_model', 'adamw_2x_config',
    'release_config_text', 'official_meta', 'mmcv_adamw_state_dict', 'official_checkpoint',
    'write_official_checkpoint'
]
