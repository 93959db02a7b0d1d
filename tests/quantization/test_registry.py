import time

import pytest
from mmengine.registry import DefaultScope

from mixaq_mmdet.quantization import (LogSqrt2Quantizer, LSQQuantizer, UniformQuantizer,
                                      build_quantizer)
from mixaq_mmdet.registry import QUANTIZERS


@pytest.fixture
def mmdet_scope():
    name = f'mixaq-test-{time.time()}'
    DefaultScope.get_instance(name, scope_name='mmdet')
    assert DefaultScope.get_current_instance().scope_name == 'mmdet'
    yield
    DefaultScope._instance_dict.pop(name)


def test_registered_types():
    QUANTIZERS.import_from_location()
    assert {'UniformQuantizer', 'LSQQuantizer', 'LogSqrt2Quantizer'} <= set(QUANTIZERS.module_dict)
    assert QUANTIZERS.parent is None


def test_build_under_mmdet_default_scope(mmdet_scope):
    cfg = dict(type='UniformQuantizer', bits=4, per_channel=True, calib='percentile_mse')
    for q in (QUANTIZERS.build(cfg), build_quantizer(cfg)):
        assert type(q) is UniformQuantizer
        assert (q.bits, q.per_channel, q.calib) == (4, True, 'percentile_mse')
        assert (q.quant_min, q.quant_max) == (0, 15)
    assert DefaultScope.get_current_instance().scope_name == 'mmdet'
    assert type(build_quantizer(dict(type='LSQQuantizer', bits=2, symmetric=True))) is LSQQuantizer
    assert build_quantizer(dict(type='LogSqrt2Quantizer', bits=4)).bits == 4


def test_build_does_not_mutate_config():
    cfg = dict(type='UniformQuantizer', bits=8)
    build_quantizer(cfg)
    assert cfg == dict(type='UniformQuantizer', bits=8)


def test_default_args_fill_unset_arguments():
    defaults = dict(bits=8, calib='percentile_mse', static=True)
    q = build_quantizer(dict(type='UniformQuantizer', bits=4), default_args=defaults)
    assert q.bits == 4 and q.static and q.calib == 'percentile_mse'


def test_build_passes_modules_through():
    q = LogSqrt2Quantizer(3)
    assert build_quantizer(q) is q


def test_unknown_type_lists_registered_types():
    with pytest.raises(KeyError) as info:
        build_quantizer(dict(type='KLQuantizer', bits=8))
    msg = str(info.value)
    assert "'KLQuantizer'" in msg
    for name in ('LSQQuantizer', 'LogSqrt2Quantizer', 'UniformQuantizer'):
        assert name in msg


def test_bad_config_type():
    with pytest.raises(TypeError, match='type'):
        build_quantizer(dict(bits=8))
    with pytest.raises(TypeError):
        build_quantizer(8)
