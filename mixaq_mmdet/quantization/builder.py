"""Building a quantizer from its config: the one place a config's ``type`` is resolved."""
from typing import Any, Mapping, Optional, Union

from ..registry import QUANTIZERS
from .base import QuantizerBase

#: What a layer or block takes for a quantizer: a config dict or a built one.
QuantizerCfg = Union[Mapping[str, Any], QuantizerBase]


def build_quantizer(cfg: QuantizerCfg,
                    default_args: Optional[Mapping[str, Any]] = None) -> QuantizerBase:
    """Build a quantizer from a config (``type`` plus arguments) or return a built one.

    ``default_args`` fill the arguments that ``cfg`` does not set (as in mmengine).
    """
    if isinstance(cfg, QuantizerBase):
        return cfg
    if not isinstance(cfg, Mapping) or 'type' not in cfg:
        raise TypeError('a quantizer must be a QuantizerBase or a config dict with a '
                        f"'type' key, got {cfg!r}")
    args = dict(default_args or {})
    args.update(cfg)
    args.pop('_scope_', None)
    qtype = args.pop('type')
    cls = qtype
    if isinstance(qtype, str):
        try:
            cls = QUANTIZERS.get(qtype)
        except RuntimeError:
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, QuantizerBase)):
        raise KeyError(f'unknown quantizer type {qtype!r}; registered types: '
                       f'{", ".join(sorted(QUANTIZERS.module_dict))}')
    return cls(**args)
