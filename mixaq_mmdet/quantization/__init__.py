"""Fake quantization for MixA-Q: quantizers, their statistics and quantized layers."""
from .convert import quantize_layers
from .reparam import ReparamTarget, reparameterize
from .layers import QuantConv2d, QuantLinear, QuantMatMul
from .observers import HistogramObserver, MinMaxObserver, TensorObserver
from .quantizers import (CALIB_METHODS, DEFAULT_ACT_QUANTIZER, DEFAULT_WEIGHT_QUANTIZER,
                         MAX_BITS, MIN_BITS, PERCENTILES, LogSqrt2Quantizer, LSQQuantizer, QuantizerBase,
                         QuantizerCfg, UniformQuantizer, build_quantizer, calculate_qparams,
                         disable_quantization, enable_calibration, enable_fake_quant,
                         fake_quantize, finish_calibration, quantization_disabled,
                         quantizers_of, reset_statistics, set_quantizer_names)

__all__ = [
    'quantize_layers', 'ReparamTarget', 'reparameterize', 'QuantizerBase', 'UniformQuantizer', 'LSQQuantizer', 'LogSqrt2Quantizer',
    'QuantLinear', 'QuantConv2d', 'QuantMatMul', 'MinMaxObserver', 'HistogramObserver',
    'TensorObserver', 'QuantizerCfg', 'build_quantizer', 'fake_quantize',
    'enable_calibration', 'calculate_qparams', 'finish_calibration', 'enable_fake_quant',
    'disable_quantization', 'quantization_disabled', 'reset_statistics',
    'set_quantizer_names', 'quantizers_of', 'CALIB_METHODS', 'PERCENTILES',
    'DEFAULT_WEIGHT_QUANTIZER', 'DEFAULT_ACT_QUANTIZER', 'MIN_BITS', 'MAX_BITS'
]
