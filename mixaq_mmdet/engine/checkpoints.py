"""What a run loads: checks of checkpoints against the model and the config, and
of the weights a run would download.

mmengine loads checkpoints non-strictly and initializes weights (``init_cfg``)
before ``load_from`` replaces them, so a wrong file or a needless download
surfaces only as bad numbers or a failure on an offline cluster; these checks
make each an error (or a warning where nothing can be told) that names the file.
"""
import logging
import os.path as osp
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from mmengine.logging import print_log
from torch import nn

from mixaq_mmdet.models import quant_scope
from mixaq_mmdet.quantization import QuantizerBase
from mixaq_mmdet.utils.swin_od_checkpoint import (EXPECTED_KEYS, LAYOUT, conversion_record,
                                                  is_swin_od_state_dict, swin_od_release)

#: State that MixA-Q adds to a float detector (low-branch LayerNorm copies, the
#: padding value of a folded reparameterization): absent from FP checkpoints.
MIXAQ_ONLY_KEYS = ('_low.', '.reparam_pad')
#: Key of the MixA-Q setting in a checkpoint's ``meta``.
META_KEY = 'mixaq'
#: Settings a calibrated checkpoint must share with the model that evaluates it:
#: what each quantizer computes and where the quantizers are.
STRICT_SETTINGS = ('w_bits', 'a_bits', 'quant_scope', 'reparam', 'reparam_range')
#: Run-time settings of the window policy: which windows each branch computes.
#: They may differ from those at calibration or training (set_ratios, the
#: ablations of the window order); a difference is logged, and a branch that
#: was never calibrated raises when reached.
POLICY_SETTINGS = ('low_bit_ratios', 'prune_ratios', 'window_score', 'window_order', 'window_seed')


def _quantizer_prefixes(model: nn.Module) -> List[str]:
    return [f'{name}.' for name, m in model.named_modules() if isinstance(m, QuantizerBase)]


def float_weight_keys(model: nn.Module) -> List[str]:
    """The keys of ``model``'s state that an FP checkpoint holds: all but the
    quantizers' and :data:`MIXAQ_ONLY_KEYS`."""
    quant_prefixes = tuple(_quantizer_prefixes(model))
    return [
        k for k in model.state_dict()
        if not k.startswith(quant_prefixes) and not any(m in k for m in MIXAQ_ONLY_KEYS)
    ]


def _unconverted_error(path: str) -> ValueError:
    return ValueError(f'checkpoint {path} is in the {LAYOUT} layout, not converted to mmdet '
                      "3.x's keys: load it through MixAQRunner (runner_type = 'MixAQRunner', "
                      'which converts it once) or convert it with '
                      'tools/model_converters/swin_od_to_mmdet.py')


def check_float_checkpoint(model: nn.Module, checkpoint: Mapping, path: str) -> None:
    """Raise unless ``checkpoint`` (loaded from ``path``) holds every float
    weight of ``model``.

    mmengine loads checkpoints non-strictly, so a checkpoint of another detector
    would otherwise leave random weights in place without an error.
    """
    state = checkpoint.get('state_dict', checkpoint)
    if is_swin_od_state_dict(state):
        raise _unconverted_error(path)
    model_state = model.state_dict()
    expected = float_weight_keys(model)
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(f'checkpoint {path} does not fit {type(model).__name__}: '
                         f'{len(missing)} of its {len(expected)} float weights are missing '
                         f'(e.g. {", ".join(missing[:3])}); PTQ needs the FP checkpoint of the '
                         'same detector (a Swin Mask R-CNN with these settings)')
    mismatched = [k for k in expected if tuple(state[k].shape) != tuple(model_state[k].shape)]
    if mismatched:
        raise ValueError(f'checkpoint {path} does not fit {type(model).__name__}: '
                         f'{len(mismatched)} weights have other shapes (e.g. {mismatched[0]}: '
                         f'{tuple(state[mismatched[0]].shape)} in the checkpoint)')


#: A key of mmdet 3.x's ``SwinTransformer`` (and of ``MixAQSwinTransformer``).
MMDET_SWIN_KEY = re.compile(r'^backbone\.stages\.\d+\.blocks\.\d+\.attn\.w_msa\.')
#: mmdet 3.x's Swin layout, for error messages.
MMDET_SWIN_KEYS = ('backbone.patch_embed.projection.*, backbone.stages.{i}.blocks.{j}.'
                   '{norm1,attn.w_msa.*,norm2,ffn.layers.*}, backbone.stages.{i}.downsample.*, '
                   'backbone.norm{i}.*')


def _examples(keys: Sequence[str]) -> str:
    return f'{len(keys)} (e.g. {", ".join(keys[:3])})'


def check_checkpoint_layout(model: nn.Module,
                            checkpoint: Mapping,
                            path: str,
                            config_name: Optional[str] = None) -> None:
    """Raise if ``checkpoint`` (loaded from ``path`` into ``model``, built
    from ``config_name``) is not in a layout ``model`` loads, naming keys:

    - one converted from Swin-Transformer-Object-Detection's layout must fit
      ``model`` exactly (mmengine would skip the keys that map to nothing and
      keep random weights for the missing ones): e.g. a Cascade file under a
      Mask R-CNN config is refused, naming both;
    - for a Swin detector, a checkpoint with none of mmdet 3.x's Swin keys is
      in neither layout (e.g. a classification or timm checkpoint);
    - one still in Swin-Transformer-Object-Detection's layout was loaded
      without :func:`~mixaq_mmdet.engine.converted_checkpoints.checkpoint_to_load`.
    """
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, Mapping) else {}
    if not isinstance(state, Mapping):
        state = {}
    if is_swin_od_state_dict(state):
        raise _unconverted_error(path)
    model_state = model.state_dict()
    config = f' ({config_name})' if config_name else ''
    record = conversion_record(checkpoint)
    if record is not None:
        model_keys = set(model_state)
        unexpected = [k for k in state if k not in model_keys]
        missing = [k for k in float_weight_keys(model) if k not in state]
        reshaped = [
            k for k in state if k in model_keys and hasattr(state[k], 'shape')
            and tuple(state[k].shape) != tuple(model_state[k].shape)
        ]
        if unexpected or missing or reshaped:
            found = checkpoint_model_name(checkpoint, path)
            which = f'{found[0]!r} ({found[1]})' if found else 'a detector that does not say which'
            problems = [
                f'{text}: {_examples(keys)}' for text, keys in (
                    ('keys that map to nothing in the model', unexpected),
                    ('float weights of the model it lacks', missing),
                    ('weights of another shape', reshaped),
                ) if keys
            ]
            raise ValueError(f'checkpoint {path} is {which}, converted from the {LAYOUT} layout, '
                             f'and does not fit this config\'s {type(model).__name__}{config}: '
                             f'{"; ".join(problems)}; pass the release of this detector')
        return
    swin_model = any(MMDET_SWIN_KEY.match(k) for k in model_state)
    if not swin_model or any(MMDET_SWIN_KEY.match(str(k)) for k in state):
        return
    keys = [str(k) for k in state]
    backbone = [k for k in keys if k.startswith('backbone.')]
    raise ValueError(
        f'checkpoint {path} is in neither layout that {type(model).__name__}{config} loads: '
        f'its {len(backbone or keys)} {"backbone keys" if backbone else "keys"} (e.g. '
        f'{", ".join((backbone or keys)[:3])}) are not mmdet 3.x\'s Swin keys '
        f'({MMDET_SWIN_KEYS}) nor {LAYOUT}\'s ({EXPECTED_KEYS})')


def check_calibrated_checkpoint(model: nn.Module, checkpoint: Mapping, path: str,
                                current: Mapping[str, Any]) -> None:
    """Raise unless the calibrated ``checkpoint`` (loaded from ``path``, already
    in ``model``) was calibrated for ``current``, the model's setting (see
    :meth:`PTQLoop.setting`).

    Each quantizer's own settings (kind, bits, granularity) were checked as it
    loaded. Here: the checkpoint quantizes exactly the model's layers (no
    neck/head quantizers missing or left over from another scope), and the
    MixA-Q setting recorded in its ``meta`` agrees on :data:`STRICT_SETTINGS`.
    Other :data:`POLICY_SETTINGS` than at calibration are logged.
    """
    state = checkpoint.get('state_dict', checkpoint)
    recorded = _recorded_setting(checkpoint)
    prefixes = _quantizer_prefixes(model)
    saved = {k[:-len('calibrated')] for k in state if k.endswith('.calibrated')}
    extra = sorted(saved - set(prefixes))
    absent = [p for p in prefixes if p not in saved]
    if extra or absent:
        example = (f'{len(extra)} quantizers the model does not have (e.g. '
                   f'{extra[0][:-1]})'
                   if extra else f'no state for {len(absent)} of the model\'s quantizers (e.g. '
                   f'{absent[0][:-1]})')
        scope = '' if recorded is None else \
            f" (calibrated with quant_scope={recorded.get('quant_scope')!r})"
        raise ValueError(
            f'calibrated checkpoint {path}{scope} does not fit the model '
            f'(quant_scope={quant_scope(model)!r}): it has {example}; evaluate it with '
            'the config it was calibrated with, or recalibrate from the FP checkpoint')
    if recorded is None:
        print_log(
            f'PTQ: {path} records no MixA-Q setting in its meta: the quantizers\' '
            'bits were checked, the ratios and window policy cannot be',
            logger='current',
            level=logging.WARNING)
        return
    diff = [
        f'{k}: checkpoint {recorded.get(k)!r}, config {current[k]!r}' for k in STRICT_SETTINGS
        if recorded.get(k) != current[k]
    ]
    if diff:
        raise ValueError(f'calibrated checkpoint {path} was calibrated for another '
                         f'setting ({"; ".join(diff)}); evaluate it with the config it '
                         'was calibrated with, or recalibrate from the FP checkpoint')
    for key in POLICY_SETTINGS:
        if recorded.get(key) != current[key]:
            print_log(
                f'PTQ: {key}={current[key]!r} differs from the checkpoint\'s '
                f'({recorded.get(key)!r})',
                logger='current',
                level=logging.WARNING)


def _recorded_setting(checkpoint: Mapping) -> Optional[Dict[str, Any]]:
    meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
    recorded = meta.get(META_KEY) if isinstance(meta, Mapping) else None
    if not isinstance(recorded, Mapping):
        return None
    return dict(recorded, reparam_range=recorded_reparam_range(recorded))


def recorded_reparam_range(recorded: Mapping[str, Any]) -> Optional[str]:
    """The ``reparam_range`` a recorded MixA-Q setting was calibrated with: None
    without reparameterization; 'with_zero' where a reparameterized checkpoint
    does not say (written before the setting existed, when it was the only one)."""
    if not recorded.get('reparam'):
        return None
    return recorded.get('reparam_range', 'with_zero')


#: Where a checkpoint names the experiment that wrote it: mmdet 2.x's
#: ``tools/train.py`` (``exp_name``, the config file) and mmengine's runner
#: (``experiment_name``, the config name and a timestamp).
EXPERIMENT_META_KEYS = ('exp_name', 'experiment_name')
#: File name of an official OpenMMLab release: ``<config>_<date>_<time>-<hash>.pth``.
RELEASE_FILE = re.compile(r'^(?P<name>.+)_\d{8}_\d{6}-[0-9a-f]{8}\.pth$')
#: What mmengine appends to a config name (``_<date>_<time>``), normalized.
TIMESTAMP_SUFFIX = re.compile(r'^-\d{8}-\d+$')


def normalize_model_name(name: str) -> str:
    """``name`` in one spelling: mmdet 2.x's ``mask_rcnn_..._coco.py`` and 3.x's
    ``mask-rcnn_..._coco`` compare equal."""
    name = osp.basename(name).lower()
    for ext in ('.py', '.pth'):
        if name.endswith(ext):
            name = name[:-len(ext)]
    return name.replace('_', '-')


def checkpoint_model_name(checkpoint: Mapping, path: str) -> Optional[Tuple[str, str]]:
    """The model a checkpoint says it is and where it says so (a meta key or
    the release file name), or None if it does not say."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
    if isinstance(meta, Mapping):
        for key in EXPERIMENT_META_KEYS:
            if isinstance(meta.get(key), str) and meta[key]:
                return meta[key], f"meta['{key}']"
    record = conversion_record(checkpoint)
    files = [(str(path), 'its file name')]
    if record is not None:
        files.append((str(record.get('source', '')), 'the name of the file it was converted from'))
    for file, source in files:
        base = osp.basename(file.split('?')[0])
        match = RELEASE_FILE.match(base)
        if match:
            return match.group('name'), source
        release = swin_od_release(base)  # Swin-Transformer-Object-Detection's
        if release is not None and base == release.file_name:
            return release.name, source
    return None


def _is_model(name: str, base_model: str) -> bool:
    """Whether the experiment ``name`` is ``base_model``, or its run with
    mmengine's timestamp."""
    own, base = normalize_model_name(name), normalize_model_name(base_model)
    return own == base or (own.startswith(base)
                           and TIMESTAMP_SUFFIX.match(own[len(base):]) is not None)


def check_base_model(checkpoint: Mapping, path: str,
                     expected: Union[None, str, Sequence[str]]) -> Optional[str]:
    """Raise if the FP ``checkpoint`` says it is another model than the
    config's ``base_model`` (e.g. the 1x Swin-T Mask R-CNN under a config of
    the 3x one: same keys and shapes, 3.3 box AP less); warn if it does not
    say. ``expected`` None: the config names no base model, nothing checked.

    An experiment name matches a base model if it is the name followed by
    mmengine's timestamp (``<config>_<date>_<time>``), and nothing else: the
    release ``mask_rcnn_swin_tiny_patch4_window7`` must not match
    ``mask_rcnn_swin_tiny_patch4_window7_1x``. Returns the name the
    checkpoint gives (None if it gives none or nothing was checked).
    """
    if expected is None:
        return None
    names = [expected] if isinstance(expected, str) else list(expected)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f'base_model must be a model name or a list of names, got '
                         f'{expected!r}')
    found = checkpoint_model_name(checkpoint, path)
    if found is None:
        print_log(
            f'{path} does not say which model it is (no '
            f'{" / ".join(EXPERIMENT_META_KEYS)} in its meta, not a release file '
            f'name): cannot check that it is the config\'s base model {names[0]}',
            logger='current',
            level=logging.WARNING)
        return None
    name, source = found
    if not any(_is_model(name, n) for n in names):
        raise ValueError(
            f'checkpoint {path} is {name!r} ({source}), but this config quantizes '
            f'{" or ".join(repr(n) for n in names)} (base_model): its numbers would not be '
            'comparable; pass the checkpoint of that model, or set base_model=None in '
            'the config to quantize another one')
    return name


def remote_init_checkpoints(model: nn.Module) -> List[Tuple[str, str]]:
    """(module, checkpoint) of every ``init_cfg=dict(type='Pretrained', ...)`` of
    ``model`` that points at a URL (``http://``, ``open-mmlab://``, ...)."""
    found = []
    for name, module in model.named_modules():
        init_cfg = getattr(module, 'init_cfg', None)
        for cfg in init_cfg if isinstance(init_cfg, list) else [init_cfg]:
            if isinstance(cfg, Mapping) and cfg.get('type') == 'Pretrained' \
                    and '://' in str(cfg.get('checkpoint', '')):
                found.append((name or type(model).__name__, str(cfg['checkpoint'])))
    return found


def check_no_download(model: nn.Module, load_from: Optional[str], resume: bool) -> None:
    """Raise if a run that loads a whole detector (``load_from`` or ``resume``)
    would first download initial weights: mmengine's ``Runner.train`` runs
    ``init_weights`` before loading, so the download fails without internet
    and is thrown away with it."""
    if not load_from and not resume:
        return
    remote = remote_init_checkpoints(model)
    if remote:
        name, url = remote[0]
        source = f'load_from={load_from}' if load_from else 'resume'
        raise ValueError(
            f'{name}.init_cfg would download {url} before {source} replaces those weights '
            f'({len(remote)} module(s) with a remote Pretrained init_cfg): set '
            f'model.{name}.init_cfg=None in the config (the MixA-Q COCO configs do)')


__all__ = [
    'MIXAQ_ONLY_KEYS', 'META_KEY', 'STRICT_SETTINGS', 'POLICY_SETTINGS', 'MMDET_SWIN_KEY',
    'float_weight_keys', 'check_float_checkpoint', 'check_checkpoint_layout',
    'check_calibrated_checkpoint', 'recorded_reparam_range', 'check_base_model',
    'checkpoint_model_name', 'normalize_model_name', 'remote_init_checkpoints', 'check_no_download'
]
