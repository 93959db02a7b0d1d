"""Which file a run loads for its ``load_from``: the file itself, or for a
checkpoint in Swin-Transformer-Object-Detection's layout (the PTQ papers' FP
detectors, :mod:`mixaq_mmdet.utils.swin_od_checkpoint`) its mmdet 3.x
conversion, written once and reused.

Every load point calls :func:`checkpoint_to_load` (``MixAQRunner.load_checkpoint``,
which also serves ``QATInitHook.after_load_checkpoint``, and
``PTQLoop.check_checkpoint``), so all of them see the same converted file,
whether ``load_from`` is a path or a URL (``tools/test.py CONFIG URL``).
"""
import hashlib
import os
import os.path as osp
import zipfile
from typing import Any, Dict, Optional, Tuple

import torch
from mmengine.logging import print_log
from mmengine.runner import CheckpointLoader

from mixaq_mmdet.compat import checkpoint_types_allowed
from mixaq_mmdet.utils.swin_od_checkpoint import (CONVERSION_META_KEY, LAYOUT,
                                                  convert_swin_od_checkpoint, is_swin_od_checkpoint)

#: Inserted before the hash in a converted file's name.
CONVERTED_TAG = 'mmdet3'
#: What this process resolved: source key -> the file to load.
_RESOLVED: Dict[Tuple, str] = {}


def default_cache_dir() -> str:
    """mmengine's download cache, ``<torch hub dir>/checkpoints`` (``$TORCH_HOME``):
    where a URL's file lands, and its conversion next to it."""
    return osp.join(torch.hub.get_dir(), 'checkpoints')


def _is_url(filename: str) -> bool:
    return '://' in filename


def _source_key(filename: str) -> Tuple:
    """The URL, or a local file's real path, size and modification time: a
    changed file gets a new conversion."""
    if _is_url(filename):
        return (filename, )
    path = osp.realpath(osp.expanduser(filename))
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint file {filename} can not be found')
    stat = os.stat(path)
    return (path, stat.st_size, stat.st_mtime_ns)


def converted_path(filename: str, cache_dir: Optional[str] = None) -> str:
    """Where the conversion of ``filename`` (a path or URL) is written:
    ``<cache_dir>/<name>_mmdet3-<hash of the source key>.pth``."""
    key = _source_key(filename)
    stem = osp.splitext(osp.basename(filename.split('?')[0]))[0] or 'checkpoint'
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:8]
    return osp.join(cache_dir or default_cache_dir(), f'{stem}_{CONVERTED_TAG}-{digest}.pth')


def _load(filename: str) -> Any:
    """The checkpoint of ``filename``; a local zip-format file memory-mapped,
    so that looking at its keys reads no weights."""
    with checkpoint_types_allowed():
        path = osp.expanduser(filename)
        if not _is_url(filename) and zipfile.is_zipfile(path):
            return torch.load(path, map_location='cpu', mmap=True)
        return CheckpointLoader.load_checkpoint(filename, map_location='cpu')


def checkpoint_to_load(filename: str, cache_dir: Optional[str] = None) -> str:
    """The file to load for ``filename`` (``load_from``: a path or URL).

    A checkpoint in Swin-Transformer-Object-Detection's layout is converted
    (:func:`~mixaq_mmdet.utils.swin_od_checkpoint.convert_swin_od_checkpoint`)
    into :func:`converted_path` the first time, and that file is returned from
    then on without reading the source again; any other checkpoint is returned
    as it is (looked at once per process).

    Raises:
        ValueError: a checkpoint in that layout with keys that map to nothing.
    """
    key = _source_key(filename)
    known = _RESOLVED.get(key + (cache_dir, ))
    if known is not None and osp.isfile(known):
        return known
    target = converted_path(filename, cache_dir)
    if not osp.isfile(target):
        checkpoint = _load(filename)
        if not is_swin_od_checkpoint(checkpoint):
            _RESOLVED[key + (cache_dir, )] = filename
            return filename
        converted = convert_swin_od_checkpoint(checkpoint, filename)
        os.makedirs(osp.dirname(target), exist_ok=True)
        partial = f'{target}.{os.getpid()}.part'
        torch.save(converted, partial)
        os.replace(partial, target)  # atomic: ranks converting at once write whole files
        print_log(
            f'{filename} is in the {LAYOUT} layout: converted to mmdet 3.x keys in {target} '
            f"(meta['{CONVERSION_META_KEY}'] records the source), reused from now on",
            logger='current')
    _RESOLVED[key + (cache_dir, )] = target
    return target


__all__ = ['CONVERTED_TAG', 'default_cache_dir', 'converted_path', 'checkpoint_to_load']
