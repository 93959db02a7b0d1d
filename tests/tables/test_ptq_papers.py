"""The PTQ papers' COCO table (``tools/run_demo.py --table ptq-papers``): its
rows as data, the published reference column, the checkpoints it is given
and its commands on 8 GPUs."""
import importlib.util
import os.path as osp

import pytest

from mixaq_mmdet.tables import PTQ_PAPERS, format_table, published_figures
from mixaq_mmdet.tables.ptq_papers import BASES, DETECTORS, MIXAQ_BASE
from ..conftest import REPO, run_tool
from .test_tables import _record


def _run_demo():
    spec = importlib.util.spec_from_file_location('run_demo',
                                                  osp.join(REPO, 'tools', 'run_demo.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_detector_has_fp_every_base_at_w4a4_and_w6a6_and_mixaq_on_the_best_base():
    names = set(PTQ_PAPERS.row_names)
    for detector in DETECTORS:
        d = detector.name
        expected = {
            f'{d}_fp', f'{d}_{MIXAQ_BASE}_w4a8', f'{d}_mixaq_w4a8a4_1.24x',
            f'{d}_mixaq_w4a8a4_1.35x'
        }
        expected |= {f'{d}_{base}_{bits}' for base in BASES for bits in ('w4a4', 'w6a6')}
        assert expected <= names
        for row in PTQ_PAPERS.rows:
            if row.name.startswith(f'{d}_'):
                assert row.model == f'fp_{d}'
                assert osp.isfile(osp.join(PTQ_PAPERS.config_root, row.config)), row.config
        ptq4vit = [r for r in PTQ_PAPERS.rows if r.name.startswith(f'{d}_ptq4vit')]
        assert [r.config
                for r in ptq4vit] == [f'ptq/ptq_repqvit_{b}_{d}.py' for b in ('w4a4', 'w6a6')]
        mixaq = [r for r in PTQ_PAPERS.rows if r.name.startswith(f'{d}_mixaq')]
        assert all(
            r.config.startswith('ptq/ptq_mixaq_') and r.base == f'{d}_{MIXAQ_BASE}_w4a8'
            for r in mixaq)
    assert len(PTQ_PAPERS.rows) == 4 * 10


def test_the_given_models_are_the_swin_object_detection_releases():
    for training in PTQ_PAPERS.trainings:
        assert training.checkpoint.startswith(
            'https://github.com/SwinTransformer/storage/releases/download/v1.0.2/')
        header = open(osp.join(PTQ_PAPERS.config_root, training.config)).read()
        assert training.checkpoint in header  # the config names its checkpoint


def test_the_mixaq_rows_run_on_the_base_that_is_best_in_the_published_w4a4_figures():
    """The base is chosen from the published figures (never from val results
    of this table): the highest mean over the detectors of each base's own
    W4A4 box AP (RepQ-ViT's Swin-S Mask R-CNN figure is higher than UQ-ViT's,
    but its reruns are lower)."""
    means = {}
    for base, paper in BASES.items():
        figures = [
            p.box for d in DETECTORS for p in d.published.get(f'{base}_w4a4', ())
            if p.source == paper
        ]
        if len(figures) == len(DETECTORS):
            means[base] = sum(figures) / len(figures)
    assert max(means, key=means.get) == MIXAQ_BASE and len(means) == 2


def test_the_ptq4vit_options_build_twin_uniform_quantizers_after_softmax_and_gelu():
    """PTQ4ViT's rows are RepQ-ViT's configs with options: what they build."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    row = next(r for r in PTQ_PAPERS.rows if r.name == 'mask-rcnn_swin-t_ptq4vit_w6a6')
    cfg = Config.fromfile(osp.join(PTQ_PAPERS.config_root, row.config))
    cfg.merge_from_dict(dict(row.evaluated_options))
    cfg.model.backbone.depths = [2, 2, 2, 2]  # the quantizers, not the size, are checked
    backbone = MODELS.build(cfg.model.backbone)
    block = backbone.stages[0].blocks[0]
    twins = {
        name
        for name, q in block.named_modules() if type(q).__name__ == 'TwinUniformQuantizer'
    }
    # the softmax quantizer is the first operand's of attn @ v
    assert twins == {
        f'branches.{b}.{p}'
        for b in ('high', 'low')
        for p in ('av.quantizer_a', 'fc2_in')
    }
    modes = {q.mode for q in block.modules() if type(q).__name__ == 'TwinUniformQuantizer'}
    assert modes == {'softmax', 'gelu'} and backbone.a_bits == (6, 6)


def test_the_published_figures_are_printed_beside_the_rows_marked_as_published():
    published = published_figures(PTQ_PAPERS)
    text = format_table([
        _record('mask-rcnn_swin-t_repqvit_w4a4', bbox_mAP=12.34),
        _record('mask-rcnn_swin-t_ptq4vit_w4a4', bbox_mAP=12.34)
    ], published)
    header, _, repq, ptq4vit = text.splitlines()
    assert 'published' in header and 'not run here' in header
    assert '36.1 / 36.0 RepQ-ViT' in repq and '38.9 / 38.1 APHQ-ViT' in repq
    assert repq.split()[1] == '12.34'  # the row's own figure stays in its column
    assert ptq4vit.rstrip().endswith('-')  # no published figure
    # a table without published figures prints no such column
    assert 'published' not in format_table([_record('x')]).splitlines()[0]


def test_checkpoints_are_given_per_model_and_a_bare_file_needs_one_given_model():
    run_demo = _run_demo()
    given = run_demo.given_checkpoints(PTQ_PAPERS,
                                       ['fp_cascade-mask-rcnn_swin-s=/data/cascade_s.pth'])
    assert given == {'fp_cascade-mask-rcnn_swin-s': '/data/cascade_s.pth'}
    with pytest.raises(SystemExit, match='has 4 given models'):
        run_demo.given_checkpoints(PTQ_PAPERS, ['mask_rcnn_swin_tiny_patch4_window7.pth'])
    with pytest.raises(SystemExit, match="'fp_swin-b' is not a given model"):
        run_demo.given_checkpoints(PTQ_PAPERS, ['fp_swin-b=x.pth'])
    from mixaq_mmdet.tables import COCO
    assert run_demo.given_checkpoints(COCO, ['https://host/a.pth']) == {'fp': 'https://host/a.pth'}


def test_the_table_on_8_gpus_launches_every_row_on_its_release(tmp_path):
    """``--table ptq-papers --gpus 8 --dry-run``: one dist_test.sh per row on 8
    GPUs, each on its detector's release, nothing trained."""
    out = run_tool([
        'tools/run_demo.py', '--table', 'ptq-papers', '--gpus', '8', '--dry-run', '--work-dir',
        str(tmp_path)
    ]).stdout
    commands = [line.split('$ ', 1)[1] for line in out.splitlines() if line.startswith('[table] $')]
    assert not any('dist_train.sh' in c for c in commands)
    for row in PTQ_PAPERS.rows:
        mine = [c for c in commands if f'configs/ptq_papers/{row.config} ' in c]
        assert mine, row.name
        release = PTQ_PAPERS.training(row.model).checkpoint
        assert all(c.startswith('bash tools/dist_test.sh ') and f' {release} 8' in c
                   for c in mine), mine
