"""Calibration on training images, shared by PTQ (:class:`PTQLoop`) and the
initialization of QAT (:class:`QATInitHook`)."""
import copy
import logging
import math
import time
from typing import Dict, List, Union

import torch
from mmdet.registry import DATASETS
from mmengine.dist import all_reduce, broadcast, get_rank, get_world_size, is_main_process
from mmengine.logging import print_log
from mmengine.utils import ProgressBar
from torch import nn
from torch.utils.data import DataLoader

from mixaq_mmdet.datasets.layout import check_dataset_files
from mixaq_mmdet.models import quant_scope
from mixaq_mmdet.quantization import (calculate_qparams, disable_quantization, enable_calibration,
                                      enable_fake_quant, quantizers_of, set_quantizer_names)
from mixaq_mmdet.quantization.reparam import (DEFAULT_REPARAM_RANGE, check_reparam_range,
                                              record_channel_statistics, reparameterize)
from mixaq_mmdet.quantization.uq_vit import fold_channel_maps, record_map_statistics


def check_calib_images(calib_images: object) -> int:
    """``calib_images`` if it is a positive int, else a ValueError naming it."""
    if isinstance(calib_images, bool) or not isinstance(calib_images, int) \
            or calib_images < 1:
        raise ValueError(f'calib_images must be a positive int, got {calib_images!r}')
    return calib_images


def build_calib_dataloader(runner, dataloader: Union[DataLoader, Dict], seed: int) -> DataLoader:
    """Build the calibration dataloader; an empty calibration set is an error."""
    if not isinstance(dataloader, dict):
        loader = dataloader
    else:
        cfg = copy.deepcopy(dataloader)
        check_dataset_files(cfg['dataset'], 'calib_dataloader.dataset')
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
        raise ValueError(f'the calibration set is empty: {type(loader.dataset).__name__} '
                         f'({getattr(loader.dataset, "ann_file", "")}) has 0 images; '
                         'check the calib_dataloader config')
    return loader


@torch.no_grad()
def calibrate_model(model: nn.Module,
                    dataloader: DataLoader,
                    num_images: int,
                    reparam: bool = False,
                    only_uncalibrated: bool = False,
                    prefix: str = 'PTQ',
                    reparam_range: str = DEFAULT_REPARAM_RANGE) -> int:
    """Observe ``num_images`` images (over all ranks), then compute the qparams.

    Only what holds quantizers runs: the backbone for the 'backbone' scope, the
    whole detector (``test_step``) for 'detector'. With ``only_uncalibrated``
    the calibrated quantizers keep their qparams and quantize while the others
    observe, so a new branch is calibrated on the activations of the model as
    it is (a QAT checkpoint whose low branch is new); otherwise the whole
    model runs in float and every quantizer is (re)calibrated. ``reparam``
    folds RepQ-ViT's scale reparameterization first (one more pass), each
    channel's range as ``reparam_range`` takes it
    (:mod:`~mixaq_mmdet.quantization.reparam`). The qparams are identical on
    every rank (checked). Leaves the model with fake quant on and observers off.

    Returns:
        The number of images this rank observed.
    """
    start = time.perf_counter()
    model.eval()
    available = len(dataloader.dataset)
    if available < num_images:
        print_log(
            f'{prefix}: {num_images} calibration images asked, the calibration '
            f'set has only {available}; using {available}',
            logger='current',
            level=logging.WARNING)
    backbone_only = quant_scope(model) == 'backbone'
    check_reparam_range(reparam_range)
    if reparam:
        if only_uncalibrated:
            raise ValueError('reparam folds into calibrated layers: it needs '
                             'only_uncalibrated=False')
        if not hasattr(model.backbone, 'reparam_targets'):
            raise ValueError(f'reparam=True needs a backbone that lists its post-LayerNorm '
                             f'activations (MixAQSwinTransformer); {type(model.backbone).__name__} '
                             'does not: set reparam=False')
        targets = model.backbone.reparam_targets()
        disable_quantization(model)
        with record_channel_statistics(targets) as stats, model.backbone.whole_windows():
            _observe(model, dataloader, num_images, True,
                     f'{prefix}: statistics for scale reparameterization')
        reparameterize(targets, stats, reparam_range)
    fold_normquant_maps(model, dataloader, num_images, only_uncalibrated, prefix)
    set_quantizer_names(model)
    keep = [q for q in quantizers_of(model) if only_uncalibrated and q.is_calibrated]
    enable_calibration(model)
    for quantizer in keep:
        quantizer.disable_observer()
        quantizer.enable_fake_quant()
    seen = _observe(model, dataloader, num_images, backbone_only, f'{prefix}: calibration')
    unreached = calculate_qparams(model, strict=False)
    enable_fake_quant(model)
    check_same_qparams_on_all_ranks(model)
    total = int(all_reduce_sum(seen))
    new = len(quantizers_of(model)) - len(unreached) - len(keep)
    print_log(
        f'{prefix}: calibrated {new} quantizers on {total} images '
        f'({quant_scope(model)} scope, reparam={reparam}' +
        (f', reparam_range={reparam_range!r}' if reparam else '') +
        (f', {len(keep)} calibrated ones kept' if keep else '') +
        f') in {time.perf_counter() - start:.1f} s',
        logger='current')
    if unreached:
        print_log(
            f'{prefix}: {len(unreached)} quantizers saw no data (e.g. low-bit '
            'branches of pairs with low ratio 0); they stay uncalibrated and '
            'raise if used',
            logger='current')
    return seen


@torch.no_grad()
def fold_normquant_maps(model: nn.Module, dataloader: DataLoader, num_images: int,
                        only_uncalibrated: bool, prefix: str) -> int:
    """Fold UQ-ViT's NormQuant map of every block whose fc2 input NormQuantizers
    quantize (:mod:`~mixaq_mmdet.quantization.uq_vit`), at the stage of
    RepQ-ViT's reparameterization: one pass in float over the calibration
    images collects the per-channel statistics of both branches' maps
    together, then the map is folded into the maps and fc2, before the
    quantizers calibrate on the mapped activations. With
    ``only_uncalibrated`` (a calibrated checkpoint's new branch) the maps must
    be folded already: a new map would change the calibrated fc2. Returns the
    number of maps folded (0 without NormQuantizers)."""
    finder = getattr(model.backbone, 'normquant_targets', None)
    targets = finder() if callable(finder) else []
    if not targets:
        return 0
    if only_uncalibrated:
        if all(m.folded for t in targets for m in t.norms):
            return 0
        raise ValueError('NormQuant folds its per-channel map into fc2, whose quantizers are '
                         'calibrated: a checkpoint without folded NormQuant maps needs a full '
                         'calibration (only_uncalibrated=False)')
    disable_quantization(model)
    with record_map_statistics(targets) as stats, model.backbone.whole_windows():
        _observe(model, dataloader, num_images, True, f'{prefix}: statistics for NormQuant')
    fold_channel_maps(targets, stats)
    print_log(f'{prefix}: folded {len(targets)} NormQuant maps into fc2', logger='current')
    return len(targets)


def _observe(model: nn.Module, dataloader: DataLoader, num_images: int, backbone_only: bool,
             what: str) -> int:
    """Run this rank's share of ``num_images`` through the backbone or the
    whole detector; return how many it ran."""
    world_size = get_world_size()
    target = math.ceil(num_images / world_size)
    available = math.ceil(len(dataloader.dataset) / world_size)
    print_log(what, logger='current')
    bar = ProgressBar(min(target, available)) if is_main_process() else None
    seen = 0
    for data_batch in dataloader:
        batch = _take(data_batch, target - seen)
        if backbone_only:
            model.backbone(model.data_preprocessor(batch, False)['inputs'])
        else:
            model.test_step(batch)
        seen += len(batch['inputs'])
        if bar is not None:
            for _ in range(len(batch['inputs'])):
                bar.update()
        if seen >= target:
            break
    if bar is not None:
        print()
    return seen


def _take(data_batch: dict, n: int) -> dict:
    """The first ``n`` images of a collated batch."""
    if len(data_batch['inputs']) <= n:
        return data_batch
    return {k: v[:n] for k, v in data_batch.items()}


def all_reduce_sum(value: float) -> float:
    """Sum of ``value`` over ranks (the value itself without distributed)."""
    if get_world_size() == 1:
        return value
    tensor = torch.tensor(float(value), dtype=torch.float64)
    all_reduce(tensor, op='sum')
    return float(tensor)


def check_same_qparams_on_all_ranks(model: nn.Module) -> None:
    """Raise if any rank holds other qparams than rank 0 (never evaluate or
    train a model whose ranks disagree)."""
    if get_world_size() == 1:
        return
    sums: List[torch.Tensor] = [
        torch.cat([t.detach().double().flatten().cpu()
                   for t in (*q.parameters(), *q.buffers())]).sum() for q in quantizers_of(model)
        if q.is_calibrated
    ]
    local = torch.stack(sums) if sums else torch.zeros(1, dtype=torch.float64)
    reference = local.clone()
    broadcast(reference, src=0)
    if not torch.equal(local, reference):
        raise RuntimeError(f'rank {get_rank()} holds other quantizer parameters '
                           'than rank 0 after calibration')


__all__ = [
    'check_calib_images', 'build_calib_dataloader', 'calibrate_model', 'all_reduce_sum',
    'check_same_qparams_on_all_ranks', 'fold_normquant_maps'
]
