"""OFQ, the paper's QAT base: confidence-guided annealing, the oscillation
measure, and a training run of the benchmark's OFQ config."""
import os.path as osp
import re
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MessageHub

from mixaq_mmdet.engine import ConfidenceGuidedAnnealingHook, MixAQRunner, OscillationHook
from mixaq_mmdet.quantization import QuantLinear, StatsQQuantizer, quantizers_of
from .test_qat import _config


def _layer(quantizer=dict(type='StatsQQuantizer', bits=3)) -> QuantLinear:
    torch.manual_seed(0)
    layer = QuantLinear(torch.nn.Linear(64, 32), quantizer, None)
    layer.weight_quantizer(layer.weight)
    layer.weight_quantizer.calculate_qparams()
    layer.weight_quantizer.disable_observer()
    layer.weight_quantizer.enable_fake_quant()
    return layer


def _runner(model, iteration=0, max_iters=10):
    return SimpleNamespace(
        model=model,
        iter=iteration,
        max_iters=max_iters,
        message_hub=MessageHub.get_instance('test_ofq'))


def test_cga_freezes_confident_weights_and_trains_the_rest():
    """From ``start`` on, a weight farther than ``boundary_range`` from a
    rounding boundary keeps its exact value through backward and an AdamW
    step with weight decay and momentum; the others move."""
    layer = _layer()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=0.1)
    hook = ConfidenceGuidedAnnealingHook(start=1, boundary_range=0.2)
    runner = _runner(layer)
    hook.before_train(runner)
    x = torch.randn(16, 64)
    for iteration in range(3):
        runner.iter = iteration
        position = layer.weight_quantizer.grid_position(layer.weight)
        boundary = (torch.floor(position) + 0.5).clamp(-4 + 0.5, 3 - 0.5)
        confident = (position - boundary).abs() > 0.2
        before = layer.weight.detach().clone()
        hook.before_train_iter(runner, iteration)
        optimizer.zero_grad()
        layer(x).pow(2).sum().backward()
        optimizer.step()
        hook.after_train_iter(runner, iteration)
        moved = layer.weight.detach() != before
        if iteration == 0:  # before start: every weight trains
            assert moved.all()
        else:
            assert confident.any() and (~confident).any()
            assert not moved[confident].any()
            assert moved[~confident].all()
            rate = runner.message_hub.get_scalar('train/cga_frozen_rate').current()
            assert rate == pytest.approx(float(confident.float().mean()))
    assert layer.weight._backward_hooks is None or not layer.weight._backward_hooks


@pytest.mark.parametrize(
    'kwargs, message', [(dict(start=1.5), r'start must be an iteration \(int >= 0\) or a fraction'),
                        (dict(start=-1), 'start must be'), (dict(start=True), 'start must be'),
                        (dict(boundary_range=0.0), r'boundary_range must be in \(0, 0.5\)'),
                        (dict(boundary_range=0.5), 'boundary_range must be'),
                        (dict(boundary_range=-0.1), 'boundary_range must be')])
def test_cga_settings_out_of_range_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConfidenceGuidedAnnealingHook(**kwargs)


def test_cga_starting_after_the_end_of_training_is_an_error():
    layer = _layer()
    with pytest.raises(
            ValueError,
            match=r'start=12 is iteration 12, at or after the end of '
            r'training \(10 iterations\)'):
        ConfidenceGuidedAnnealingHook(start=12).before_train(_runner(layer, max_iters=10))
    float_model = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match='no quantized weights on an integer grid'):
        ConfidenceGuidedAnnealingHook(start=0.5).before_train(_runner(float_model))


def test_oscillation_rates_count_flips_and_flips_back():
    """A weight moved across a boundary counts as a flip; moved back within
    the window, as an oscillation; after the window neither counts (a fixed
    LSQ grid, so that only the moved weights change code)."""
    layer = _layer(dict(type='LSQQuantizer', bits=3, per_channel=True, calib='minmax'))
    hook = OscillationHook(window=2, interval=1)
    runner = _runner(layer)
    hook.before_train(runner)
    quantizer = layer.weight_quantizer
    codes = quantizer.integer_code(layer.weight)
    movable = (codes[:, 0] > quantizer.quant_min) & (codes[:, 0] < quantizer.quant_max)
    step = quantizer.scale.detach()[movable]  # one code
    share = float(movable.sum()) / layer.weight.numel()

    def rates():
        hub = runner.message_hub
        return (hub.get_scalar('train/weight_flip_rate').current(),
                hub.get_scalar('train/weight_oscillation_rate').current())

    expected = {1: (share, 0.0), 2: (share, share), 3: (share, share), 4: (0.0, 0.0)}
    for iteration, delta in enumerate((0.0, 1.0, -1.0, 0.0, 0.0)):
        runner.iter = iteration
        with torch.no_grad():
            layer.weight[movable, 0] += delta * step
        hook.after_train_iter(runner, iteration)
        if iteration in expected:
            assert rates() == tuple(map(pytest.approx, expected[iteration])), iteration


def test_ofq_config_trains_with_statsq_cga_and_logs_oscillation(tiny_shapes, fp_checkpoint,
                                                                tmp_path):
    """The benchmark's OFQ config as a QAT run: StatsQ weights (no learned
    weight scale), LSQ activations learned, CGA over the last iteration, both
    measures in the log."""
    cfg = _config(tiny_shapes, tmp_path, fp_checkpoint, config='qat_ofq_w4a4_shapes.py')
    for hook in cfg.custom_hooks:
        if hook.type == 'OscillationHook':
            hook.interval = 1
    runner = MixAQRunner.from_cfg(cfg)
    runner.train()
    weights = [q for q in quantizers_of(runner.model) if isinstance(q, StatsQQuantizer)]
    assert weights and all(q.is_calibrated for q in weights)
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert re.search(r'weight_flip_rate: [0-9.]+', log)
    assert re.search(r'Epoch\(train\) +\[1\]\[2/2\].*cga_frozen_rate: 0\.[0-9]+', log)
