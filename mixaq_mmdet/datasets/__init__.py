from .shapes_coco import SHAPES_CLASSES, ShapesCocoSpec, generate, generate_split

__all__ = ['SHAPES_CLASSES', 'ShapesCocoSpec', 'generate', 'generate_split']
from .coco_fixture import (COCO_CATEGORIES, COCO_CATEGORY_IDS, COCO_CLASSES, generate_coco_fixture,
                           generate_coco_split)
from .layout import COCO_LAYOUT, check_dataset_files

__all__ += [
    'COCO_LAYOUT', 'check_dataset_files', 'COCO_CATEGORIES', 'COCO_CATEGORY_IDS', 'COCO_CLASSES',
    'generate_coco_fixture', 'generate_coco_split'
]
