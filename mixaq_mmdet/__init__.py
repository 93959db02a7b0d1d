"""MixA-Q for MMDetection: mixed-precision activation quantization of window
attention, as an mmdet 3.x plugin.

Importing the package registers everything a config can name (through
``custom_imports=dict(imports=['mixaq_mmdet'])``) and applies the stack fixes in
:mod:`mixaq_mmdet.compat`.
"""
from . import compat  # noqa: F401
from . import engine, models, quantization  # noqa: F401

__version__ = '0.1.0'
