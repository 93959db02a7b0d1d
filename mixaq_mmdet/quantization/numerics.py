"""Fake-quantization numerics: the autograd functions every quantizer computes with.

Kept apart from the quantizers (state, calibration, switches) as torchao keeps
its numerics apart from its modules: a function here takes tensors and integer
ranges and knows nothing of observers or checkpoints.
"""
import contextlib
import contextvars
import math
import warnings
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .observers import pow2_exact
from .recompute import register_recomputable

FusedKernels = Union[bool, str]
#: How fake quantization computes: ``True``, kernels fused and compiled by
#: inductor (an error where they cannot compile); ``False``, eager torch ops
#: (the same numbers, several passes over an activation instead of one each
#: way); ``'auto'``, fused, falling back to eager with one warning that names
#: the compiler's error.
FUSED_KERNEL_MODES: Tuple[FusedKernels, ...] = (True, False, 'auto')
_MODE: contextvars.ContextVar = contextvars.ContextVar('mixaq_fused_kernels', default='auto')
_COMPILED: Dict[Callable, Callable] = {}
#: Why 'auto' runs eagerly in this process: the first compilation error, or None.
_FALLBACK: Dict[str, str] = {}


def check_fused_kernels(mode: Any, name: str = 'fused_kernels') -> FusedKernels:
    """``mode`` if it is one of :data:`FUSED_KERNEL_MODES`, else a ValueError."""
    if not any(mode is m or (isinstance(m, str) and mode == m) for m in FUSED_KERNEL_MODES):
        raise ValueError(f"{name} must be True, False or 'auto', got {mode!r}")
    return mode


@contextlib.contextmanager
def fused_kernels(mode: FusedKernels) -> Iterator[None]:
    """Compute fake quantization within the block as ``mode`` says (see
    :data:`FUSED_KERNEL_MODES`); a quantized backbone enters its config's
    ``fused_kernels`` around each forward. Backward passes and recomputations
    use the mode of the forward that recorded them."""
    token = _MODE.set(check_fused_kernels(mode))
    try:
        yield
    finally:
        _MODE.reset(token)


def fused_kernels_mode() -> FusedKernels:
    """The mode the next fake quantization computes in; within an enclosing
    ``torch.compile``, False (the eager formulas, which it fuses itself)."""
    if torch.compiler.is_compiling():
        return False
    return _MODE.get()


def fused_kernels_fallback() -> Optional[str]:
    """The compilation error that made 'auto' fall back to eager in this
    process, or None while the fused kernels compile."""
    return _FALLBACK.get('error')


def run_kernel(fn: Callable,
               tensors: Sequence[Tensor],
               *args: Any,
               mode: Optional[FusedKernels] = None) -> Any:
    """``fn(*tensors, *args)``, compiled by inductor into fused loops where
    ``mode`` (default: :func:`fused_kernels_mode`) asks for it. Each tensor
    is passed contiguous and plain (no parameter, no gradient, no view of
    another tensor, on whose shapes dynamo would guard), so with the callers'
    canonical layouts one compilation per dtype serves every activation. Eager
    on devices inductor does not generate code for (``meta``) and inside an
    enclosing ``torch.compile`` (which fuses it anyway)."""
    mode = fused_kernels_mode() if mode is None else mode
    if (mode is False or torch.compiler.is_compiling() or (mode == 'auto' and _FALLBACK)
            or tensors[0].device.type not in ('cpu', 'cuda')):
        return fn(*tensors, *args)
    if fn not in _COMPILED:
        # dynamic_threads: every kernel gets a parallel loop, whatever the size
        # it was first compiled for (inductor would otherwise leave the loops of
        # a first, small activation serial for all later sizes)
        _COMPILED[fn] = torch.compile(fn, dynamic=True, options={'cpp.dynamic_threads': True})
    try:
        return _COMPILED[fn](*map(_plain, tensors), *args)
    except Exception as err:
        if mode is True:
            raise
        out = fn(*tensors, *args)  # an error of the inputs raises here too, as it would eagerly
        _fall_back(err)
        return out


def _describe(err: Exception) -> str:
    """The error's first line, and its root cause's where it wraps one (some
    torch releases say only "backend='inductor' raised:" on the first line)."""

    def first_line(e: BaseException) -> str:
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"

    root, seen = err, {id(err)}
    while True:
        inner = root.__cause__ or getattr(root, 'inner_exception', None)
        if not isinstance(inner, BaseException) or id(inner) in seen:
            break
        root = inner
        seen.add(id(root))
    return first_line(err) if root is err else f'{first_line(err)} {first_line(root)}'


def _fall_back(err: Exception) -> None:
    """Run 'auto' eagerly from now on, saying why once."""
    if _FALLBACK:
        return
    _FALLBACK['error'] = _describe(err)
    warnings.warn(
        'mixaq_mmdet: the fused fake-quantization kernels could not be compiled '
        f"({_FALLBACK['error']}); fused_kernels='auto' runs them eagerly from now on, with "
        "the same numbers (set model.backbone.fused_kernels=False to choose that, or True to "
        'make this an error)',
        RuntimeWarning,
        stacklevel=3)


def compile_kernels(device: str = 'cpu') -> None:
    """Compile every fused fake-quantization kernel now, on tiny float32
    inputs (forward, backward, the log-sqrt(2) tables with and without a top,
    and integer execution's codes), in the current mode: a process that forks
    workers afterwards (``make smoke-coco``, ``make demo``) hands them the
    compiled kernels instead of each compiling or loading them. Such a
    process keeps itself on one torch thread while it does (a child of a
    process that ran a GNU OpenMP parallel region hangs) and sets
    ``TORCHINDUCTOR_COMPILE_THREADS=1`` before inductor is imported (a child
    that compiles another kernel through the parent's pool of compile workers
    hangs); this function changes neither."""
    x = torch.rand(64, device=device)
    scale = torch.full((1, ), 0.1, device=device, requires_grad=True)
    zero_point = torch.full((1, ), 3.0, device=device, requires_grad=True)
    fake_quantize(x.requires_grad_(), scale, zero_point, 0, 15).sum().backward()
    for bits in (2, MAX_BIT_FIELD_BITS):  # without and with subnormal boundaries
        boundaries, levels = (t.float().to(device) for t in log_sqrt2_tables(bits))
        for top in (None, torch.ones(1, device=device)):
            log_sqrt2_values(x.detach(), boundaries, levels, top)
    from .codes import IntegerGrid, quantize_codes  # integer execution's codes
    quantize_codes(x.detach(), IntegerGrid.create(scale.detach(), 3, 0, 15))


def in_mode(mode: FusedKernels, compute: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """``compute`` run in ``mode`` (a recomputation outlives its forward's block)."""

    def run() -> Tensor:
        if torch.compiler.is_compiling():
            return compute()
        with fused_kernels(mode):
            return compute()

    return run


def _plain(t: Tensor) -> Tensor:
    t = t.contiguous()  # a copy where t is not (an expanded gradient, a transposed view)
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), t.shape, t.stride())


class LogSqrt2(torch.autograd.Function):
    """Log-sqrt(2) quantization of values in ``[0, top]`` (``top`` None: 1),
    straight-through gradient.

    ``k = round(-2 log2 (x / top))`` is the number of rounding boundaries
    ``2^(-(j + 1/2) / 2)``, ``j = 0 .. 2^bits - 1``, that are ``>= x / top``. The
    output is ``top`` times the level ``2^(-k/2)``, or 0 for ``k = 2^bits``
    (below the range). ``boundaries`` (ascending) and ``levels`` come from
    :func:`log_sqrt2_tables`. In float32, up to 8 bits, ``k`` comes from the
    float's bit fields (see :func:`_log_sqrt2_float32`) in one fused pass;
    otherwise from one ``searchsorted`` in the input's dtype. Both are exactly
    the table's. The output is recomputable from the input (see
    :mod:`.recompute`).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, boundaries: Tensor, levels: Tensor,
                top: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(top)
        y = log_sqrt2_values(x, boundaries, levels, top)
        register_recomputable(
            y, in_mode(fused_kernels_mode(), lambda: log_sqrt2_values(x, boundaries, levels, top)))
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None, None, None]:
        top, = ctx.saved_tensors
        # the gradient of x / top -> level -> * top, rounding included
        return (grad if top is None else grad * top / top), None, None, None


def log_sqrt2_values(x: Tensor, boundaries: Tensor, levels: Tensor,
                     top: Optional[Tensor]) -> Tensor:
    """The values of :class:`LogSqrt2` (no gradient)."""
    n = len(boundaries)
    if x.dtype == torch.float32 and n <= 2**MAX_BIT_FIELD_BITS and x.numel() > 0:
        # the boundaries below the smallest normal float32, compared directly
        tensors = (x.reshape(-1), levels, boundaries[:_SUBNORMAL_BOUNDARIES[n]])
        if top is None:
            return run_kernel(_log_sqrt2_float32, tensors, n).view(x.shape)
        return run_kernel(_scaled_log_sqrt2_float32, tensors + (top, ), n).view(x.shape)
    scaled = x if top is None else x / top
    y = levels[n - torch.searchsorted(boundaries, scaled.contiguous())]
    return y if top is None else y * top


def _log_sqrt2_float32(x: Tensor, levels: Tensor, subnormal: Tensor, n: int) -> Tensor:
    """:class:`LogSqrt2` of float32 ``x >= 0`` for ``n <= 2^8`` boundaries, from
    the bit fields of ``x``: with ``x = 1.m * 2^e``, the boundaries at or above
    ``2^(e + 1)`` are the first ``-2e - 2``; within ``[2^e, 2^(e + 1))`` lie the
    boundaries ``2^e * 2^0.75`` (``j = -2e - 2``) and ``2^e * 2^0.25`` (``j = -2e
    - 1``), at or above ``x`` where their float32 mantissas are at or above
    ``m``. Every normal boundary of up to 8 bits is a float32 with one of the
    two mantissas (checked when this module loads). Zeros and subnormal ``x``
    lie below every normal boundary and are compared with the ``subnormal``
    ones directly (the last four at 8 bits, none below)."""
    bits = x.view(torch.int32)
    field = torch.bitwise_right_shift(bits, 23)
    exponent = field - 127
    mantissa = torch.bitwise_and(bits, 0x7FFFFF)
    j = -2 * exponent - 2
    k = (
        j.clamp(0, n) + ((j >= 0) & (j < n) & (mantissa <= _MANTISSA_0_75)).int() +
        ((j >= -1) & (j < n - 1) & (mantissa <= _MANTISSA_0_25)).int())
    if subnormal.shape[0] > 0:
        below = n - subnormal.shape[0] + sum(
            (x <= subnormal[i]).int() for i in range(subnormal.shape[0]))
        k = torch.where(field == 0, below, k)
    return levels[k]


def _scaled_log_sqrt2_float32(x: Tensor, levels: Tensor, subnormal: Tensor, top: Tensor,
                              n: int) -> Tensor:
    """:func:`_log_sqrt2_float32` of ``x / top``, times ``top``."""
    return _log_sqrt2_float32(x / top, levels, subnormal, n) * top


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


def _boundary_mantissas(bits: int) -> Tuple[int, int]:
    """The float32 mantissas of the normal boundaries ``2^(-i - 1/4)`` and
    ``2^(-i - 3/4)``; raises if one of ``bits`` bits has another one (what
    :func:`_log_sqrt2_float32` relies on)."""
    fields = log_sqrt2_tables(bits)[0].flip(0).float().view(torch.int32)
    normal = fields[torch.bitwise_right_shift(fields, 23) > 0]
    mantissas = torch.bitwise_and(normal, 0x7FFFFF)
    even, odd = set(mantissas[0::2].tolist()), set(mantissas[1::2].tolist())
    if len(even) != 1 or len(odd) != 1:
        raise AssertionError(f'{bits}-bit log-sqrt(2) boundaries have mantissas {even}, {odd}')
    return even.pop(), odd.pop()


#: Most bits whose log-sqrt(2) levels :func:`_log_sqrt2_float32` computes.
MAX_BIT_FIELD_BITS = 8
_MANTISSA_0_75, _MANTISSA_0_25 = _boundary_mantissas(MAX_BIT_FIELD_BITS)
#: Per boundary count, how many boundaries lie below the smallest normal float32.
_SUBNORMAL_BOUNDARIES = {
    2**b: int((log_sqrt2_tables(b)[0] < torch.finfo(torch.float32).tiny).sum())
    for b in range(1, MAX_BIT_FIELD_BITS + 1)
}


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


def _lsq_forward(x: Tensor, inv_scale: Tensor, scale: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """The values of :func:`fake_quantize_values` in one expression (what
    :func:`run_kernel` compiles into one pass)."""
    return torch.clamp(torch.round(x * inv_scale), low, high) * scale


def _lsq_backward(grad: Tensor, x: Tensor, inv_scale: Tensor, low: Tensor, high: Tensor,
                  dims: Tuple[int, ...]) -> Tuple[Tensor, Tensor, Tensor]:
    """The input gradient, and the sums over ``dims`` of the scale's and of the
    clamped inputs' gradient terms, recomputed from the input ``x``: inside
    the range the input gets ``grad`` and the scale ``grad * (round(t) - t)``
    (``t = x / scale``), outside the input gets 0 and the scale ``grad`` times
    the clamped integer (LSQ)."""
    t = x * inv_scale
    r = torch.round(t)
    q = torch.clamp(r, low, high)
    inside = q == r
    grad_x = torch.where(inside, grad, 0.0)
    grad_scale = (grad * torch.where(inside, r - t, q)).sum(dims)
    grad_outside = (grad - grad_x).sum(dims)
    return grad_x, grad_scale, grad_outside


def _channel_rows(t: Tensor, ch_axis: Optional[int]) -> Tensor:
    """``t`` as ``(C, K)``: one row per channel of ``ch_axis`` (per tensor, one
    row), the layout the kernels take."""
    if ch_axis is None:
        return t.reshape(1, -1)
    return t.movedim(ch_axis, 0).reshape(t.shape[ch_axis], -1)


def _from_channel_rows(rows: Tensor, like: Tensor, ch_axis: Optional[int]) -> Tensor:
    if ch_axis is None:
        return rows.view(like.shape)
    return rows.view(like.movedim(ch_axis, 0).shape).movedim(0, ch_axis)


def fake_quantize_values(x: Tensor, qparams: Tuple[Tensor, ...], ch_axis: Optional[int]) -> Tensor:
    """Bit for bit the values of torch's ``fake_quantize_per_{tensor,channel}_affine``
    (``x * (1 / scale)`` rounded half to even, clamped to the integer range
    minus the zero point, times ``scale``) without a gradient, in one fused
    pass; ``qparams`` are ``(1 / scale, scale, quant_min - zero_point,
    quant_max - zero_point)``, each ``(C, 1)`` for the ``C`` channels of
    ``ch_axis`` (per tensor: ``(1, 1)``); float32 arithmetic, the result in
    ``x``'s dtype."""
    if x.numel() == 0:
        return x.clone()
    y = run_kernel(_lsq_forward, (_channel_rows(x, ch_axis), *qparams))
    y = _from_channel_rows(y, x, ch_axis)
    return y if y.dtype == x.dtype else y.to(x.dtype)


class _LearnableFakeQuantize(torch.autograd.Function):
    """Uniform affine fake quantization with gradients to the input, the scale
    and the zero point, in one function (see :func:`fake_quantize`). It saves
    the input, not masks and terms: the backward recomputes what it needs in
    the same fused pass that computes the gradients, so a quantized activation
    costs autograd one float tensor (4 bytes an element) instead of a mask and
    a float tensor; the output is recomputable from it (see :mod:`.recompute`).
    Both directions run on the input as rows of channels (:func:`_channel_rows`)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                quant_max: int, ch_axis: Optional[int], grad_factor: float) -> Tensor:
        s = scale.detach().float().reshape(-1, 1)
        z = zero_point.detach().float().reshape(-1, 1).round().clamp(quant_min, quant_max)
        qparams = (torch.reciprocal(s), s, quant_min - z, quant_max - z)
        ctx.save_for_backward(x, *qparams)
        ctx.ch_axis = ch_axis
        ctx.grad_factor = grad_factor
        ctx.mode = fused_kernels_mode()
        ctx.param_shapes = (scale.shape, zero_point.shape)
        if x.numel() == 0:
            return x * s.reshape(-1)[0]
        y = fake_quantize_values(x, qparams, ch_axis)
        register_recomputable(y, in_mode(ctx.mode,
                                         lambda: fake_quantize_values(x, qparams, ch_axis)))
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        x, inv_s, s, low, high = ctx.saved_tensors
        factor, (scale_shape, zero_point_shape) = ctx.grad_factor, ctx.param_shapes
        if x.numel() == 0:
            grad_x, grad_scale, grad_outside = grad, s.new_zeros(s.shape), s.new_zeros(s.shape)
        else:
            rows = _channel_rows(grad.to(x.dtype), ctx.ch_axis), _channel_rows(x, ctx.ch_axis)
            grad_x, grad_scale, grad_outside = run_kernel(
                _lsq_backward, (*rows, inv_s, low, high), (1, ), mode=ctx.mode)
            grad_x = _from_channel_rows(grad_x, x, ctx.ch_axis)
        grad_zero_point = None
        if ctx.needs_input_grad[2]:
            grad_zero_point = (grad_outside.reshape(-1) *
                               s.reshape(-1)).mul_(-factor).reshape(zero_point_shape)
        return (grad_x if ctx.needs_input_grad[0] else None,
                grad_scale.mul(factor).reshape(scale_shape) if ctx.needs_input_grad[1] else None,
                grad_zero_point, None, None, None, None)


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
    are bit for bit those of :func:`fake_quantize_values` (torch's
    ``fake_quantize_per_*_affine``); float32 arithmetic, the result in ``x``'s
    dtype.
    """
    if ch_axis is not None and not -x.dim() <= ch_axis < x.dim():
        raise ValueError(f'ch_axis={ch_axis} is out of range for an input of shape '
                         f'{tuple(x.shape)}')
    return _LearnableFakeQuantize.apply(x, scale, zero_point, quant_min, quant_max,
                                        None if ch_axis is None else ch_axis % x.dim(), grad_factor)
