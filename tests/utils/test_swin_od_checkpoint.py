"""The releases of microsoft's Swin-Transformer-Object-Detection load as they are.

Fixtures in that exact layout are written from full-size detectors of known
weights (:mod:`mixaq_mmdet.utils.swin_od_fixture`). Converting and
un-converting with the same code would prove nothing about the merge order of
``PatchMerging``, so Microsoft's merge (and its relative position index) is
written out here, as its ``swin_transformer.py`` computes it, and mmdet 3.3's
modules must compute the same from the converted weights. The head keys are
listed here as mmdet 2.11's modules name them (Microsoft's fork: FPN's
``lateral_convs``/``fpn_convs``, RPNHead's ``rpn_conv``/``rpn_cls``/``rpn_reg``,
ConvFCBBoxHead's ``shared_convs`` (ConvModule ``conv`` + ``bn``: mmcv 1.x's
abbreviation of SyncBatchNorm) and ``shared_fcs``, FCNMaskHead's
``convs``/``upsample``/``conv_logits``); a strict load proves mmdet 3.3 uses
every one of them.
"""
import functools
import hashlib
import http.server
import os
import os.path as osp
import subprocess
import sys
import threading
from typing import List, Tuple

import pytest
import torch
import torch.nn.functional as F
from mmdet.models.backbones.swin import SwinTransformer
from mmdet.models.layers import PatchMerging
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mixaq_mmdet.engine import MixAQRunner
from mixaq_mmdet.engine.checkpoints import (check_base_model, check_checkpoint_layout,
                                            check_float_checkpoint)
from mixaq_mmdet.engine.converted_checkpoints import checkpoint_to_load
from mixaq_mmdet.utils.swin_od_checkpoint import (SWIN_OD_RELEASES, is_swin_od_checkpoint,
                                                  mmdet_to_swin_od, swin_od_to_mmdet)
from mixaq_mmdet.utils.swin_od_fixture import (SWIN_OD_META_KEYS, build_swin_od_detector,
                                               seeded_state_dict, write_swin_od_checkpoint)
from ..conftest import REPO

CONFIGS = osp.join(REPO, 'configs/ptq_papers')
MASK_T = osp.join(CONFIGS, 'mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py')
CASCADE_S = osp.join(CONFIGS,
                     'cascade-mask-rcnn_swin-s-p4-w7_fpn_4conv1f-giou_amp-ms-crop-3x_coco.py')
#: What the PTQ configs of these detectors name as base_model.
BASE_MODEL_MASK_T = [
    'mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco',
    'mask_rcnn_swin_tiny_patch4_window7'
]


def microsoft_patch_merging(x: torch.Tensor, hw: Tuple[int, int], reduction: torch.Tensor,
                            norm_weight: torch.Tensor, norm_bias: torch.Tensor) -> torch.Tensor:
    """Swin-Transformer-Object-Detection's PatchMerging.forward: pad to even,
    concatenate x0, x1, x2, x3, LayerNorm, then the bias-free reduction."""
    (h, w), (b, _, c) = hw, x.shape
    x = x.view(b, h, w, c)
    x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
    x0, x1 = x[:, 0::2, 0::2, :], x[:, 1::2, 0::2, :]
    x2, x3 = x[:, 0::2, 1::2, :], x[:, 1::2, 1::2, :]
    x = torch.cat([x0, x1, x2, x3], -1).view(b, -1, 4 * c)
    x = F.layer_norm(x, (4 * c, ), norm_weight, norm_bias)
    return F.linear(x, reduction)


def microsoft_relative_position_index(window: int) -> torch.Tensor:
    """Swin-Transformer-Object-Detection's WindowAttention buffer."""
    axis = torch.arange(window)
    coords = torch.stack(torch.meshgrid([axis, axis], indexing='ij'))
    flat = torch.flatten(coords, 1)
    relative = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    relative[:, :, 0] += window - 1
    relative[:, :, 1] += window - 1
    relative[:, :, 0] *= 2 * window - 1
    return relative.sum(-1)


def mmdet_211_head_keys(cascade: bool) -> List[str]:
    """Every neck and head key of the Mask R-CNN / Cascade Mask R-CNN of
    Swin-Transformer-Object-Detection, as mmdet 2.11 names them."""
    wb = ('weight', 'bias')
    bn = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
    keys = [
        f'neck.{m}.{i}.conv.{p}' for m in ('lateral_convs', 'fpn_convs') for i in range(4)
        for p in wb
    ]
    keys += [f'rpn_head.{m}.{p}' for m in ('rpn_conv', 'rpn_cls', 'rpn_reg') for p in wb]
    stages = [f'.{s}' for s in range(3)] if cascade else ['']
    for s in stages:
        bbox = f'roi_head.bbox_head{s}'
        if cascade:  # 4conv1f: 4 shared convs (SyncBN, no conv bias), 1 shared fc
            keys += [f'{bbox}.shared_convs.{i}.conv.weight' for i in range(4)]
            keys += [f'{bbox}.shared_convs.{i}.bn.{p}' for i in range(4) for p in bn]
        keys += [f'{bbox}.shared_fcs.{i}.{p}' for i in range(1 if cascade else 2) for p in wb]
        keys += [f'{bbox}.{m}.{p}' for m in ('fc_cls', 'fc_reg') for p in wb]
        mask = f'roi_head.mask_head{s}'
        keys += [f'{mask}.convs.{i}.conv.{p}' for i in range(4) for p in wb]
        keys += [f'{mask}.{m}.{p}' for m in ('upsample', 'conv_logits') for p in wb]
    return keys


@pytest.fixture(scope='module')
def mask_t(tmp_path_factory):
    """The Swin-T Mask R-CNN release in its layout, and the detector it holds."""
    model = build_swin_od_detector(MASK_T, seed=0)
    path = str(tmp_path_factory.mktemp('swin_od') / 'mask_rcnn_swin_tiny_patch4_window7.pth')
    return model, write_swin_od_checkpoint(path, MASK_T, model=model)


@pytest.fixture(scope='module')
def cascade_s(tmp_path_factory):
    """The Swin-S Cascade Mask R-CNN release in its layout, and its detector."""
    model = build_swin_od_detector(CASCADE_S, seed=0)
    path = str(
        tmp_path_factory.mktemp('swin_od') / 'cascade_mask_rcnn_swin_small_patch4_window7.pth')
    return model, write_swin_od_checkpoint(path, CASCADE_S, model=model)


def _build(config: str, seed: int) -> torch.nn.Module:
    """``config``'s detector with other weights than the fixtures'."""
    cfg = Config.fromfile(config).model
    cfg.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg)
    model.load_state_dict(seeded_state_dict(model, seed))
    return model.eval()


@pytest.mark.parametrize('hw', [(8, 8), (7, 9)])
def test_mmdet_patch_merging_with_converted_weights_is_microsofts_merge(hw):
    c = 6
    generator = torch.Generator().manual_seed(0)
    ms = {
        'backbone.layers.0.downsample.reduction.weight':
        torch.randn(2 * c, 4 * c, generator=generator),
        'backbone.layers.0.downsample.norm.weight': 1 + torch.randn(4 * c, generator=generator),
        'backbone.layers.0.downsample.norm.bias': torch.randn(4 * c, generator=generator),
    }
    merging = PatchMerging(c, 2 * c, norm_cfg=dict(type='LN'))
    converted = swin_od_to_mmdet(ms)
    merging.load_state_dict({k.split('downsample.')[1]: v for k, v in converted.items()})
    x = torch.randn(2, hw[0] * hw[1], c, generator=generator)
    expected = microsoft_patch_merging(x, hw, *ms.values())
    out, out_hw = merging(x, hw)
    assert tuple(out_hw) == ((hw[0] + 1) // 2, (hw[1] + 1) // 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # the check can fail: Microsoft's weights without the reorder compute another merge
    merging.reduction.weight.data.copy_(ms['backbone.layers.0.downsample.reduction.weight'])
    assert not torch.allclose(merging(x, hw)[0], expected, atol=1e-2)


def test_mmdet_relative_position_index_is_microsofts():
    swin = SwinTransformer(depths=(2, 2, 2, 2), init_cfg=None)
    index = swin.stages[0].blocks[0].attn.w_msa.relative_position_index
    assert torch.equal(index, microsoft_relative_position_index(7))


@pytest.mark.parametrize('detector, cascade', [('mask_t', False), ('cascade_s', True)])
def test_fixture_is_in_the_release_layout(detector, cascade, request):
    model, path = request.getfixturevalue(detector)
    # the size Swin-Transformer-Object-Detection's README gives: 48M, 107M
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == (107 if cascade else 48)
    checkpoint = torch.load(path, map_location='cpu')
    assert list(checkpoint) == ['meta', 'state_dict', 'optimizer', 'amp']
    meta = checkpoint['meta']
    release = SWIN_OD_RELEASES[3 if cascade else 0]
    assert tuple(meta) == SWIN_OD_META_KEYS
    assert meta['mmdet_version'].startswith('2.11.0') and meta['mmcv_version'].startswith('1.')
    assert meta['exp_name'] == release.exp_name and meta['epoch'] == 36
    assert len(meta['CLASSES']) == 80 and meta['CLASSES'][0] == 'person'
    assert 'SwinTransformer' in meta['config'] and 'embed_dim=96' in meta['config']
    assert list(checkpoint['amp']) == ['loss_scaler0']
    assert len(checkpoint['optimizer']['param_groups']) == len(list(model.parameters()))
    state = checkpoint['state_dict']
    depths = (2, 2, 18, 2) if cascade else (2, 2, 6, 2)
    assert not any(k.startswith('backbone.stages.') for k in state)
    for i, depth in enumerate(depths):
        assert f'backbone.layers.{i}.blocks.{depth - 1}.attn.qkv.weight' in state
        assert f'backbone.layers.{i}.blocks.0.mlp.fc1.weight' in state
        assert f'backbone.norm{i}.weight' in state
    assert f'backbone.layers.{len(depths)}.blocks.0.attn.qkv.weight' not in state
    assert 'backbone.patch_embed.proj.weight' in state
    assert sorted(k for k in state if not k.startswith('backbone.')) == \
        sorted(mmdet_211_head_keys(cascade))
    # Microsoft's merge with the file's weights is what the detector computes
    down = model.backbone.stages[0].downsample
    x = torch.randn(1, 8 * 8, 96, generator=torch.Generator().manual_seed(1))
    expected = microsoft_patch_merging(x, (8, 8),
                                       state['backbone.layers.0.downsample.reduction.weight'],
                                       state['backbone.layers.0.downsample.norm.weight'],
                                       state['backbone.layers.0.downsample.norm.bias'])
    with torch.no_grad():
        torch.testing.assert_close(down(x, (8, 8))[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('detector, config', [('mask_t', MASK_T), ('cascade_s', CASCADE_S)])
def test_converted_release_loads_strictly_and_computes_the_same(detector, config, request,
                                                                tmp_path):
    model, path = request.getfixturevalue(detector)
    converted_file = checkpoint_to_load(path, cache_dir=str(tmp_path))
    assert converted_file != path and osp.dirname(converted_file) == str(tmp_path)
    converted = torch.load(converted_file, map_location='cpu', weights_only=True)
    assert not is_swin_od_checkpoint(converted)
    meta = converted['meta']
    assert meta['converted_from']['source'] == path
    assert meta['converted_from']['dropped'] == ['optimizer', 'amp']
    assert meta['dataset_meta']['classes'] == meta['CLASSES']
    assert meta['exp_name'].startswith('cascade' if 'cascade' in detector else 'mask')
    fresh = _build(config, seed=1)
    result = fresh.load_state_dict(converted['state_dict'], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in fresh.state_dict().items())
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs, ref = fresh.backbone(image), model.backbone(image)
    assert len(outs) == 4 and all(torch.equal(a, b) for a, b in zip(outs, ref))


def test_conversion_is_written_once_and_reused(mask_t, tmp_path, fp_checkpoint):
    _, path = mask_t
    first = checkpoint_to_load(path, cache_dir=str(tmp_path))
    stat = os.stat(first)
    digest = hashlib.sha256(open(first, 'rb').read()).hexdigest()
    assert checkpoint_to_load(path, cache_dir=str(tmp_path)) == first
    assert os.stat(first).st_mtime_ns == stat.st_mtime_ns
    assert hashlib.sha256(open(first, 'rb').read()).hexdigest() == digest
    assert os.listdir(tmp_path) == [osp.basename(first)]
    # an mmdet 3.x checkpoint is loaded as it is
    assert checkpoint_to_load(fp_checkpoint, cache_dir=str(tmp_path)) == fp_checkpoint


def test_a_release_url_is_downloaded_and_converted_once(mask_t, tmp_path, monkeypatch):
    """``tools/test.py CONFIG URL``: mmengine downloads the release into its
    cache, the conversion lands next to it, and a later load needs no network."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setenv('no_proxy', '127.0.0.1')
    _, path = mask_t
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=osp.dirname(path))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f'http://127.0.0.1:{server.server_port}/{osp.basename(path)}'
    try:
        converted = checkpoint_to_load(url)
    finally:
        server.shutdown()
        server.server_close()
    cache = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    assert sorted(os.listdir(cache)) == sorted([osp.basename(path), osp.basename(converted)])
    assert osp.basename(converted).startswith('mask_rcnn_swin_tiny_patch4_window7_mmdet3-')
    assert checkpoint_to_load(url) == converted  # the server is gone
    checkpoint = torch.load(converted, map_location='cpu')
    assert checkpoint['meta']['converted_from']['source'] == url


def test_runner_loads_the_release_by_its_conversion_and_refuses_another_detector(
        mask_t, cascade_s, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    model, path = mask_t
    cfg = Config.fromfile(MASK_T)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.load_from = path
    cfg.model.backbone.init_cfg = None
    runner = MixAQRunner.from_cfg(cfg)
    runner.load_or_resume()
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in runner.model.state_dict().items())
    cache = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    converted = checkpoint_to_load(path)  # what PTQLoop.check_checkpoint loads
    assert osp.dirname(converted) == str(cache) and os.listdir(cache) == [osp.basename(converted)]
    checkpoint = torch.load(converted, map_location='cpu')
    assert check_base_model(checkpoint, path, BASE_MODEL_MASK_T) == SWIN_OD_RELEASES[0].exp_name
    # the Swin-S Cascade release under the Swin-T Mask R-CNN config
    _, other = cascade_s
    with pytest.raises(
            ValueError,
            match=r"cascade_mask_rcnn_swin_small_patch4_window7.pth is "
            r"'cascade_mask_rcnn_swin_small_patch4_window7_mstrain_480-800_giou_4conv1f_adamw_"
            r"3x_coco.py' \(meta\['exp_name'\]\).*does not fit this config's MaskRCNN "
            r'\(mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py\): keys that map to nothing '
            r'in the model: \d+ \(e.g. backbone.stages.2.blocks.6.'):
        runner.load_checkpoint(other)
    other_checkpoint = torch.load(checkpoint_to_load(other), map_location='cpu')
    with pytest.raises(
            ValueError,
            match=r"is 'cascade_mask_rcnn_swin_small.*but this config "
            r"quantizes 'mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco'"):
        check_base_model(other_checkpoint, other, BASE_MODEL_MASK_T)


def test_release_keys_that_map_to_nothing_are_refused(mask_t, tmp_path):
    model, path = mask_t
    state = mmdet_to_swin_od(model.state_dict())
    state['backbone.absolute_pos_embed'] = torch.zeros(1, 96, 56, 56)
    state['backbone.layers.0.blocks.0.attn.extra.weight'] = torch.zeros(1)
    with pytest.raises(
            ValueError,
            match=r"2 of the checkpoint's \d+ keys map to nothing in mmdet 3.3 \(e.g. "
            r'backbone.absolute_pos_embed, backbone.layers.0.blocks.0.attn.extra.weight\).*'
            r'Swin-Transformer-Object-Detection layout has backbone.patch_embed'):
        swin_od_to_mmdet(state)
    bad = str(tmp_path / 'bad.pth')
    torch.save(dict(meta={}, state_dict=state), bad)
    with pytest.raises(ValueError, match='2 of the checkpoint'):
        checkpoint_to_load(bad, cache_dir=str(tmp_path / 'cache'))


def test_checkpoints_of_another_layout_are_refused(mask_t):
    model, path = mask_t
    # Microsoft's classification checkpoint: no detector, no 'backbone.' prefix
    classification = {
        'patch_embed.proj.weight': torch.zeros(96, 3, 4, 4),
        'layers.0.blocks.0.attn.qkv.weight': torch.zeros(288, 96),
        'norm.weight': torch.zeros(768),
        'head.weight': torch.zeros(1000, 768)
    }
    with pytest.raises(
            ValueError,
            match=r"swin_tiny.pth is in neither layout that MaskRCNN \(cfg.py\) loads: its 4 "
            r"keys \(e.g. patch_embed.proj.weight, layers.0.blocks.0.attn.qkv.weight, "
            r"norm.weight\) are not mmdet 3.x's Swin keys \(backbone.patch_embed.projection.*"
            r"Swin-Transformer-Object-Detection's \(backbone.patch_embed.\{proj,norm\}"):
        check_checkpoint_layout(model, classification, 'swin_tiny.pth', 'cfg.py')
    # mmdet 3.x or converted keys pass; a release still in its layout is refused
    check_checkpoint_layout(model, dict(state_dict=model.state_dict()), 'fp.pth')
    raw = torch.load(path, map_location='cpu', mmap=True)
    for check in (check_float_checkpoint, check_checkpoint_layout):
        with pytest.raises(
                ValueError,
                match='Swin-Transformer-Object-Detection layout, not '
                "converted.*MixAQRunner.*swin_od_to_mmdet.py"):
            check(model, raw, path)


def test_converter_tool_writes_the_conversion(mask_t, tmp_path):
    _, path = mask_t
    dst = str(tmp_path / 'converted.pth')
    subprocess.run(
        [sys.executable,
         osp.join(REPO, 'tools/model_converters/swin_od_to_mmdet.py'), path, dst],
        check=True,
        cwd=REPO)
    written = torch.load(dst, map_location='cpu')
    cached = torch.load(checkpoint_to_load(path, cache_dir=str(tmp_path / 'c')), map_location='cpu')
    assert list(written['state_dict']) == list(cached['state_dict'])
    assert all(torch.equal(v, cached['state_dict'][k]) for k, v in written['state_dict'].items())
    assert written['meta']['converted_from']['source'] == path
