from .mixaq_swin import MixAQSwinTransformer

__all__ = ['MixAQSwinTransformer']
