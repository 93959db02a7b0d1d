"""Models registered into mmdet's registry (configs name them with mmdet scope)."""
from .backbones import MixAQSwinTransformer
from .detectors import QUANT_SCOPES, build_quantized_detector, quant_scope, quant_setting
from .layers import TwoBranchSwinBlock, WindowPolicy

__all__ = [
    'MixAQSwinTransformer', 'TwoBranchSwinBlock', 'WindowPolicy', 'QUANT_SCOPES',
    'build_quantized_detector', 'quant_scope', 'quant_setting'
]
