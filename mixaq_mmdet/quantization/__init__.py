"""Fake quantization for MixA-Q: quantizers, their statistics and quantized layers.

A new quantizer is a :class:`QuantizerBase` subclass registered in
``QUANTIZERS`` and imported here; a config then names it by type.
"""
from .base import MAX_BITS, MIN_BITS, QuantizerBase
from .builder import QuantizerCfg, build_quantizer
from .codes import Codes, IntegerGrid, quantize_codes
from .convert import quantize_layers
from .integer import integer_kernels, to_fake_quant, to_integer
from .kernels import KERNELS, cpu_has_int8_dot_product
from .layers import QuantConv2d, QuantLinear, QuantMatMul, reused_quantized_weights
from .numerics import fake_quantize
from .observers import HistogramObserver, MinMaxObserver, TensorObserver
from .quantizers import (CALIB_METHODS, DEFAULT_ACT_QUANTIZER, DEFAULT_WEIGHT_QUANTIZER,
                         PERCENTILES, LogSqrt2Quantizer, LSQQuantizer, UniformQuantizer)
from .reparam import ReparamTarget, reparameterize
from .statsq import StatsQQuantizer
from .switches import (calculate_qparams, disable_quantization, enable_calibration,
                       enable_fake_quant, finish_calibration, quantization_disabled, quantizers_of,
                       reset_statistics, set_quantizer_names)
from .twin_uniform import TwinUniformQuantizer
from .uq_vit import DeMaxQuantizer, NormQuantizer

__all__ = [
    'quantize_layers', 'ReparamTarget', 'reparameterize', 'QuantizerBase', 'UniformQuantizer',
    'LSQQuantizer', 'LogSqrt2Quantizer', 'StatsQQuantizer', 'TwinUniformQuantizer', 'QuantLinear',
    'QuantConv2d', 'QuantMatMul', 'reused_quantized_weights', 'MinMaxObserver', 'HistogramObserver',
    'TensorObserver', 'QuantizerCfg', 'build_quantizer', 'fake_quantize', 'enable_calibration',
    'calculate_qparams', 'finish_calibration', 'enable_fake_quant', 'disable_quantization',
    'quantization_disabled', 'reset_statistics', 'set_quantizer_names', 'quantizers_of',
    'CALIB_METHODS', 'PERCENTILES', 'DEFAULT_WEIGHT_QUANTIZER', 'DEFAULT_ACT_QUANTIZER', 'MIN_BITS',
    'MAX_BITS', 'to_integer', 'to_fake_quant', 'integer_kernels', 'Codes', 'IntegerGrid',
    'quantize_codes', 'KERNELS', 'cpu_has_int8_dot_product', 'DeMaxQuantizer', 'NormQuantizer'
]
