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


def epoch_options(cfg: Config, epochs: int) -> Options:
    """Options training ``cfg`` for ``epochs`` epochs: the loop's length and
    validation interval, and the end of every epoch-based LR schedule that
    ended with the training (a cosine over the whole run stays one)."""
    end = cfg.train_cfg.get('max_epochs')
    if end is None:
        raise ValueError(f'{cfg.filename}: train_cfg has no max_epochs; an epoch count cannot '
                         'be set on an iteration-based training')
    options = [('train_cfg.max_epochs', epochs), ('train_cfg.val_interval', epochs)]
    schedulers = cfg.get('param_scheduler') or []
    single = isinstance(schedulers, dict)
    for index, scheduler in enumerate([schedulers] if single else schedulers):
        if scheduler.get('by_epoch', True) and scheduler.get('end') == end:
            key = 'param_scheduler' if single else f'param_scheduler.{index}'
            options.append((f'{key}.end', epochs))
    return tuple(options)


def calibration_size_options(cfg: Config, images: int) -> Options:
    """Options calibrating ``cfg``'s quantizers on ``images`` images: its
    PTQ loop's and every QAT initialization hook's."""
    options = []
    if cfg.get('test_cfg', {}).get('type') == 'PTQLoop':
        options.append(('test_cfg.calib_images', images))
    options += [(f'custom_hooks.{i}.calib_images', images)
                for i, hook in enumerate(cfg.get('custom_hooks', []))
                if hook.get('type') == 'QATInitHook']
    return tuple(options)


def quick_options(max_epochs: Optional[int] = None,
                  qat_epochs: Optional[int] = None,
                  calib_images: Optional[int] = None,
                  overrides: Optional[Dict[str, Any]] = None) -> ConfigOptions:
    """Options of every config of a quick run: the float and the quantized
    (``QuantizedDetector``) models' epochs, the calibration size, then
    ``overrides`` (``--cfg-options``)."""

    def options(cfg: Config) -> Options:
        out: Tuple[Tuple[str, Any], ...] = ()
        quantized = cfg.model.get('type') == 'QuantizedDetector'
        epochs = qat_epochs if quantized else max_epochs
        if epochs is not None:
            out += epoch_options(cfg, epochs)
        if calib_images is not None:
            out += calibration_size_options(cfg, calib_images)
        return out + tuple((overrides or {}).items())

    return options
