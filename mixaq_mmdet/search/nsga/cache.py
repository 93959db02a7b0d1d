"""The search's resume cache: every evaluation, in a JSON file written
atomically after every generation, refused when another search wrote it."""
import json
import math
import os
import tempfile
from typing import Any, Dict, Sequence

from .result import Evaluation

CACHE_FORMAT = 'mixaq_mmdet.search.nsga/1'


def _write_json_atomically(path: str, content: Dict[str, Any]) -> None:
    """Write ``content`` to a temporary file beside ``path``, then rename it
    over ``path``, so a crash never leaves a half-written cache."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(
        dir=directory, prefix=os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(handle, 'w') as tmp:
            json.dump(content, tmp, indent=1, allow_nan=False)
            tmp.write('\n')
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def read_cache(path: str, space_dict: Dict[str, Any], settings: Dict[str, Any]) -> Dict[str, Any]:
    """The evaluations of the cache at ``path``, after checking it was written
    by the same search."""
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f'cannot read the search cache {path}: {error}; delete '
                         'it or use another cache_path') from None
    if not isinstance(cache, dict) or cache.get('format') != CACHE_FORMAT:
        raise ValueError(f'{path} is not a ratio search cache (format '
                         f'{CACHE_FORMAT!r}); delete it or use another '
                         'cache_path')
    differences = []
    if cache.get('space') != space_dict:
        differences.append(f'space: cached {cache.get("space")}, '
                           f'now {space_dict}')
    cached_settings = cache.get('settings') or {}
    for name, value in settings.items():
        if cached_settings.get(name) != value:
            differences.append(f'{name}: cached {cached_settings.get(name)!r}, '
                               f'now {value!r}')
    if differences:
        raise ValueError(f'the search cache {path} was written by a different '
                         f'search ({"; ".join(differences)}); delete it or use '
                         'another cache_path')
    return cache.get('evaluations') or {}


def write_cache(path: str, space_dict: Dict[str, Any], settings: Dict[str, Any],
                evaluations: Sequence[Evaluation]) -> None:
    """Write ``evaluations`` (nan accuracy as null) with what identifies the
    search, for :func:`read_cache`."""
    _write_json_atomically(
        path, {
            'format': CACHE_FORMAT,
            'space': space_dict,
            'settings': settings,
            'evaluations': {
                e.candidate.key(): [e.accuracy if math.isfinite(e.accuracy) else None, e.cost]
                for e in evaluations
            },
        })


__all__ = ['CACHE_FORMAT', 'read_cache', 'write_cache']
