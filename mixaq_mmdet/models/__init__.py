"""Models registered into mmdet's registry (configs name them with mmdet scope)."""
from .backbones import MixAQSwinTransformer
from .layers import TwoBranchSwinBlock, WindowPolicy

__all__ = ['MixAQSwinTransformer', 'TwoBranchSwinBlock', 'WindowPolicy']
