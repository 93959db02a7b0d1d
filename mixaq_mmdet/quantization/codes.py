"""Integer codes: what a uniform quantizer's values are, as integers and one scale.

A uniform fake quantizer returns ``scale * (code - zero_point)``. Integer
execution computes with the codes themselves: an activation becomes unsigned
8-bit codes with its zero point (:class:`Codes`), a weight the signed integers
``code - zero_point`` with one scale per output channel. The codes are computed
with the fake quantizer's own arithmetic (``x * (1 / scale)`` rounded half to
even, clamped), so they are exactly the integers the fake-quantized values
stand for.
"""
from typing import NamedTuple

import torch
from torch import Tensor

from .numerics import run_kernel

#: Codes of an activation are stored as uint8: a grid of at most this many levels.
MAX_CODE_LEVELS = 256


class IntegerGrid(NamedTuple):
    """A per-tensor uniform grid: values ``scale * (u - zero_point)`` for codes
    ``u`` in ``[0, levels - 1]`` (a quantizer's ``[quant_min, quant_max]``
    shifted to start at 0, its zero point with it).

    ``scale``, ``inv_scale``, ``low`` and ``high`` are also kept as float32
    tensors of one element (``tensors``), which fused kernels take as inputs
    instead of compiling once per value.
    """
    scale: float
    zero_point: int
    levels: int
    tensors: Tensor  # float32 (4,): scale, 1 / scale, -zero_point, levels - 1 - zero_point

    @classmethod
    def create(cls, scale: Tensor, zero_point: int, quant_min: int,
               quant_max: int) -> 'IntegerGrid':
        """The grid of a quantizer with float32 ``scale`` (one element), an
        integer zero point and the integer range ``[quant_min, quant_max]``."""
        s = scale.detach().float().reshape(1)
        zero = int(zero_point) - int(quant_min)
        levels = int(quant_max) - int(quant_min) + 1
        bounds = torch.tensor([-zero, levels - 1 - zero], dtype=torch.float32, device=s.device)
        tensors = torch.cat([s, torch.reciprocal(s), bounds])
        return cls(float(s), zero, levels, tensors)

    def to(self, device: torch.device) -> 'IntegerGrid':
        return self._replace(tensors=self.tensors.to(device))


class Codes(NamedTuple):
    """An activation as uint8 codes on ``grid``: its value is
    ``grid.scale * (values - grid.zero_point)``."""
    values: Tensor
    grid: IntegerGrid

    def dequantize(self) -> Tensor:
        """The float32 values the codes stand for (what fake quantization returns)."""
        return (self.values.float() - self.grid.zero_point) * self.grid.tensors[0]


def _codes(x: Tensor, grid: Tensor) -> Tensor:
    """``clamp(round(x / scale), -zero_point, top - zero_point) + zero_point``
    as uint8, with the fake quantizer's arithmetic (one fused pass)."""
    shifted = torch.clamp(torch.round(x * grid[1]), grid[2], grid[3])
    return (shifted - grid[2]).to(torch.uint8)


def quantize_codes(x: Tensor, grid: IntegerGrid) -> Codes:
    """``x`` (any shape, float) as uint8 codes on ``grid``."""
    if x.numel() == 0:
        return Codes(torch.empty(x.shape, dtype=torch.uint8, device=x.device), grid)
    values = run_kernel(_codes, (x.reshape(-1).float(), grid.tensors))
    return Codes(values.view(x.shape), grid)


def weight_values(w: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                  quant_max: int) -> Tensor:
    """A weight's ``code - zero_point`` as int32, per output channel (dim 0)
    scales and zero points: the integers its fake-quantized values are
    ``scale`` times."""
    shape = [-1] + [1] * (w.dim() - 1)
    s = scale.detach().float().reshape(shape)
    z = zero_point.detach().float().reshape(shape)
    values = torch.clamp(
        torch.round(w.detach().float() * torch.reciprocal(s)), quant_min - z, quant_max - z)
    return values.to(torch.int32)


__all__ = ['IntegerGrid', 'Codes', 'quantize_codes', 'weight_values', 'MAX_CODE_LEVELS']
