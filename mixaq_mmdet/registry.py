"""Registries of mixaq_mmdet.

``QUANTIZERS`` has no parent on purpose: quantizers are built by name from this
package only, so building one while another default scope is active (``mmdet``
during a detector run) must not look the name up in that scope's registries.
"""
from mmengine.registry import Registry

QUANTIZERS = Registry('quantizer', scope='mixaq_mmdet', locations=['mixaq_mmdet.quantization'])
