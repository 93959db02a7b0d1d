"""Integer matrix products of codes: uint8 activations times int8 weights.

Two kernels compute ``scale * sum_k (u_k - zero_point) * w_k + bias`` from an
activation's uint8 codes ``u`` (:class:`~.codes.Codes`) and a weight's integers
``w``, each output channel with its own scale:

- ``'onednn'`` (CPU): oneDNN's int8 matmul as torch exposes it for inductor's
  x86 quantization (``torch.ops.onednn.qlinear_pointwise``). It applies the
  zero point, the scales and the bias in its epilogue, and can fuse a GELU, a
  requantization of the output to the next layer's codes, or the residual add
  (in place).
- ``'int_mm'`` (CUDA, and any device with a ``torch._int_mm``): int8 x int8
  -> int32 (int8 tensor cores on CUDA); the codes shifted by 128, the zero
  point folded into a per-channel correction computed when the weight is
  packed, then one rescale to float and the epilogue as torch ops.

Both accumulate exactly. On x86 CPUs without an int8 dot-product instruction
(VNNI), oneDNN multiplies pairs of uint8 x int8 into int16 with saturation:
exact only for weights within +-64. A weight whose integers do not fit a
kernel's exact range is split into planes, ``w = sum_p 16^p w_p``, each
within +-8, computed as one product with ``P`` times the output channels and
summed (the epilogue then runs as torch ops): 8-bit weights on such CPUs, and
8-bit asymmetric weights (``code - zero_point`` up to +-255) everywhere.

2- to 8-bit codes all run on the same int8 kernels, so an A4 or A2 window costs
here what an A8 one does.
"""
import functools
import itertools
import os
from typing import Any, Dict, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .codes import Codes, IntegerGrid, quantize_codes

KERNELS = ('onednn', 'int_mm')
#: Largest weight integer a uint8 x int8 pair product can take without
#: saturating an int16 sum of two (255 * 64 * 2 < 2^15).
SATURATION_FREE_WEIGHT = 64
INT8_MAX = 127
#: Radix of the weight planes and the largest magnitude of a lower plane.
PLANE_RADIX = 16
#: CPU flags (Linux /proc/cpuinfo) of instructions that sum uint8 x int8
#: products into int32 without an int16 step.
INT8_DOT_PRODUCT_FLAGS = ('avx512_vnni', 'avx_vnni', 'amx_int8')


@functools.lru_cache(maxsize=None)
def cpu_has_int8_dot_product(cpuinfo: str = '/proc/cpuinfo') -> bool:
    """Whether this x86 CPU has VNNI or AMX int8 (read from ``cpuinfo``; False
    where it cannot be read, which only costs speed: weights beyond +-64 are
    split into planes)."""
    if not os.path.exists(cpuinfo):
        return False
    with open(cpuinfo) as f:
        for line in f:
            if line.startswith('flags'):
                flags = set(line.split(':', 1)[1].split())
                return any(flag in flags for flag in INT8_DOT_PRODUCT_FLAGS)
    return False


def default_kernel(device: torch.device) -> str:
    """'onednn' on CPU, 'int_mm' elsewhere (CUDA; ``meta`` in tests)."""
    return 'onednn' if device.type == 'cpu' else 'int_mm'


def split_planes(values: Tensor, limit: int) -> Tensor:
    """``(P, N, K)`` int8 planes with ``values == sum_p 16^(P-1-p) planes[p]``,
    each plane within ``+-limit`` (one plane when ``values`` already is)."""
    planes = []
    rest = values.to(torch.int64)
    while rest.numel() and int(rest.abs().max()) > limit:
        low = torch.remainder(rest + PLANE_RADIX // 2, PLANE_RADIX) - PLANE_RADIX // 2
        planes.append(low)
        rest = (rest - low) // PLANE_RADIX
    planes.append(rest)
    return torch.stack(planes[::-1]).to(torch.int8)


class PackedWeight(NamedTuple):
    """A weight as a kernel takes it: ``planes`` (P, N, K) int8, the kernel's
    own packing of them, per-output-channel float32 ``step`` and ``bias``, and
    the kernel's per-channel extras (``int_mm``: column sums of the planes)."""
    planes: Tensor
    packed: Any
    step: Tensor
    bias: Optional[Tensor]
    extra: Any

    @property
    def out_features(self) -> int:
        return self.planes.shape[1]

    @property
    def in_features(self) -> int:
        return self.planes.shape[2]


class Int8Kernel:
    """One way to compute integer linear products (see the module docstring).

    ``linear`` takes (M, K) uint8 codes and returns the (M, N) float32 output,
    after the optional ``activation`` (a module, applied to the float output),
    requantized to ``output`` (then :class:`Codes`), or added into
    ``residual`` (an (M, N) float32 tensor, which it returns)."""

    name = ''

    def pack(self, values: Tensor, step: Tensor, bias: Optional[Tensor]) -> PackedWeight:
        raise NotImplementedError

    def accumulate(self, codes: Tensor, zero_point: int, weight: PackedWeight) -> Tensor:
        """The exact ``sum_k (codes - zero_point) w`` as int64 (M, N)."""
        raise NotImplementedError

    def linear(self,
               codes: Tensor,
               grid: IntegerGrid,
               weight: PackedWeight,
               activation: Optional[nn.Module] = None,
               output: Optional[IntegerGrid] = None,
               residual: Optional[Tensor] = None) -> Any:
        raise NotImplementedError

    def _rescale(self, total: Tensor, grid: IntegerGrid, weight: PackedWeight,
                 activation: Optional[nn.Module], output: Optional[IntegerGrid],
                 residual: Optional[Tensor]) -> Any:
        """The epilogue as torch ops: one rescale with the bias, then the
        activation, and the requantization or the residual add."""
        scale = weight.step * grid.tensors[0]
        y = total.float() * scale if weight.bias is None else torch.addcmul(
            weight.bias, total.float(), scale)
        return epilogue(y, activation, output, residual)


def epilogue(y: Tensor, activation: Optional[nn.Module], output: Optional[IntegerGrid],
             residual: Optional[Tensor]) -> Any:
    """``activation(y)``, then its codes on ``output``, or ``residual += y``."""
    if activation is not None:
        y = activation(y)
    if output is not None:
        return quantize_codes(y, output)
    if residual is not None:
        return residual.add_(y)
    return y


def _is_exact_gelu(activation: Optional[nn.Module]) -> bool:
    return isinstance(activation, nn.GELU) and activation.approximate == 'none'


class OneDNNWeight:
    """A weight packed by oneDNN (an opaque tensor), held in a registry and
    named in the ops below by its ``handle``: opaque tensors pass neither
    through ``torch.compile``'s functionalization of an op that writes in
    place nor through ``copy.deepcopy``. The entry goes with the object."""

    _packed: Dict[int, Tensor] = {}
    _handles = itertools.count()

    def __init__(self, weight: Tensor) -> None:
        self.handle = next(self._handles)
        self._packed[self.handle] = torch.ops.onednn.qlinear_prepack(weight, None)

    @classmethod
    def get(cls, handle: int) -> Tensor:
        return cls._packed[handle]

    def __del__(self) -> None:
        self._packed.pop(self.handle, None)


@torch.library.custom_op('mixaq::onednn_linear', mutates_args=())
def onednn_linear(codes: Tensor, x_scale: float, x_zero_point: int, weight: int, scales: Tensor,
                  zero_points: Tensor, bias: Optional[Tensor], out_scale: float,
                  out_zero_point: int, out_dtype: torch.dtype, post_op: str) -> Tensor:
    """oneDNN's int8 matmul (``torch.ops.onednn.qlinear_pointwise``) of the
    packed weight ``weight`` (an :class:`OneDNNWeight` handle), as an op of its
    own: inductor lowers oneDNN's op only for weights it froze as constants,
    and calls this one as it is."""
    return torch.ops.onednn.qlinear_pointwise(codes, x_scale, x_zero_point,
                                              OneDNNWeight.get(weight), scales, zero_points, bias,
                                              out_scale, out_zero_point, out_dtype, post_op, [],
                                              'none' if post_op == 'gelu' else '')


@onednn_linear.register_fake
def _(codes, x_scale, x_zero_point, weight, scales, zero_points, bias, out_scale, out_zero_point,
      out_dtype, post_op):
    return codes.new_empty((codes.shape[0], scales.shape[0]), dtype=out_dtype)


@torch.library.custom_op('mixaq::onednn_linear_add_', mutates_args=('residual', ))
def onednn_linear_add_(codes: Tensor, x_scale: float, x_zero_point: int, weight: int,
                       scales: Tensor, zero_points: Tensor, bias: Optional[Tensor],
                       residual: Tensor) -> None:
    """``residual += `` oneDNN's int8 matmul, accumulated in place ('sum').

    By keyword: torch 2.4 orders ``other`` after ``output_dtype``, 2.13 before
    ``bias``; the names are the same."""
    torch.ops.onednn.qlinear_pointwise.binary(
        qx=codes,
        x_scale=x_scale,
        x_zero_point=x_zero_point,
        qw=OneDNNWeight.get(weight),
        w_scale=scales,
        w_zero_point=zero_points,
        other=residual,
        bias=bias,
        output_scale=1.0,
        output_zero_point=0,
        output_dtype=torch.float32,
        other_scale=1.0,
        other_zp=0,
        binary_post_op='sum',
        binary_alpha=1.0,
        unary_post_op='none',
        unary_post_op_args=[],
        unary_post_op_algorithm='')


@onednn_linear_add_.register_fake
def _(codes, x_scale, x_zero_point, weight, scales, zero_points, bias, residual):
    return None


class OneDNNKernel(Int8Kernel):
    """oneDNN's uint8 x int8 matmul with a fused epilogue (CPU)."""

    name = 'onednn'

    def weight_limit(self) -> int:
        return INT8_MAX if cpu_has_int8_dot_product() else SATURATION_FREE_WEIGHT

    def pack(self, values: Tensor, step: Tensor, bias: Optional[Tensor]) -> PackedWeight:
        planes = split_planes(values, self.weight_limit())
        num_planes, n, k = planes.shape
        packed = OneDNNWeight(planes.reshape(num_planes * n, k))
        radix = PLANE_RADIX**torch.arange(num_planes - 1, -1, -1, dtype=torch.float32)
        scales = (radix[:, None] * step.float()[None, :]).reshape(-1).contiguous()
        zero_points = torch.zeros(num_planes * n, dtype=torch.int32)
        return PackedWeight(planes, packed, step.float(), bias, (scales, zero_points))

    def _call(self,
              codes: Tensor,
              x_scale: float,
              zero_point: int,
              weight: PackedWeight,
              scales: Tensor,
              bias: Optional[Tensor],
              post_op: str = 'none',
              output: Optional[IntegerGrid] = None) -> Tensor:
        out_scale, out_zero, dtype = 1.0, 0, torch.float32
        if output is not None:
            out_scale, out_zero, dtype = output.scale, output.zero_point, torch.uint8
        return onednn_linear(codes, x_scale, zero_point, weight.packed.handle, scales,
                             weight.extra[1], bias, out_scale, out_zero, dtype, post_op)

    def accumulate(self, codes: Tensor, zero_point: int, weight: PackedWeight) -> Tensor:
        num_planes, n, _ = weight.planes.shape
        radix = PLANE_RADIX**torch.arange(num_planes - 1, -1, -1, dtype=torch.int64)
        ones = torch.ones(num_planes * n, dtype=torch.float32)
        out = self._call(codes.contiguous(), 1.0, zero_point, weight, ones, None)
        per_plane = out.to(torch.int64).view(-1, num_planes, n)
        return (per_plane * radix[None, :, None]).sum(1)

    def linear(self,
               codes: Tensor,
               grid: IntegerGrid,
               weight: PackedWeight,
               activation: Optional[nn.Module] = None,
               output: Optional[IntegerGrid] = None,
               residual: Optional[Tensor] = None) -> Any:
        codes = codes.contiguous()
        scales = weight.extra[0]
        if weight.planes.shape[0] > 1:
            out = self._call(codes, grid.scale, grid.zero_point, weight, scales, None)
            y = out.view(-1, weight.planes.shape[0], weight.out_features).sum(1)
            if weight.bias is not None:
                y = y + weight.bias
            return epilogue(y, activation, output, residual)
        if activation is not None and not _is_exact_gelu(activation):
            y = self._call(codes, grid.scale, grid.zero_point, weight, scales, weight.bias)
            return epilogue(y, activation, output, residual)
        post_op = 'none' if activation is None else 'gelu'
        if output is not None:
            values = self._call(codes, grid.scale, grid.zero_point, weight, scales, weight.bias,
                                post_op, output)
            return Codes(values, output)
        if residual is not None and post_op == 'none' and residual.is_contiguous() and \
                residual.dtype == torch.float32:
            onednn_linear_add_(codes, grid.scale, grid.zero_point, weight.packed.handle, scales,
                               weight.extra[1], weight.bias, residual)
            return residual
        y = self._call(codes, grid.scale, grid.zero_point, weight, scales, weight.bias, post_op)
        return epilogue(y, None, None, residual)


class IntMMKernel(Int8Kernel):
    """``torch._int_mm`` (int8 x int8 -> int32), then the epilogue as torch ops.

    The uint8 codes become int8 by flipping their top bit (``u - 128``); the
    ``(128 - zero_point) * sum_k w`` this leaves out is added per channel from
    the column sums computed at packing. cuBLAS takes more than 16 rows and
    ``K``, ``N`` multiples of 8: smaller inputs are padded with zero rows and
    the weight with zero columns / channels."""

    name = 'int_mm'
    MIN_ROWS = 17
    ALIGN = 8

    def pack(self, values: Tensor, step: Tensor, bias: Optional[Tensor]) -> PackedWeight:
        planes = split_planes(values, INT8_MAX)
        num_planes, n, k = planes.shape
        pad_n, pad_k = -n % self.ALIGN, -k % self.ALIGN
        padded = F.pad(planes, (0, pad_k, 0, pad_n))
        # column-major (K, N) operands, as cuBLAS wants them
        operands = [p.t() for p in padded]
        column_sums = planes.to(torch.int32).sum(-1)  # (P, N)
        return PackedWeight(planes, operands, step.float(), bias, column_sums)

    def accumulate(self, codes: Tensor, zero_point: int, weight: PackedWeight) -> Tensor:
        return self._accumulate(codes, zero_point, weight).to(torch.int64)

    def _accumulate(self, codes: Tensor, zero_point: int, weight: PackedWeight) -> Tensor:
        m, k = codes.shape
        n = weight.out_features
        signed = torch.bitwise_xor(codes, 128).view(torch.int8)
        pad_k = weight.packed[0].shape[0] - k
        pad_m = max(self.MIN_ROWS - m, 0) if codes.device.type == 'cuda' else 0
        if pad_k or pad_m:
            signed = F.pad(signed, (0, pad_k, 0, pad_m))
        correction = (128 - zero_point) * weight.extra  # (P, N) int32
        total = None
        for p, operand in enumerate(weight.packed):
            acc = torch._int_mm(signed, operand)[:m, :n] + correction[p]
            total = acc if total is None else total * PLANE_RADIX + acc
        return total

    def linear(self,
               codes: Tensor,
               grid: IntegerGrid,
               weight: PackedWeight,
               activation: Optional[nn.Module] = None,
               output: Optional[IntegerGrid] = None,
               residual: Optional[Tensor] = None) -> Any:
        total = self._accumulate(codes, grid.zero_point, weight)
        return self._rescale(total, grid, weight, activation, output, residual)


_KERNELS = {k.name: k for k in (OneDNNKernel(), IntMMKernel())}


def get_kernel(name: str, device: torch.device) -> Int8Kernel:
    """The kernel ``name`` ('auto': :func:`default_kernel`) for ``device``."""
    if name == 'auto':
        name = default_kernel(device)
    if name not in _KERNELS:
        raise ValueError(f"integer kernel must be 'auto' or one of {KERNELS}, got {name!r}")
    if name == 'onednn' and device.type != 'cpu':
        raise ValueError(f"the 'onednn' integer kernel runs on CPU, not on {device}; "
                         "use 'int_mm' (or 'auto')")
    return _KERNELS[name]


__all__ = [
    'KERNELS', 'Int8Kernel', 'OneDNNKernel', 'IntMMKernel', 'PackedWeight', 'get_kernel',
    'default_kernel', 'cpu_has_int8_dot_product', 'split_planes', 'epilogue'
]
