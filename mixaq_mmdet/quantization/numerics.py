"""Fake-quantization numerics: the autograd functions every quantizer computes with.

Kept apart from the quantizers (state, calibration, switches) as torchao keeps
its numerics apart from its modules: a function here takes tensors and integer
ranges and knows nothing of observers or checkpoints.
"""
import math
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from .observers import pow2_exact


class LogSqrt2(torch.autograd.Function):
    """Log-sqrt(2) quantization of values in [0, 1], straight-through gradient.

    ``k = round(-2 log2 x)`` is the number of rounding boundaries
    ``2^(-(j + 1/2) / 2)``, ``j = 0 .. 2^bits - 1``, that are ``>= x``: one
    ``searchsorted`` in the input's dtype instead of a float64 logarithm. The
    output is the level ``2^(-k/2)``, or 0 for ``k = 2^bits`` (below the range).
    ``boundaries`` (ascending) and ``levels`` come from :func:`log_sqrt2_tables`.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, boundaries: Tensor, levels: Tensor) -> Tensor:
        k = len(boundaries) - torch.searchsorted(boundaries, x.contiguous())
        return levels[k]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None, None]:
        return grad, None, None


def log_sqrt2_tables(bits: int) -> Tuple[Tensor, Tensor]:
    """Ascending rounding boundaries and the levels ``2^(-k/2)`` plus a final 0,
    in float64 (cast to the input's dtype where used)."""
    n = 2**bits
    j = torch.arange(n, dtype=torch.float64)
    boundaries = torch.pow(2.0, -(j + 0.5) / 2).flip(0)
    odd = torch.remainder(j, 2) == 1
    sqrt2 = torch.where(odd, torch.full_like(j, math.sqrt(2.0)), torch.ones_like(j))
    levels = torch.cat(
        [pow2_exact(-torch.ceil(j / 2)) * sqrt2,
         torch.zeros(1, dtype=torch.float64)])
    return boundaries, levels


def uniform_step_function(scale: Tensor, zero_point: Tensor, quant_min: int,
                          quant_max: int) -> Tuple[Tensor, Tensor]:
    """Rounding boundaries ``(K, C, M)`` and levels ``(K, C, M + 1)`` of uniform
    fake quantization with each of ``K x C`` qparams ``(scale, zero_point)``, as
    :meth:`~.observers.RangeStatistics.step_mse` takes them; float64."""
    scale, zero_point = scale.double().unsqueeze(-1), zero_point.double().unsqueeze(-1)
    k = torch.arange(quant_min, quant_max + 1, dtype=torch.float64, device=scale.device)
    levels = (k - zero_point) * scale
    boundaries = (k[:-1] + 0.5 - zero_point) * scale
    return boundaries, levels


def fake_quantize_no_grad(x: Tensor, inv_scale: Tensor, scale: Tensor, low: Tensor,
                          high: Tensor) -> Tensor:
    """Bit for bit the values of torch's ``fake_quantize_per_{tensor,channel}_affine``
    (``x * (1 / scale)`` rounded half to even, shifted by the zero point, clamped,
    shifted back, times ``scale``: ``low``/``high`` are the integer range minus
    the zero point), without the gradient mask those kernels compute, in four
    vectorized passes; float32 arithmetic, the result in ``x``'s dtype."""
    y = torch.mul(x, inv_scale).round_().clamp_(low, high).mul_(scale)
    return y if y.dtype == x.dtype else y.to(x.dtype)


class _LearnableFakeQuantize(torch.autograd.Function):
    """Uniform affine fake quantization with gradients to the input, the scale
    and the zero point, in one function: a few vectorized passes each way
    instead of a graph of a dozen element-wise nodes (see :func:`fake_quantize`)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                quant_max: int, ch_axis: Optional[int], grad_factor: float) -> Tensor:
        shape = [1] * x.dim()
        if ch_axis is not None:
            shape[ch_axis] = -1
        s = scale.detach().float().reshape(shape)
        z = zero_point.detach().float().reshape(shape).round().clamp(quant_min, quant_max)
        low, high = quant_min - z, quant_max - z
        t = torch.mul(x, torch.reciprocal(s))
        r = torch.round(t)
        q = torch.clamp(r, low, high)
        inside = q == r
        # d(output)/d(scale) per element: round(t) - t inside the range, the
        # clamped integer outside it (LSQ)
        dscale = torch.where(inside, r.sub_(t), q)
        ctx.save_for_backward(inside, dscale, s)
        ctx.reduce_dims = [d for d in range(x.dim()) if d != ch_axis]
        ctx.grad_factor = grad_factor
        ctx.param_shapes = (scale.shape, zero_point.shape)
        y = q.mul_(s)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        inside, dscale, s = ctx.saved_tensors
        dims, factor = ctx.reduce_dims, ctx.grad_factor
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_scale = grad_zero_point = None
        if ctx.needs_input_grad[1]:
            grad_scale = (grad * dscale).sum(dims).mul_(factor).reshape(ctx.param_shapes[0])
        if ctx.needs_input_grad[2]:
            outside = grad.masked_fill(inside, 0).sum(dims, keepdim=True)
            grad_zero_point = outside.mul_(s).mul_(-factor).reshape(ctx.param_shapes[1])
        return grad_x, grad_scale, grad_zero_point, None, None, None, None


def fake_quantize(x: Tensor,
                  scale: Tensor,
                  zero_point: Tensor,
                  quant_min: int,
                  quant_max: int,
                  ch_axis: Optional[int] = None,
                  grad_factor: float = 1.0) -> Tensor:
    """Differentiable uniform affine fake quantization (LSQ / LSQ+).

    Values and gradients of torch's learnable fake-quant ops
    (``_fake_quantize_learnable_per_{tensor,channel}_affine``; ``ch_axis=None``:
    per tensor): the zero point is rounded and clamped to the integer range in
    the forward; the input gets a straight-through gradient inside the range
    and 0 outside; the scale gets ``round(x / s) - x / s`` inside and the
    clamped integer outside; the zero point ``-s`` from clamped inputs only;
    scale and zero-point gradients are multiplied by ``grad_factor``. The values
    are bit for bit those of :func:`fake_quantize_no_grad` (torch's
    ``fake_quantize_per_*_affine``); float32 arithmetic, the result in ``x``'s
    dtype.
    """
    if ch_axis is not None and not -x.dim() <= ch_axis < x.dim():
        raise ValueError(f'ch_axis={ch_axis} is out of range for an input of shape '
                         f'{tuple(x.shape)}')
    return _LearnableFakeQuantize.apply(x, scale, zero_point, quant_min, quant_max,
                                        None if ch_axis is None else ch_axis % x.dim(), grad_factor)
