"""MixA-Q for MMDetection: mixed-precision activation quantization of window
attention, as an mmdet 3.x plugin.

Importing the package registers everything a config can name (through
``custom_imports=dict(imports=['mixaq_mmdet'])``) and changes nothing else: the
stack fixes of :mod:`mixaq_mmdet.compat` apply where the plugin's runner
(``runner_type = 'MixAQRunner'``) and tools call them.
"""
from . import engine, models, quantization  # noqa: F401

__version__ = '0.1.0'
