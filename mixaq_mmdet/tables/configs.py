"""A table's configs as its runs load them: the merged config, and the
``--cfg-options`` that give a tool the same config from the command line."""
import copy
import os.path as osp
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from mmengine.config import Config

from ..utils import load_runner_config
from .rows import Options

#: Options a runner adds to every config it loads (a quick run's epochs, ...).
ConfigOptions = Callable[[Config], Options]


def _strings(node: Any, prefix: str) -> Iterator[Tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f'{prefix}.{key}' if prefix else str(key))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _strings(value, f'{prefix}.{index}')
    elif isinstance(node, str):
        yield prefix, node


def relocation_options(cfg: Config, data_root: str) -> Options:
    """Options moving every path under ``cfg``'s ``data_root`` (dataloaders,
    calibration and search sets, evaluators' annotation files) to
    ``data_root``; none if it is the config's own."""
    old = cfg.get('data_root')
    if old is None:
        raise ValueError(f'{cfg.filename} has no data_root: a table cannot move its data')
    new = data_root.rstrip('/') + '/'
    if osp.normpath(old) == osp.normpath(new):
        return ()
    return tuple((key, new + value[len(old):]) for key, value in _strings(cfg.to_dict(), '')
                 if value.startswith(old) and key != 'data_root')


def format_option(key: str, value: Any) -> str:
    """``key=value`` as mmengine's ``DictAction`` parses it back."""
    if isinstance(value, (list, tuple)):
        text = '[' + ','.join(str(v) for v in value) + ']'
    else:
        text = str(value)
    return f'{key}={text}'


class TableConfig:
    """``config`` of a table loaded for ``work_dir`` with ``options``: ``cfg``
    is what an in-process run uses, :meth:`cli_options` what a launched tool
    is given to load the same."""

    def __init__(self,
                 path: str,
                 work_dir: str,
                 data_root: str,
                 options: Options = (),
                 extra: Optional[ConfigOptions] = None) -> None:
        if not osp.isfile(path):
            raise FileNotFoundError(f'table config {path} does not exist')
        plain = Config.fromfile(path)
        merged: Dict[str, Any] = dict(relocation_options(plain, data_root))
        if extra is not None:
            merged.update(extra(plain))
        merged.update(options)
        self.path, self.work_dir, self.options = path, work_dir, tuple(merged.items())
        self.cfg = load_runner_config(path, work_dir, dict(self.options))

    def with_options(self, options: Options) -> 'TableConfig':
        """The same config with more ``options``."""
        new = copy.copy(self)
        new.options = tuple(dict(self.options + tuple(options)).items())
        new.cfg = load_runner_config(self.path, self.work_dir, dict(new.options))
        return new

    def cli_options(self) -> List[str]:
        return [format_option(k, v) for k, v in self.options]
