"""mmengine's ``AmpOptimWrapper`` on CPU: bf16 autocast, the tested stand-in of
fp16 training on GPU.

mmengine's wrapper refuses to be built without an accelerator. This one is that
wrapper with torch's CPU ``GradScaler``: the same ``backward``, ``step`` and
``state_dict`` (inherited), so the loss-scaling path a config takes with
``AmpOptimWrapper`` on GPU runs on CPU with
``optim_wrapper.type='CPUAmpOptimWrapper'``. One difference: mmcv's CPU
kernels (NMS, RoIAlign) take float32 only, so by default autocast covers the
backbone, where every quantizer is, and the neck and heads run in float32.
"""
import contextlib
from typing import Iterator, Optional, Union

import torch
from mmdet.registry import OPTIM_WRAPPERS
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from torch import nn

from .model_wrappers import unwrap


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(AmpOptimWrapper):
    """``AmpOptimWrapper`` for CPU training under bf16 autocast.

    Args:
        loss_scale: ``None`` (default): no loss scaling, as bf16 has float32's
            exponent range; ``'dynamic'``, a float (initial scale) or a dict of
            ``torch.amp.GradScaler`` arguments: a CPU grad scaler, which skips
            the step of an iteration with inf/NaN gradients as on GPU.
        dtype: the autocast dtype; CPU autocast takes bfloat16 only.
        autocast_scope: Dotted name of the submodule autocast applies to (its
            floating outputs are returned in float32), or None for the whole
            model, as mmengine's wrapper does on GPU.
        **kwargs: as :class:`mmengine.optim.OptimWrapper`.
    """

    def __init__(self,
                 loss_scale: Union[None, str, float, dict] = None,
                 dtype: Union[str, torch.dtype] = 'bfloat16',
                 autocast_scope: Optional[str] = 'backbone',
                 **kwargs) -> None:
        # AmpOptimWrapper.__init__ asserts an accelerator; its other methods
        # need only what is set here.
        OptimWrapper.__init__(self, **kwargs)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if dtype != torch.bfloat16:
            raise ValueError(f'CPUAmpOptimWrapper: dtype must be bfloat16 (CPU autocast), '
                             f'got {dtype!r}')
        self.cast_dtype = dtype
        self.autocast_scope = autocast_scope
        self._scale_update_param: Optional[float] = None
        enabled = loss_scale is not None
        if loss_scale is None or loss_scale == 'dynamic':
            args = {}
        elif isinstance(loss_scale, (int, float)) and not isinstance(loss_scale, bool):
            self._scale_update_param = float(loss_scale)
            args = dict(init_scale=float(loss_scale))
        elif isinstance(loss_scale, dict):
            args = dict(loss_scale)
        else:
            raise TypeError("CPUAmpOptimWrapper: loss_scale must be None, 'dynamic', a float "
                            f'or a dict of GradScaler arguments, got {loss_scale!r}')
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=enabled, **args)

    @contextlib.contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        """mmengine's gradient-accumulation context, with bf16 autocast inside
        :attr:`autocast_scope`."""
        with OptimWrapper.optim_context(self, model):
            if self.autocast_scope is None:
                with torch.autocast('cpu', dtype=self.cast_dtype):
                    yield
                return
            scope = self._scope_module(model)
            autocast = torch.autocast('cpu', dtype=self.cast_dtype)

            def enter(module: nn.Module, args: tuple) -> None:
                autocast.__enter__()

            def leave(module: nn.Module, args: tuple, output):
                autocast.__exit__(None, None, None)
                return _to_float32(output)

            handles = (scope.register_forward_pre_hook(enter),
                       scope.register_forward_hook(leave, always_call=True))
            try:
                yield
            finally:
                for handle in handles:
                    handle.remove()

    def _scope_module(self, model: nn.Module) -> nn.Module:
        module = unwrap(model)
        try:
            return module.get_submodule(self.autocast_scope)
        except AttributeError:
            children = ', '.join(name for name, _ in module.named_children())
            raise ValueError(f'CPUAmpOptimWrapper: autocast_scope={self.autocast_scope!r} is '
                             f'not a submodule of {type(module).__name__} (its children: '
                             f'{children}); give a dotted submodule name or None') from None


def _to_float32(output):
    """Floating tensors of a module's output (a tensor or nested tuples/lists
    of them) in float32."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, (tuple, list)):
        return type(output)(_to_float32(o) for o in output)
    return output
