"""RatioEvaluator on a subset of a split: the metric scores exactly the images
evaluated, the subset is bounded, and memory does not grow past what is
documented (the held images, the proxy's reference budget)."""
import json
import os.path as osp

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.runner import Runner
from mmengine.structures import InstanceData

from mixaq_mmdet.search import DEFAULT_SEARCH_IMAGES, Candidate, RatioEvaluator
from ..conftest import REPO, ptq_options, run_tool
from .test_detector_search import _config


def _uniform(ratio, pairs=4):
    return Candidate((ratio, ) * pairs, (0.0, ) * pairs)


@pytest.fixture(scope='module')
def model(tiny_shapes, fp_checkpoint, tmp_path_factory):
    """A W4 A8/A4 detector calibrated at low-bit ratio 0.5 (random weights)."""
    cfg = _config(tiny_shapes, tmp_path_factory.mktemp('subset'), fp_checkpoint)
    runner = Runner.from_cfg(cfg)
    runner.test()
    return runner.test_loop.model


def _train_dataset(root, ann_file='annotations/instances_train.json'):
    from mmdet.registry import DATASETS
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, 'configs/benchmark/ptq/ptq_mixaq_w4a8a4_shapes.py'))
    dataset = cfg.test_cfg.calib_dataloader.dataset
    dataset.update(data_root=root.rstrip('/') + '/', ann_file=ann_file)
    return DATASETS.build(dataset)


def _noisy_truth(batch):
    """Predictions made from each image's ground truth, jittered and with
    seeded scores, plus one false positive: an mAP strictly between 0 and 1
    that depends on which images are scored."""
    results = []
    for sample in batch['data_samples']:
        gt = sample.gt_instances
        boxes = getattr(gt.bboxes, 'tensor', gt.bboxes).float()
        scale = boxes.new_tensor(sample.scale_factor).repeat(2)
        generator = torch.Generator().manual_seed(int(sample.img_id))
        boxes = boxes / scale + 6 * torch.randn(boxes.shape, generator=generator)
        boxes = torch.cat([boxes, boxes.new_tensor([[0., 0., 40., 40.]])])
        labels = torch.cat([gt.labels, gt.labels.new_tensor([0])])
        result = DetDataSample(metainfo=sample.metainfo)
        result.pred_instances = InstanceData(
            bboxes=boxes, labels=labels, scores=torch.rand(len(boxes), generator=generator))
        results.append(result)
    return results


def test_map_on_a_subset_equals_map_with_an_annotation_file_of_only_those_images(
        model, tiny_shapes, tmp_path, monkeypatch):
    monkeypatch.setattr(model, 'test_step', _noisy_truth)
    subset = RatioEvaluator(model, _train_dataset(tiny_shapes), num_images=3, seed=2)
    assert subset.num_images == 3
    ann = json.load(open(osp.join(tiny_shapes, 'annotations/instances_train.json')))
    assert len(ann['images']) == 8  # the file lists more images than the subset
    ids = set(subset.img_ids)
    own = dict(
        ann,
        images=[i for i in ann['images'] if i['id'] in ids],
        annotations=[a for a in ann['annotations'] if a['image_id'] in ids])
    own_file = tmp_path / 'instances_subset.json'
    own_file.write_text(json.dumps(own))
    alone = RatioEvaluator(model, _train_dataset(tiny_shapes, str(own_file)))
    assert alone.img_paths == subset.img_paths
    expected = alone.evaluate(_uniform(0.5))['coco/bbox_mAP']
    assert 0.1 < expected < 0.95
    assert subset.evaluate(_uniform(0.5))['coco/bbox_mAP'] == expected


def test_perfect_predictions_on_a_subset_score_one(model, tiny_shapes, monkeypatch):
    """The issue's toy check: right on every image evaluated is mAP 1, whatever
    else the annotation file lists."""

    def truth(batch):
        results = _noisy_truth(batch)
        for sample, result in zip(batch['data_samples'], results):
            gt = sample.gt_instances
            boxes = getattr(gt.bboxes, 'tensor', gt.bboxes).float()
            scale = boxes.new_tensor(sample.scale_factor).repeat(2)
            result.pred_instances = InstanceData(
                bboxes=boxes / scale, labels=gt.labels, scores=torch.ones(len(boxes)))
        return results

    monkeypatch.setattr(model, 'test_step', truth)
    one = RatioEvaluator(model, _train_dataset(tiny_shapes), num_images=1, seed=0)
    assert one.evaluate(_uniform(0.5))['coco/bbox_mAP'] == 1.0


def test_subset_size_is_bounded_and_checked(model, tiny_shapes):
    dataset = _train_dataset(tiny_shapes)
    assert RatioEvaluator(model, dataset, max_images=5).num_images == 5
    assert RatioEvaluator(model, dataset, max_images=100).num_images == 8
    assert DEFAULT_SEARCH_IMAGES == 256
    with pytest.raises(ValueError, match=r'num_images=9 is more than the 8 images'):
        RatioEvaluator(model, dataset, num_images=9)
    with pytest.raises(
            ValueError,
            match=r'num_images=7 is more than the 6 images .*'
            r'excluding the calibration images'):
        RatioEvaluator(
            model,
            dataset,
            num_images=7,
            exclude=[dataset.get_data_info(i)['img_path'] for i in (0, 1)])
    with pytest.raises(ValueError, match='max_images must be a positive int'):
        RatioEvaluator(model, dataset, max_images=0)


def test_streamed_images_give_the_held_result(model, tiny_shapes):
    dataset = _train_dataset(tiny_shapes)
    held = RatioEvaluator(model, dataset, batch_size=3, metrics=('bbox', 'segm'))
    streamed = RatioEvaluator(
        model, dataset, batch_size=3, metrics=('bbox', 'segm'), hold_images=False)
    assert streamed.batches() is not streamed.batches()  # loaded again, nothing kept
    assert streamed.img_shapes == held.img_shapes
    assert streamed.evaluate(_uniform(0.3)) == held.evaluate(_uniform(0.3))


def test_reference_features_stay_within_their_budget(model, tiny_shapes):
    """Batches past the budget recompute their float features: the same
    distortion, with at most the budget stored."""
    dataset = _train_dataset(tiny_shapes)
    unbounded = RatioEvaluator(model, dataset, batch_size=1)
    expected = unbounded.feature_distortion(_uniform(0.5))
    per_image = unbounded.reference_bytes / 8
    assert per_image > 0
    budget_mb = 2.5 * per_image / 2**20
    bounded = RatioEvaluator(model, dataset, batch_size=1, reference_budget_mb=budget_mb)
    assert bounded.feature_distortion(_uniform(0.5)) == expected
    assert bounded.reference_bytes == 2 * per_image <= budget_mb * 2**20
    with pytest.raises(ValueError, match='reference_budget_mb must be >= 0'):
        RatioEvaluator(model, dataset, reference_budget_mb=-1)


def test_search_tool_refuses_a_subset_larger_than_the_split(tiny_shapes, fp_checkpoint, tmp_path):
    proc = run_tool([
        'tools/search_ratios.py',
        osp.join(REPO,
                 'configs/benchmark/ptq/ptq_mixaq_w4a8a4_shapes.py'), fp_checkpoint, '--work-dir',
        str(tmp_path), '--target-speedup', '1.3', '--search-images', '50', '--no-val',
        '--cfg-options', *ptq_options(tiny_shapes)
    ],
                    check=False)
    assert proc.returncode != 0
    assert 'num_images=50 is more than the 4 images' in proc.stderr, proc.stderr[-2000:]
