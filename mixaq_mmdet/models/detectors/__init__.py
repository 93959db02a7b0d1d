from .quantized_detector import QUANT_SCOPES, build_quantized_detector, quant_scope, quant_setting

__all__ = ['QUANT_SCOPES', 'build_quantized_detector', 'quant_scope', 'quant_setting']
