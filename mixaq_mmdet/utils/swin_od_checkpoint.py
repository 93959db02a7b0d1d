"""The checkpoint layout of microsoft's Swin-Transformer-Object-Detection (a
fork of mmdet 2.11 on mmcv-full 1.x) and its conversion to mmdet 3.3's keys.

Its 3x Mask R-CNN and Cascade Mask R-CNN releases (:data:`SWIN_OD_RELEASES`)
are the FP models of the PTQ papers on Swin detectors (RepQ-ViT, UQ-ViT,
APHQ-ViT, ...). What a release file holds (read in that repository's
``mmcv_custom/runner/checkpoint.py``, ``mmcv_custom/runner/epoch_based_runner.py``,
``tools/train.py`` and ``mmdet/models/backbones/swin_transformer.py``):

- ``state_dict``: the backbone under the names of its own ``SwinTransformer``
  (``backbone.patch_embed.proj``, ``backbone.layers.{i}.blocks.{j}.attn.qkv``,
  ``...mlp.fc1``, ``backbone.layers.{i}.downsample.reduction`` / ``.norm``,
  ``backbone.norm{i}``), its ``PatchMerging`` concatenating the 2x2
  neighbours as ``x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]``
  while mmdet 3.x's unfolds them channel by channel (``nn.Unfold``); the neck
  and heads under mmdet 2.11's module names, which mmdet 3.3 kept (every key
  is checked by a strict load in ``tests/utils/test_swin_od_checkpoint.py``);
- ``meta``: mmcv 1.x's and mmdet 2.11's (``mmdet_version``, ``CLASSES``,
  ``epoch``, ``iter``, ``env_info``, ``config``, ``seed``, ``exp_name`` (the
  config file name), ``mmcv_version``, ``time``, ``hook_msgs``);
- ``optimizer`` (AdamW's state dict) and ``amp`` (apex's loss scaler).

:func:`convert_swin_od_checkpoint` maps the backbone with mmdet's own
``swin_converter`` (written for Microsoft's classification checkpoints, whose
backbone keys and merge order are the same), keeps the head keys and the meta
(``CLASSES`` also as ``dataset_meta``), records the conversion, and drops
``optimizer`` and ``amp``: their parameter indices follow Microsoft's module
order and no mmdet 3.x run can resume from them.
"""
import os
import os.path as osp
import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, NamedTuple, Optional

import torch
from torch import Tensor

#: Where the releases are downloaded from.
RELEASE_URL = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.2/'


class SwinODRelease(NamedTuple):
    """One release: its file, the config it was trained with (``meta['exp_name']``)
    and this project's mmdet 3.x config of the same detector."""
    file_name: str
    exp_name: str
    config: str

    @property
    def name(self) -> str:
        """The file name without ``.pth``: a ``base_model`` name."""
        return self.file_name[:-len('.pth')]

    @property
    def url(self) -> str:
        return RELEASE_URL + self.file_name


#: The four 3x releases of the PTQ papers' COCO tables.
SWIN_OD_RELEASES = (
    SwinODRelease('mask_rcnn_swin_tiny_patch4_window7.pth',
                  'mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco.py',
                  'mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py'),
    SwinODRelease('mask_rcnn_swin_small_patch4_window7.pth',
                  'mask_rcnn_swin_small_patch4_window7_mstrain_480-800_adamw_3x_coco.py',
                  'mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py'),
    SwinODRelease(
        'cascade_mask_rcnn_swin_tiny_patch4_window7.pth',
        'cascade_mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_giou_4conv1f_'
        'adamw_3x_coco.py',
        'cascade-mask-rcnn_swin-t-p4-w7_fpn_4conv1f-giou_amp-ms-crop-3x_coco.py'),
    SwinODRelease(
        'cascade_mask_rcnn_swin_small_patch4_window7.pth',
        'cascade_mask_rcnn_swin_small_patch4_window7_mstrain_480-800_giou_4conv1f_'
        'adamw_3x_coco.py',
        'cascade-mask-rcnn_swin-s-p4-w7_fpn_4conv1f-giou_amp-ms-crop-3x_coco.py'),
)

#: Key of the conversion record in a converted checkpoint's ``meta``.
CONVERSION_META_KEY = 'converted_from'
#: The layout's name in messages and in the conversion record.
LAYOUT = 'Swin-Transformer-Object-Detection'

#: Every backbone key of the layout (after ``backbone.``); absolute position
#: embeddings (``ape=True``) are not among them: no release uses them.
_BACKBONE_KEY = re.compile(
    r'^(patch_embed\.(proj|norm)\.(weight|bias)'
    r'|layers\.\d+\.blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)'
    r'|layers\.\d+\.blocks\.\d+\.attn\.relative_position_(bias_table|index)'
    r'|layers\.\d+\.downsample\.(reduction\.weight|norm\.(weight|bias))'
    r'|norm\d+\.(weight|bias))$')
#: Keys that only this layout has (mmdet 3.x says ``projection`` and ``stages``).
_MARKER = re.compile(r'^backbone\.(patch_embed\.proj\.|layers\.\d+\.blocks\.\d+\.attn\.qkv\.)')
#: The modules after the backbone, whose mmdet 2.11 names mmdet 3.3 kept.
HEAD_PREFIXES = ('neck.', 'rpn_head.', 'roi_head.')
#: The expected layout, for error messages.
EXPECTED_KEYS = ('backbone.patch_embed.{proj,norm}.*, backbone.layers.{i}.blocks.{j}.'
                 '{norm1,attn.qkv,attn.proj,attn.relative_position_bias_table,'
                 'attn.relative_position_index,norm2,mlp.fc1,mlp.fc2}*, '
                 'backbone.layers.{i}.downsample.{reduction,norm}.*, backbone.norm{i}.*, '
                 f'and the neck and heads ({", ".join(p + "*" for p in HEAD_PREFIXES)})')


def swin_od_release(name: str) -> Optional[SwinODRelease]:
    """The release whose file, training config or mmdet 3.x config has the file
    name of ``name`` (a path or URL), or None."""
    base = osp.basename(str(name).split('?')[0])
    for release in SWIN_OD_RELEASES:
        if base in (release.file_name, release.exp_name, release.config):
            return release
    return None


def state_dict_of(checkpoint: Mapping) -> Mapping[str, Any]:
    """The state dict of a checkpoint dict (``state_dict``) or the dict itself."""
    state = checkpoint.get('state_dict', checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint['state_dict'] must be a mapping of names to tensors, got "
                         f'{type(state).__name__}')
    return state


def is_swin_od_state_dict(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` has backbone keys that only this layout has."""
    return any(_MARKER.match(str(k)) for k in state)


def is_swin_od_checkpoint(checkpoint: Any) -> bool:
    """Whether ``checkpoint`` (a checkpoint dict or a state dict) is in this
    layout and not converted yet."""
    return isinstance(checkpoint, Mapping) and is_swin_od_state_dict(state_dict_of(checkpoint))


def unmapped_keys(state: Mapping[str, Any]) -> List[str]:
    """The keys of a state dict in this layout that map to nothing in mmdet 3.3."""
    return [
        k for k in state
        if not (k.startswith(HEAD_PREFIXES) or
                (k.startswith('backbone.') and _BACKBONE_KEY.match(k[len('backbone.'):])))
    ]


def _key_list(keys: List[str], limit: int = 3) -> str:
    more = f', ... ({len(keys)} in all)' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def swin_od_to_mmdet(state: Mapping[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """mmdet 3.3's state dict for a state dict in this layout: the backbone
    through mmdet's ``swin_converter`` (names, and the merge order of
    ``PatchMerging``), the neck and heads as they are.

    Raises:
        ValueError: keys that map to nothing (named, with their count).
    """
    from mmdet.models.backbones.swin import swin_converter
    unknown = unmapped_keys(state)
    if unknown:
        raise ValueError(f'{len(unknown)} of the checkpoint\'s {len(state)} keys map to nothing in '
                         f'mmdet 3.3 (e.g. {_key_list(unknown)}); the {LAYOUT} layout has '
                         f'{EXPECTED_KEYS}')
    backbone = OrderedDict(
        (k[len('backbone.'):], v) for k, v in state.items() if k.startswith('backbone.'))
    converted = swin_converter(backbone)
    converted.update((k, v) for k, v in state.items() if not k.startswith('backbone.'))
    return converted


def _merge_order_to_swin_od(weight: Tensor) -> Tensor:
    """mmdet's unfold order (channel-major, 2x2 offsets (0,0), (0,1), (1,0),
    (1,1)) back to Microsoft's concatenation (x0, x1, x2, x3 = offsets (0,0),
    (1,0), (0,1), (1,1), each all channels), along the last dimension."""
    lead, channels = weight.shape[:-1], weight.shape[-1] // 4
    unfolded = weight.reshape(*lead, channels, 4).transpose(-1, -2)  # offset-major
    return unfolded[..., [0, 2, 1, 3], :].reshape(*lead, 4 * channels)


_TO_SWIN_OD = (
    (re.compile(r'^backbone\.patch_embed\.projection\.'), 'backbone.patch_embed.proj.'),
    (re.compile(r'^backbone\.stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.'),
     r'backbone.layers.\1.blocks.\2.attn.'),
    (re.compile(r'^backbone\.stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.0\.0\.'),
     r'backbone.layers.\1.blocks.\2.mlp.fc1.'),
    (re.compile(r'^backbone\.stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.1\.'),
     r'backbone.layers.\1.blocks.\2.mlp.fc2.'),
    (re.compile(r'^backbone\.stages\.(\d+)\.blocks\.(\d+)\.(norm1|norm2)\.'),
     r'backbone.layers.\1.blocks.\2.\3.'),
    (re.compile(r'^backbone\.stages\.(\d+)\.downsample\.'), r'backbone.layers.\1.downsample.'),
    (re.compile(r'^backbone\.(patch_embed\.norm|norm\d+)\.'), r'backbone.\1.'),
)


def mmdet_to_swin_od(state: Mapping[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """The inverse of :func:`swin_od_to_mmdet`, for writing checkpoints in this
    layout (:mod:`mixaq_mmdet.utils.swin_od_fixture`): an mmdet 3.3 Swin
    detector's state dict under Microsoft's names and merge order.

    Raises:
        ValueError: backbone keys this layout has no name for.
    """
    out: 'OrderedDict[str, Tensor]' = OrderedDict()
    unknown = []
    for key, value in state.items():
        if not key.startswith('backbone.'):
            out[key] = value
            continue
        for pattern, repl in _TO_SWIN_OD:
            if pattern.match(key):
                new_key = pattern.sub(repl, key)
                break
        else:
            unknown.append(key)
            continue
        if '.downsample.reduction.' in new_key or '.downsample.norm.' in new_key:
            value = _merge_order_to_swin_od(value).contiguous()
        out[new_key] = value
    if unknown:
        raise ValueError(f'{len(unknown)} backbone keys have no name in the {LAYOUT} layout '
                         f'(e.g. {_key_list(unknown)}): only mmdet 3.3 SwinTransformer '
                         'backbones without absolute position embedding convert')
    return out


def conversion_record(checkpoint: Mapping) -> Optional[Mapping[str, Any]]:
    """What :func:`convert_swin_od_checkpoint` recorded in a converted
    checkpoint's meta, or None for any other checkpoint."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
    record = meta.get(CONVERSION_META_KEY) if isinstance(meta, Mapping) else None
    return record if isinstance(record, Mapping) else None


def convert_swin_od_checkpoint(checkpoint: Mapping, source: str) -> Dict[str, Any]:
    """A checkpoint in this layout (loaded from ``source``, a path or URL) as
    mmdet 3.x loads it: ``state_dict`` by :func:`swin_od_to_mmdet`, ``meta``
    kept with ``dataset_meta=dict(classes=CLASSES)`` and
    ``meta['converted_from']`` (the source file, the layout, the entries
    dropped), ``optimizer`` and ``amp`` dropped.

    Raises:
        ValueError: not this layout, or keys that map to nothing.
    """
    if not is_swin_od_checkpoint(checkpoint):
        keys = list(state_dict_of(checkpoint)) if isinstance(checkpoint, Mapping) else []
        raise ValueError(f'{source} is not in the {LAYOUT} layout: none of its {len(keys)} keys '
                         f'(e.g. {_key_list(keys)}) is one of {EXPECTED_KEYS}')
    meta: Dict[str, Any] = dict(checkpoint.get('meta') or {})
    classes = meta.get('CLASSES')
    if classes is not None and 'dataset_meta' not in meta:
        meta['dataset_meta'] = dict(classes=tuple(classes))
    meta[CONVERSION_META_KEY] = dict(
        source=str(source),
        layout=LAYOUT,
        converter='mixaq_mmdet.utils.swin_od_checkpoint',
        dropped=[k for k in checkpoint if k not in ('meta', 'state_dict')])
    return dict(meta=meta, state_dict=swin_od_to_mmdet(state_dict_of(checkpoint)))


def convert_swin_od_file(src: str, dst: str) -> str:
    """Convert the checkpoint file ``src`` (a path or URL, loaded with
    mmengine's ``CheckpointLoader``) into ``dst``; returns ``dst``."""
    from mmengine.runner import CheckpointLoader

    from mixaq_mmdet.compat import checkpoint_types_allowed
    with checkpoint_types_allowed():
        checkpoint = CheckpointLoader.load_checkpoint(src, map_location='cpu')
    converted = convert_swin_od_checkpoint(checkpoint, src)
    if osp.dirname(dst):
        os.makedirs(osp.dirname(dst), exist_ok=True)
    torch.save(converted, dst)
    return dst


__all__ = [
    'RELEASE_URL', 'SwinODRelease', 'SWIN_OD_RELEASES', 'CONVERSION_META_KEY', 'LAYOUT',
    'HEAD_PREFIXES', 'EXPECTED_KEYS', 'swin_od_release', 'state_dict_of', 'is_swin_od_state_dict',
    'is_swin_od_checkpoint', 'unmapped_keys', 'swin_od_to_mmdet', 'mmdet_to_swin_od',
    'conversion_record', 'convert_swin_od_checkpoint', 'convert_swin_od_file'
]
