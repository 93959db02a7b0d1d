"""BackboneLatencyHook: the backbone's time per image in test iterations only,
through the wrappers tools/test.py puts around the detector."""
from types import SimpleNamespace

import torch
from mmdet.models import DetTTAModel
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.registry import init_default_scope

from mixaq_mmdet.engine.hooks import BackboneLatencyHook
from mixaq_mmdet.engine.model_wrappers import unwrap
from ..conftest import FP_BENCH_CONFIG


def _detector():
    init_default_scope('mmdet')
    torch.manual_seed(0)
    return MODELS.build(Config.fromfile(FP_BENCH_CONFIG).model).eval()


def test_unwrap_finds_the_detector_inside_a_tta_model():
    detector = _detector()
    assert unwrap(DetTTAModel(module=detector)) is detector
    assert unwrap(detector) is detector


def test_the_hook_times_test_iterations_of_a_tta_model_and_not_calibration():
    detector = _detector()
    runner = SimpleNamespace(
        model=DetTTAModel(module=detector),
        message_hub=MessageHub.get_instance('backbone_latency_test'))
    hook = BackboneLatencyHook()
    hook.before_test_epoch(runner)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        detector.backbone(images)  # a calibration forward: outside the iterations
        assert hook.per_image_ms == []
        for batch_idx in range(3):
            hook.before_test_iter(runner, batch_idx)
            detector.backbone(images)
            hook.after_test_iter(runner, batch_idx)
    assert len(hook.per_image_ms) == 3 and all(ms > 0 for ms in hook.per_image_ms)
    metrics = {'coco/bbox_mAP': 0.0}
    hook.after_test_epoch(runner, metrics)
    assert metrics['mixaq/backbone_ms'] > 0
    assert runner.message_hub.get_scalar('test/mixaq/backbone_ms').current() > 0
    with torch.no_grad():  # the hooks are gone after the epoch
        hook.before_test_iter(runner, 0)
        detector.backbone(images)
    assert len(hook.per_image_ms) == 3
