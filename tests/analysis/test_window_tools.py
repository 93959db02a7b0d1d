"""Window analysis: labels, ROC-AUC, group maps, drawing, and the tools end to end."""
import json
import os.path as osp
import struct

import numpy as np
import pytest
import torch
from mmdet.models.backbones import SwinTransformer
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mixaq_mmdet.analysis import (GROUP_PRUNED, PARTITIONS, draw_window_groups, roc_auc,
                                  stage_inputs, stage_strides, window_group_maps,
                                  window_map_to_tokens, window_object_labels)
from mixaq_mmdet.models.backbones import MixAQSwinTransformer
from mixaq_mmdet.models.layers import WindowPolicy, group_sizes
from ..conftest import FP_BENCH_CONFIG, REPO, data_root_options, run_tool

NANO = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)


def _png_size(path):
    with open(path, 'rb') as f:
        header = f.read(24)
    assert header[:8] == b'\x89PNG\r\n\x1a\n'
    return struct.unpack('>II', header[16:24])


def _masks(h, w, pixels):
    """One (1, h, w) mask with the given (row, col) pixels set."""
    m = np.zeros((1, h, w), dtype=bool)
    for r, c in pixels:
        m[0, r, c] = True
    return m


# ---------------------------------------------------------------- labels


def test_object_labels_regular_partition_with_padding():
    # 10x10 tokens at stride 4 pad to 14x14: 2x2 windows of 7x7 tokens
    masks = _masks(40, 40, [(0, 0), (30, 30)])  # tokens (0, 0) and (7, 7)
    labels = window_object_labels(masks, (10, 10), 4, 7, 0)
    assert labels.tolist() == [True, False, False, True]
    masks = _masks(40, 40, [(27, 39)])  # token (6, 9): row 0, col 1
    assert window_object_labels(masks, (10, 10), 4, 7).tolist() == [False, True, False, False]


def test_object_labels_shifted_partition():
    # the roll by -3 moves token (r, c) to ((r - 3) % 14, (c - 3) % 14)
    for pixel, window in (((0, 0), 3), ((30, 30), 0), ((24, 0), 1), ((0, 24), 2)):
        labels = window_object_labels(_masks(40, 40, [pixel]), (10, 10), 4, 7, 3)
        assert labels.nonzero().flatten().tolist() == [window], pixel


def test_object_labels_match_brute_force():
    rng = np.random.default_rng(0)
    h, w, stride, ws = 11, 17, 4, 7
    masks = np.zeros((2, 41, 66), dtype=bool)  # smaller than the 44x68 grid
    masks[rng.integers(0, 2, 3), rng.integers(0, 41, 3), rng.integers(0, 66, 3)] = True
    union = masks.any(0)
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    for shift in (0, 3):
        expected = []
        for i in range(hp // ws):
            for j in range(wp // ws):
                hit = False
                for u in range(ws):
                    for v in range(ws):
                        r, c = (i * ws + u + shift) % hp, (j * ws + v + shift) % wp
                        if r < h and c < w:
                            hit |= bool(union[r * stride:(r + 1) * stride,
                                              c * stride:(c + 1) * stride].any())
                expected.append(hit)
        labels = window_object_labels(masks, (h, w), stride, ws, shift)
        assert labels.tolist() == expected
        assert 0 < sum(expected) < len(expected)


def test_object_labels_empty_and_bad_masks():
    empty = np.zeros((0, 40, 40), dtype=bool)
    assert not window_object_labels(empty, (10, 10), 4, 7).any()
    with pytest.raises(ValueError, match='exceed'):
        window_object_labels(np.zeros((1, 48, 40), bool), (10, 10), 4, 7)
    with pytest.raises(ValueError, match=r'\(N, H_img, W_img\)'):
        window_object_labels(np.zeros((40, 40), bool), (10, 10), 4, 7)


# ---------------------------------------------------------------- ROC-AUC


@pytest.mark.parametrize(
    'scores, labels, expected',
    [
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),  # 3 of 4 pairs ordered
        ([1.0, 1.0, 2.0], [0, 1, 1], 0.75),  # one tied pair counts 1/2
        ([3, 3, 3, 3], [1, 0, 1, 0], 0.5),  # all tied
        ([0.2, 0.3, 0.9, 0.8], [0, 0, 1, 1], 1.0),  # perfect
        ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),  # inverse
        ([1, 2, 2, 3, 0], [1, 1, 0, 0, 0], 2.5 / 6),  # (1: 1 of 3) + (2: 1.5 of 3)
    ])
def test_roc_auc_hand_computed(scores, labels, expected):
    assert roc_auc(scores, labels) == pytest.approx(expected)
    assert roc_auc(torch.tensor(scores), torch.tensor(labels).bool()) == \
        pytest.approx(expected)


def test_roc_auc_rejects_one_class_and_bad_input():
    with pytest.raises(ValueError, match='0 negatives'):
        roc_auc([1, 2], [1, 1])
    with pytest.raises(ValueError, match='labels'):
        roc_auc([1, 2, 3], [1, 0])
    with pytest.raises(ValueError, match='finite'):
        roc_auc([1, float('nan')], [1, 0])


# ---------------------------------------------------------------- group maps

LOW = [0.5, 0.25, 0.3, 0.5]
PRUNE = [0.2, 0.25, 0.0, 0.5]


@pytest.fixture(scope='module')
def swin_pair():
    """An mmdet Swin and a MixA-Q Swin (quant off) with the same weights."""
    torch.manual_seed(0)
    ref = SwinTransformer(**NANO)
    model = MixAQSwinTransformer(**NANO, quant=False, low_bit_ratios=LOW, prune_ratios=PRUNE)
    model.load_state_dict(ref.state_dict(), strict=False)
    ref.eval()
    return ref, model.eval()


def test_stage_inputs_and_strides(swin_pair):
    ref, model = swin_pair
    img = torch.randn(2, 3, 100, 130)
    model.set_ratios(0.0, 0.0)  # pruning would change the later stages
    try:
        ref_inputs, inputs = stage_inputs(ref, img), stage_inputs(model, img)
    finally:
        model.set_ratios(LOW, PRUNE)
    assert [hw for _, hw in inputs] == [(25, 33), (13, 17), (7, 9), (4, 5)]
    for (a, hw_a), (b, hw_b) in zip(ref_inputs, inputs):
        assert hw_a == hw_b and a.shape == (2, hw_a[0] * hw_a[1], b.shape[-1])
        torch.testing.assert_close(a, b)
    assert stage_strides(ref) == stage_strides(model) == [4, 8, 16, 32]
    with pytest.raises(TypeError, match='Swin backbone'):
        stage_inputs(torch.nn.Conv2d(3, 3, 1), img)


def test_group_counts_follow_the_backbone_ratios(swin_pair):
    _, model = swin_pair
    maps = window_group_maps(model, torch.randn(1, 3, 160, 230))
    for i, stage_maps in enumerate(maps):
        assert set(stage_maps) == set(PARTITIONS)
        pair = model.pair_index[i][0]
        for m in stage_maps.values():
            counts = tuple(np.bincount(m.ravel(), minlength=3))
            assert counts == group_sizes(m.size, LOW[pair], PRUNE[pair])


def test_group_maps_of_plain_swin_need_a_policy(swin_pair):
    ref, _ = swin_pair
    img = torch.randn(1, 3, 160, 230)
    maps = window_group_maps(ref, img, WindowPolicy(7, 'contrast'), 0.4, 0.1)
    for stage_maps in maps:
        for m in stage_maps.values():
            assert tuple(np.bincount(m.ravel(), minlength=3)) == \
                group_sizes(m.size, 0.4, 0.1)
    with pytest.raises(ValueError, match='pass policy and low_ratio'):
        window_group_maps(ref, img)
    with pytest.raises(ValueError, match='window_size'):
        window_group_maps(ref, img, WindowPolicy(5), 0.5)
    with pytest.raises(ValueError, match=r'\(1, 3, H, W\)'):
        window_group_maps(ref, torch.randn(2, 3, 64, 64), WindowPolicy(7), 0.5)


def test_pruned_windows_are_the_ones_the_backbone_skips(swin_pair):
    """The maps' geometry is the backbone's: tokens of windows marked pruned
    leave each block of stage 1 unchanged, the others do not."""
    _, model = swin_pair
    img = torch.randn(1, 3, 150, 210)
    maps = window_group_maps(model, img)
    seen = {}
    hooks = [
        block.register_forward_hook(
            lambda mod, args, out, j=j: seen.__setitem__(j, (args[0], args[1], out)))
        for j, block in enumerate(model.stages[1].blocks)
    ]
    with torch.no_grad():
        model(img)
    for hook in hooks:
        hook.remove()
    for j, name in enumerate(PARTITIONS):
        x, (h, w), out = seen[j]
        block = model.stages[1].blocks[j]
        tokens = window_map_to_tokens(maps[1][name], 7, block.shift_size)
        pruned = torch.from_numpy(tokens[:h, :w].reshape(-1) == GROUP_PRUNED)
        assert 0 < pruned.sum() < pruned.numel()
        same = (x[0] == out[0]).all(dim=-1)
        assert torch.equal(same, pruned), name


def test_draw_writes_png_of_the_documented_size(swin_pair, tmp_path):
    _, model = swin_pair
    img = torch.randn(1, 3, 96, 128)
    maps = window_group_maps(model, img)
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8)
    out = str(tmp_path / 'groups.png')
    draw_window_groups(image, maps, 7, stage_strides(model), out, panel_size=2.0, dpi=40)
    assert _png_size(out) == (2 * 2 * 40, 4 * 2 * 40)
    with pytest.raises(ValueError, match='uint8'):
        draw_window_groups(image.astype(float), maps, 7, [4, 8, 16, 32], out)
    with pytest.raises(ValueError, match='do not belong together'):
        big = np.zeros((400, 128, 3), np.uint8)
        draw_window_groups(big, maps, 7, [4, 8, 16, 32], out)


# ---------------------------------------------------------------- tools


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """The benchmark detector with random weights, saved as a checkpoint."""
    cfg = Config.fromfile(FP_BENCH_CONFIG)
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    path = str(tmp_path_factory.mktemp('ckpt') / 'random.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


def test_auc_tool_writes_results(tiny_shapes, checkpoint, tmp_path):
    out = str(tmp_path / 'auc.json')
    proc = run_tool([
        'tools/analysis_tools/window_score_auc.py', FP_BENCH_CONFIG, checkpoint, '--num-images',
        '2', '--out', out, '--cfg-options', *data_root_options(tiny_shapes)
    ])
    result = json.load(open(out))
    assert result['num_images'] == 2 and result['window_size'] == 7
    rows = result['rows']
    assert [(r['score'], r['stage'], r['partition']) for r in rows] == [(s, i, p)
                                                                        for s in ('l2', 'contrast')
                                                                        for i in range(4)
                                                                        for p in PARTITIONS]
    # 320 px: 80, 40, 20, 10 tokens -> 12x12, 6x6, 3x3, 2x2 windows per image
    assert [r['num_windows'] for r in rows[:8:2]] == [288, 72, 18, 8]
    assert [r['stride'] for r in rows[:8:2]] == [4, 8, 16, 32]
    for r in rows:
        assert 0 < r['num_object_windows'] < r['num_windows']
        assert 0.0 <= r['auc'] <= 1.0 and 0.0 <= r['auc_image_mean'] <= 1.0
    assert 'contrast' in proc.stdout and 'AUC/img' in proc.stdout


def test_visualizer_draws_mixaq_groups(tiny_shapes, checkpoint, tmp_path):
    out = str(tmp_path / 'windows.png')
    image = osp.join(tiny_shapes, 'val', '000000.jpg')
    proc = run_tool([
        'tools/analysis_tools/visualize_windows.py', FP_BENCH_CONFIG, checkpoint, image, '--out',
        out, '--prune-ratio', '0.25', '--score', 'contrast', '--cfg-options',
        'model.backbone.type=MixAQSwinTransformer', 'model.backbone.quant=False',
        'model.backbone.low_bit_ratios=0.5'
    ])
    assert _png_size(out) == (800, 1600)
    assert "score='contrast'" in proc.stdout
    # stage 0: 144 windows, low 0.5 from the backbone, prune 0.25 from the flag
    assert 'stage 0 (stride 4) regular: 36 high, 72 low, 36 pruned' in proc.stdout


def test_visualizer_rejects_missing_image(checkpoint, tmp_path):
    missing = str(tmp_path / 'none.jpg')
    proc = run_tool([
        'tools/analysis_tools/visualize_windows.py', FP_BENCH_CONFIG, checkpoint, missing, '--out',
        str(tmp_path / 'x.png')
    ],
                    check=False)
    assert proc.returncode != 0
    assert f'image file {missing} does not exist' in proc.stderr


def test_speed_benchmark_runs_tiny(tmp_path):
    out = str(tmp_path / 'speed.json')
    proc = run_tool([
        'benchmarks/backbone_speed.py', '--tiny', '--shapes', '64x64', '--batch-sizes', '1', '2',
        '--repeats', '1', '--warmup', '0', '--threads', '1', '--calib-shape', '256x256', '--json',
        out
    ])
    result = json.load(open(out))
    cases = {}
    for r in result['rows']:
        cases.setdefault((r['shape'], r['batch'], r['precision']), []).append(r)
    assert list(cases) == [('64x64', 1, 'fp32'), ('64x64', 2, 'fp32')]
    for rows in cases.values():
        assert [r['variant'] for r in rows][0] == 'mmdet_fp' and len(rows) == 7
        assert len({r['variant'] for r in rows}) == 7
        assert rows[0]['ratio'] == 1.0
    assert all(r['median_ms'] > 0 for r in result['rows'])
    # the cpu targets check batch 1 only, one limit per variant at 64x64
    assert {c['batch'] for c in result['checks']} == {1}
    assert sorted(c['variant'] for c in result['checks']) == [
        'mixaq_float', 'mixaq_float_low0.5', 'mixaq_float_prune0.5', 'mixaq_fq_low0.5',
        'mixaq_twobranch_low0.5'
    ]
    lines = proc.stdout.splitlines()
    assert ['shape', 'batch', 'precision', 'variant', 'median', 'ms',
            'ratio'] in [line.split() for line in lines]
    assert any(line.startswith('PASS') or line.startswith('FAIL')
               for line in lines) and 'mixaq_fq_low0.5' in proc.stdout


def test_speed_ratios_pair_each_round_with_its_reference():
    """A slow spell of the machine in one round slows both sides of that round:
    the paired ratio keeps the true 1.10x where the ratio of medians would not."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('backbone_speed',
                                                  osp.join(REPO, 'benchmarks/backbone_speed.py'))
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    reference = [100.0, 300.0, 300.0, 100.0, 100.0]
    variant = [110.0, 330.0, 330.0, 330.0, 110.0]  # round 3: the variant alone was slow
    rows = speed.summarize(
        speed.Case((64, 64), 1, 'fp32'), {
            speed.REFERENCE: reference,
            'mixaq_float': variant
        })
    assert rows[1]['median_ms'] == 330.0 and rows[1]['ratio'] == pytest.approx(1.1)
    assert rows[0]['ratio'] == 1.0
    with pytest.raises(ValueError):
        speed.paired_ratio(variant, reference[:4])


def test_integer_speed_benchmark_runs_tiny(tmp_path):
    """benchmarks/integer_speed.py end to end on the nano Swin: every backbone
    row, the products-alone row and one layer row per product shape."""
    out = str(tmp_path / 'integer_speed.json')
    run_tool([
        'benchmarks/integer_speed.py', '--tiny', '--shapes', '64x64', '--repeats', '1', '--warmup',
        '0', '--threads', '1', '--layers', '--json', out
    ])
    result = json.load(open(out))
    backbone = [r for r in result['rows'] if r['part'] == 'backbone']
    assert [r['variant'] for r in backbone] == [
        'mmdet_fp32', 'mmdet_bf16', 'fake_quant_w4a8', 'int_w8a8', 'int_w4a8', 'int_mixaq_a8a4_0.5',
        'int_prune0.5', 'int8_products_w4a8'
    ]
    assert backbone[0]['ratio'] == 1.0 and all(r['median_ms'] > 0 for r in backbone)
    layers = [r for r in result['rows'] if r['part'] == 'layer']
    assert layers and len({r['layer'] for r in layers}) == len(layers)
    assert all(r['fastest'] in ('int8', 'fp32', 'bf16') for r in layers)
