"""code_differences: the quantized activations of integer execution against
fake quantization's, position by position."""
import copy

import torch

from mixaq_mmdet.analysis import code_differences, position_of, recorded_quantized
from mixaq_mmdet.models import MixAQSwinTransformer
from mixaq_mmdet.quantization import enable_calibration, finish_calibration, to_integer

ARCH = dict(
    embed_dims=16,
    depths=(2, 2),
    num_heads=(1, 2),
    strides=(4, 2),
    out_indices=(0, 1),
    window_size=7)


def _model():
    torch.manual_seed(0)
    model = MixAQSwinTransformer(
        **ARCH,
        low_bit_ratios=0.5,
        weight_quantizer=dict(type='UniformQuantizer', per_channel=True, calib='minmax'),
        act_quantizer=dict(type='UniformQuantizer', calib='minmax')).eval()
    enable_calibration(model)
    with torch.no_grad():
        model(torch.randn(2, 3, 224, 224))
    finish_calibration(model)
    return model


def test_positions_are_named_by_branch_and_place():
    assert position_of('backbone.stages.1.blocks.0.branches.low.fc2_in') == 'low.fc2_in'
    assert position_of('stages.0.blocks.1.branches.high.qk.quantizer_b') == 'high.k'
    assert position_of('stages.0.blocks.1.branches.high.av.quantizer_a') == 'high.softmax'
    assert position_of('backbone.patch_embed.projection.input_quantizer') == 'patch_embed'
    assert position_of('stages.0.downsample.reduction.input_quantizer') == 'reduction'


def test_integer_codes_against_fake_quantization():
    """Every activation position of both branches is compared, the weights are
    not; the first one (the patch embedding's input, the same image in both)
    agrees exactly; a model against its own copy differs nowhere."""
    model = _model()
    inputs = [torch.randn(1, 3, 97, 131), torch.randn(1, 3, 64, 64)]
    rows = code_differences(model, copy.deepcopy(model), inputs, lambda m, x: m(x))
    assert rows and all(r.differ == 0 for r in rows)
    integer = to_integer(copy.deepcopy(model))
    rows = {r.position: r for r in code_differences(model, integer, inputs, lambda m, x: m(x))}
    places = ('qkv_in', 'q', 'k', 'softmax', 'v', 'proj_in', 'fc1_in', 'fc2_in')
    assert set(rows) == {f'{b}.{p}'
                         for b in ('high', 'low')
                         for p in places} | {'patch_embed', 'reduction'}
    # the images padded to patch multiples, as mmdet's patch embedding pads them
    assert rows['patch_embed'].differ == 0
    assert rows['patch_embed'].compared == 3 * (100 * 132 + 64 * 64)
    assert all(0 <= r.fraction <= 1 for r in rows.values())


def test_recording_stops_with_the_block():
    model = to_integer(_model())
    with torch.no_grad(), recorded_quantized(model) as record:
        model(torch.randn(1, 3, 64, 64))
    assert record and all(q.code_record is None
                          for q in model.modules() if hasattr(q, 'code_record'))
    assert not any('weight_quantizer' in name for name in record)
