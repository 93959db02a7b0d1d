from .shapes_coco import SHAPES_CLASSES, ShapesCocoSpec, generate, generate_split

__all__ = ['SHAPES_CLASSES', 'ShapesCocoSpec', 'generate', 'generate_split']
