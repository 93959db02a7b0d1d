"""PTQLoop: post-training quantization as an mmengine test loop."""
import copy
import logging
import math
import os.path as osp
from typing import Dict, List, Union

import torch
from mmdet.registry import DATASETS, LOOPS
from mmengine.dist import (all_reduce, broadcast, get_rank, get_world_size,
                           is_main_process)
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import CheckpointLoader, TestLoop, save_checkpoint
from mmengine.runner.checkpoint import get_state_dict, weights_to_cpu
from mmengine.utils import ProgressBar
from torch import nn
from torch.utils.data import DataLoader

from mixaq_mmdet.quantization import (QuantizerBase, disable_quantization,
                                      enable_calibration, enable_fake_quant,
                                      enable_quantization, quantize_layers,
                                      quantizers_of)
from mixaq_mmdet.quantization.reparam import (record_channel_ranges,
                                              reparameterize)

PTQ_SCOPES = ('backbone', 'detector')
#: State that MixA-Q adds to a float detector (low-branch LayerNorm copies, the
#: padding value of a folded reparameterization): absent from FP checkpoints.
MIXAQ_ONLY_KEYS = ('_low.', '.reparam_pad')


@LOOPS.register_module()
class PTQLoop(TestLoop):
    """Calibrate a quantized detector on training images, then test it.

    Used as ``test_cfg``; ``tools/test.py CONFIG FP_CHECKPOINT`` runs it. The runner
    loads the checkpoint before :meth:`run`: an FP checkpoint (no quantizer state)
    is calibrated, saved as ``<work_dir>/calibrated.pth`` and evaluated; a
    calibrated checkpoint is evaluated as it is, without recalibration.

    Calibration runs the model in float with every quantizer observing (each
    branch of a Two-Branch block sees the windows of its own group at the
    configured ratios), then computes the qparams, all-reduced over ranks so that
    every rank holds the same ones.

    Args:
        runner: the runner.
        dataloader: test dataloader (config or object).
        evaluator: test evaluator.
        calib_dataloader: dataloader of the calibration images: the TRAIN split
            with the test pipeline (no augmentation).
        calib_images: number of calibration images, over all ranks.
        calib_seed: seed of the calibration sampler (which images are drawn).
        reparam: fold RepQ-ViT's scale reparameterization of post-LayerNorm
            activations before calibrating (see
            :mod:`mixaq_mmdet.quantization.reparam`): one extra pass over the
            calibration images records per-channel ranges.
        scope: 'backbone' quantizes what the model config quantizes (the MixA-Q
            backbone: the paper's BitOPs scope); 'detector' also quantizes every
            Conv2d / Linear of the neck and heads (RepQ-ViT's protocol;
            ConvTranspose2d stays float), at the backbone's weight bits and high
            activation bits.
        save_calibrated: write the calibrated checkpoint.
        fp16: as in TestLoop.
    """

    def __init__(self,
                 runner,
                 dataloader: Union[DataLoader, Dict],
                 evaluator: Union[Dict, List],
                 calib_dataloader: Union[DataLoader, Dict],
                 calib_images: int = 32,
                 calib_seed: int = 0,
                 reparam: bool = True,
                 scope: str = 'backbone',
                 save_calibrated: bool = True,
                 fp16: bool = False) -> None:
        super().__init__(runner, dataloader, evaluator, fp16)
        if isinstance(calib_images, bool) or not isinstance(calib_images, int) \
                or calib_images < 1:
            raise ValueError(f'calib_images must be a positive int, got {calib_images!r}')
        if scope not in PTQ_SCOPES:
            raise ValueError(f'scope must be one of {PTQ_SCOPES}, got {scope!r}')
        self.calib_images = calib_images
        self.reparam = reparam
        self.scope = scope
        self.save_calibrated = save_calibrated
        self.calib_dataloader = build_calib_dataloader(runner, calib_dataloader,
                                                       calib_seed)
        self.num_calib_images = 0
        model = self.model
        if not quantizers_of(model):
            raise ValueError(
                f'{type(model).__name__} has no quantizers: PTQLoop needs a '
                "quantized model, e.g. backbone type 'MixAQSwinTransformer' with "
                'quant=True')
        if scope == 'detector':
            self._quantize_heads(model)

    @property
    def model(self) -> nn.Module:
        model = self.runner.model
        return model.module if is_model_wrapper(model) else model

    def _quantize_heads(self, model: nn.Module) -> None:
        backbone = model.backbone
        weight = backbone.weight_quantizer_cfg
        act = backbone.act_quantizer_cfgs['high']
        for name in ('neck', 'rpn_head', 'roi_head'):
            if getattr(model, name, None) is not None:
                quantize_layers(getattr(model, name), weight, act)

    def run(self) -> dict:
        checkpoint = self.runner._load_from
        if not checkpoint:
            raise ValueError('PTQ needs a checkpoint: run tools/test.py CONFIG '
                             'CHECKPOINT (load_from is not set)')
        model = self.model
        quantizers = quantizers_of(model)
        if any(q.is_calibrated for q in quantizers):
            print_log(f'PTQ: {checkpoint} is calibrated; evaluating it as it is',
                      logger='current')
            enable_fake_quant(model)
        else:
            check_float_checkpoint(model, checkpoint)
            self.calibrate()
            if self.save_calibrated and is_main_process():
                path = osp.join(self.runner.work_dir, 'calibrated.pth')
                save_checkpoint(
                    dict(meta=dict(calib_images=self.num_calib_images,
                                   fp_checkpoint=checkpoint, scope=self.scope,
                                   reparam=self.reparam),
                         state_dict=weights_to_cpu(get_state_dict(model))), path)
                print_log(f'PTQ: calibrated checkpoint saved to {path}',
                          logger='current')
        return super().run()

    @torch.no_grad()
    def calibrate(self) -> int:
        """Reparameterize (if enabled), observe ``calib_images`` training images,
        then compute the qparams.

        Returns:
            The number of images this rank observed.
        """
        model = self.model
        model.eval()
        available = len(self.calib_dataloader.dataset)
        if available < self.calib_images:
            print_log(f'PTQ: {self.calib_images} calibration images asked, the '
                      f'calibration set has only {available}; using {available}',
                      logger='current', level=logging.WARNING)
        if self.reparam:
            if not hasattr(model.backbone, 'reparam_targets'):
                raise ValueError(
                    f'reparam=True needs a backbone that lists its post-LayerNorm '
                    f'activations (MixAQSwinTransformer); '
                    f'{type(model.backbone).__name__} does not: set '
                    'test_cfg.reparam=False')
            targets = model.backbone.reparam_targets()
            disable_quantization(model)
            with record_channel_ranges(targets) as ranges:
                self._observe_images('ranges for scale reparameterization')
            reparameterize(targets, ranges)
        enable_calibration(model)
        seen = self._observe_images('calibration')
        unreached = enable_quantization(model, strict=False)
        self.num_calib_images = int(all_reduce_sum(seen))
        check_same_qparams_on_all_ranks(model)
        calibrated = sum(q.is_calibrated for q in quantizers_of(model))
        print_log(f'PTQ: calibrated {calibrated} quantizers on '
                  f'{self.num_calib_images} images ({self.scope} scope, '
                  f'reparam={self.reparam})', logger='current')
        if unreached:
            print_log(f'PTQ: {len(unreached)} quantizers saw no data at these '
                      'ratios (e.g. low-bit branches of pairs with low ratio 0); '
                      'they stay uncalibrated and raise if used',
                      logger='current')
        return seen

    def _observe_images(self, what: str) -> int:
        """Run this rank's share of the calibration images through the model."""
        world_size = get_world_size()
        target = math.ceil(self.calib_images / world_size)
        available = math.ceil(len(self.calib_dataloader.dataset) / world_size)
        print_log(f'PTQ: {what}', logger='current')
        bar = ProgressBar(min(target, available)) if is_main_process() else None
        seen = 0
        for data_batch in self.calib_dataloader:
            batch = _take(data_batch, target - seen)
            self.model.test_step(batch)
            seen += len(batch['inputs'])
            if bar is not None:
                for _ in range(len(batch['inputs'])):
                    bar.update()
            if seen >= target:
                break
        if bar is not None:
            print()
        return seen


def build_calib_dataloader(runner, dataloader: Union[DataLoader, Dict],
                           seed: int) -> DataLoader:
    """Build the calibration dataloader; an empty calibration set is an error."""
    if not isinstance(dataloader, dict):
        loader = dataloader
    else:
        cfg = copy.deepcopy(dataloader)
        try:
            cfg['dataset'] = DATASETS.build(cfg['dataset'])
        except ValueError:
            # mmengine cannot serialize an empty data list: say what is wrong
            probe = DATASETS.build(dict(cfg['dataset'], serialize_data=False))
            if len(probe) == 0:
                cfg['dataset'] = probe
            else:
                raise
        loader = runner.build_dataloader(cfg, seed=seed)
    if len(loader.dataset) == 0:
        raise ValueError(
            f'the calibration set is empty: {type(loader.dataset).__name__} '
            f'({getattr(loader.dataset, "ann_file", "")}) has 0 images; '
            'check test_cfg.calib_dataloader')
    return loader


def all_reduce_sum(value: float) -> float:
    """Sum of ``value`` over ranks (the value itself without distributed)."""
    if get_world_size() == 1:
        return value
    tensor = torch.tensor(float(value), dtype=torch.float64)
    all_reduce(tensor, op='sum')
    return float(tensor)


def check_same_qparams_on_all_ranks(model: nn.Module) -> None:
    """Raise if any rank holds other qparams than rank 0 (never evaluate a model
    whose ranks disagree)."""
    if get_world_size() == 1:
        return
    sums = [torch.cat([b.detach().double().flatten().cpu() for b in q.buffers()]).sum()
            for q in quantizers_of(model) if q.is_calibrated]
    local = torch.stack(sums) if sums else torch.zeros(1, dtype=torch.float64)
    reference = local.clone()
    broadcast(reference, src=0)
    if not torch.equal(local, reference):
        raise RuntimeError(f'rank {get_rank()} holds other quantizer parameters '
                           'than rank 0 after calibration')


def _take(data_batch: dict, n: int) -> dict:
    """The first ``n`` images of a collated batch."""
    if len(data_batch['inputs']) <= n:
        return data_batch
    return {k: v[:n] for k, v in data_batch.items()}


def check_float_checkpoint(model: nn.Module, checkpoint: str) -> None:
    """Raise unless ``checkpoint`` holds every float weight of ``model``.

    mmengine loads checkpoints non-strictly, so a checkpoint of another detector
    would otherwise leave random weights in place without an error.
    """
    state = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    state = state.get('state_dict', state)
    quant_prefixes = tuple(f'{name}.' for name, m in model.named_modules()
                           if isinstance(m, QuantizerBase))
    expected = [k for k in model.state_dict()
                if not k.startswith(quant_prefixes)
                and not any(m in k for m in MIXAQ_ONLY_KEYS)]
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(
            f'checkpoint {checkpoint} does not fit {type(model).__name__}: '
            f'{len(missing)} of its {len(expected)} float weights are missing '
            f'(e.g. {", ".join(missing[:3])}); PTQ needs the FP checkpoint of the '
            'same detector (a Swin Mask R-CNN with these settings)')
    mismatched = [k for k in expected
                  if tuple(state[k].shape) != tuple(model.state_dict()[k].shape)]
    if mismatched:
        raise ValueError(
            f'checkpoint {checkpoint} does not fit {type(model).__name__}: '
            f'{len(mismatched)} weights have other shapes (e.g. {mismatched[0]}: '
            f'{tuple(state[mismatched[0]].shape)} in the checkpoint)')


__all__ = ['PTQLoop', 'PTQ_SCOPES', 'check_float_checkpoint']
