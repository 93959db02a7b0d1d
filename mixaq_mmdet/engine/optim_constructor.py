"""Optimizer parameter groups for QAT: quantizer parameters without weight decay."""
from typing import List, Optional, Union

from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from mixaq_mmdet.quantization import QuantizerBase


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class QATOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor, with the learnable parameters of every
    quantizer (LSQ step sizes and zero points) in groups of their own.

    Weight decay would pull step sizes towards 0 and zero points towards the
    middle of the range whatever the task loss says, so by default they get
    none. Every other parameter follows ``paramwise_cfg`` as usual.

    ``paramwise_cfg`` takes two more keys:
        quantizer_decay_mult (float): weight decay multiplier of quantizer
            parameters. Default 0.
        quantizer_lr_mult (float): learning rate multiplier. Default 1.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        for key, default in (('quantizer_decay_mult', 0.0), ('quantizer_lr_mult', 1.0)):
            value = paramwise_cfg.setdefault(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f'paramwise_cfg.{key} must be a non-negative number, '
                                 f'got {value!r}')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self,
                   params: List[dict],
                   module: nn.Module,
                   prefix: str = '',
                   is_dcn_module: Optional[Union[int, float]] = None) -> None:
        if not isinstance(module, QuantizerBase):
            super().add_params(params, module, prefix, is_dcn_module)
            return
        for param in module.parameters():
            group = dict(params=[param], lr=self.base_lr * self.paramwise_cfg['quantizer_lr_mult'])
            if self.base_wd is not None:
                group['weight_decay'] = self.base_wd * self.paramwise_cfg['quantizer_decay_mult']
            params.append(group)


__all__ = ['QATOptimWrapperConstructor']
