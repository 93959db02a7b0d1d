"""QATInitHook: make a quantized detector ready for quantization-aware training."""
import logging
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.logging import print_log
from torch import nn
from torch.utils.data import DataLoader

from mixaq_mmdet.models import quant_setting
from mixaq_mmdet.models.layers import TwoBranchSwinBlock
from mixaq_mmdet.quantization import (LSQQuantizer, UniformQuantizer, quantizers_of,
                                      set_quantizer_names)
from ..calibration import build_calib_dataloader, calibrate_model, check_calib_images
from ..checkpoints import (META_KEY, check_base_model, check_float_checkpoint, check_no_download,
                           recorded_reparam_range)
from ..model_wrappers import unwrap

Ratios = Union[float, Sequence[float]]
#: File name of the model as initialized, before any training step.
INIT_CHECKPOINT = 'qat_init.pth'


@HOOKS.register_module()
class QATInitHook(Hook):
    """Initialize the quantizers of a QAT run before its first iteration.

    With this hook ``tools/train.py CONFIG`` is a QAT run:

    - before training it checks that every quantizer that holds parameters can
      learn them (:class:`LSQQuantizer`; a PTQ ``UniformQuantizer`` would stay
      frozen) and that fake quantization is on (a ``quant=False`` model would
      train in float);
    - on a fresh start (not on ``--resume``) every quantizer that is not
      calibrated yet is calibrated on training images with the PTQ code
      (:func:`~mixaq_mmdet.engine.calibration.calibrate_model`), while the
      calibrated ones (from a loaded QAT or PTQ checkpoint) keep their learned
      values and quantize. Before that, each Two-Branch block whose low branch
      is new (all its quantizers uncalibrated) gets its low LayerNorm copies
      from the high ones: a low branch that never ran has nothing to keep;
    - a run that loads a detector (``load_from``, ``--resume``) must not
      download initial weights first (``init_cfg``, see
      :func:`~mixaq_mmdet.engine.checkpoints.check_no_download`); an FP
      ``load_from`` must be the config's ``base_model`` if it names one;
    - the ``load_from`` checkpoint must hold every float weight of the model
      (mmengine loads non-strictly: another detector's weights would otherwise
      leave random ones in place); a release of Swin-Transformer-Object-Detection
      arrives converted, as every load point sees it
      (:func:`~mixaq_mmdet.engine.converted_checkpoints.checkpoint_to_load`
      in ``MixAQRunner.load_checkpoint``), and is refused unconverted;
    - saved checkpoints record the MixA-Q setting in ``meta['mixaq']``, which
      ``tools/test.py`` checks (:class:`~mixaq_mmdet.engine.PTQLoop`).

    Args:
        calib_dataloader: dataloader of the calibration images (the TRAIN split
            with the test pipeline), built only when something is calibrated.
        calib_images: number of calibration images, over all ranks.
        calib_seed: seed of the calibration sampler.
        calib_low_bit_ratios: low-bit ratios set while calibrating, so that the
            low branch of every pair sees data (e.g. 0.5 before SAQA); None
            keeps the model's. The configured ratios are restored afterwards.
        save_init: write the initialized model to ``<work_dir>/qat_init.pth``
            before training: what calibration alone gives (e.g. a W4A4 QAT
            model with a PTQ-calibrated A2 branch, the baseline of SAQA).
    """

    priority = 'ABOVE_NORMAL'  # before SAQAHook, which checks the calibration

    def __init__(self,
                 calib_dataloader: Union[DataLoader, Dict],
                 calib_images: int = 64,
                 calib_seed: int = 0,
                 calib_low_bit_ratios: Optional[Ratios] = None,
                 save_init: bool = False) -> None:
        self.calib_dataloader = calib_dataloader
        self.calib_images = check_calib_images(calib_images)
        self.calib_seed = calib_seed
        self.calib_low_bit_ratios = calib_low_bit_ratios
        self.save_init = save_init
        self.reparam = False
        self.reparam_range: Optional[str] = None

    def before_run(self, runner) -> None:
        check_no_download(
            unwrap(runner.model), runner.cfg.get('load_from'), bool(runner.cfg.get('resume')))

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = unwrap(runner.model)
        path = runner.cfg.get('load_from') or 'the resumed checkpoint'
        check_float_checkpoint(model, checkpoint, path)
        recorded = (checkpoint.get('meta') or {}).get(META_KEY)
        if isinstance(recorded, Mapping):
            self.reparam = bool(recorded.get('reparam', False))
            self.reparam_range = recorded_reparam_range(recorded)
        else:  # an FP detector: the one the config quantizes?
            check_base_model(checkpoint, path, runner.cfg.get('base_model'))

    def before_train(self, runner) -> None:
        model = unwrap(runner.model)
        check_trainable_quantizers(model)
        if runner.iter > 0:
            print_log(
                f'QAT: resumed at iteration {runner.iter}; quantizers as saved', logger='current')
            return
        if not runner.cfg.get('load_from'):
            print_log(
                'QAT: no load_from checkpoint: quantizing the initial weights',
                logger='current',
                level=logging.WARNING)
        new = [q for q in quantizers_of(model) if not q.is_calibrated]
        if not new:
            print_log(
                'QAT: every quantizer is calibrated (loaded); training them '
                'from their values',
                logger='current')
            return
        copied = copy_norms_to_new_low_branches(model)
        if copied:
            print_log(
                f'QAT: low-branch LayerNorms of {copied} blocks copied from the '
                'high branch (new low branch)',
                logger='current')
        backbone = model.backbone
        configured = None
        if self.calib_low_bit_ratios is not None:
            configured = (list(backbone.low_bit_ratios), list(backbone.prune_ratios))
            backbone.set_ratios(self.calib_low_bit_ratios, configured[1])
        try:
            loader = build_calib_dataloader(runner, self.calib_dataloader, self.calib_seed)
            calibrate_model(
                model,
                loader,
                self.calib_images,
                only_uncalibrated=len(new) < len(quantizers_of(model)),
                prefix='QAT')
        finally:
            if configured is not None:
                backbone.set_ratios(*configured)
        runner.model.train()
        if self.save_init:
            runner.save_checkpoint(
                runner.work_dir, INIT_CHECKPOINT, save_optimizer=False, save_param_scheduler=False)
            print_log(f'QAT: initialized model saved as {INIT_CHECKPOINT}', logger='current')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.setdefault('meta', {})
        meta[META_KEY] = dict(
            quant_setting(unwrap(runner.model)),
            reparam=self.reparam,
            reparam_range=self.reparam_range)


def check_trainable_quantizers(model: nn.Module) -> None:
    """Raise unless the model quantizes and its uniform quantizers can learn."""
    set_quantizer_names(model)
    quantizers = quantizers_of(model)
    if not quantizers:
        raise ValueError(f'{type(model).__name__} has no quantizers: QAT needs a quantized '
                         "model (model=dict(type='QuantizedDetector', backbone=dict("
                         "type='MixAQSwinTransformer', quant=True, ...)))")
    off = [q for q in quantizers if not q.fake_quant_enabled]
    if off:
        raise ValueError(f'{len(off)} quantizers have fake quantization off (e.g. '
                         f'{off[0].display_name}): QAT would train the float model; build '
                         'the backbone with quant=True')
    frozen: List[UniformQuantizer] = [
        q for q in quantizers
        if isinstance(q, UniformQuantizer) and not isinstance(q, LSQQuantizer)
    ]
    if frozen:
        raise ValueError(f'{len(frozen)} quantizers cannot learn their step size (e.g. '
                         f'{frozen[0].display_name} is a {type(frozen[0]).__name__}): QAT needs '
                         "weight_quantizer / act_quantizer of type 'LSQQuantizer'")


@torch.no_grad()
def copy_norms_to_new_low_branches(model: nn.Module) -> int:
    """Copy norm1/norm2 into the low copies of every Two-Branch block whose low
    branch has no calibrated quantizer; return how many blocks."""
    copied = 0
    for block in model.modules():
        if not isinstance(block, TwoBranchSwinBlock):
            continue
        if any(q.is_calibrated for q in quantizers_of(block.branches['low'])):
            continue
        for high, low in ((block.norm1, block.norm1_low), (block.norm2, block.norm2_low)):
            for p_low, p_high in zip(low.parameters(), high.parameters()):
                p_low.copy_(p_high)
        copied += 1
    return copied


__all__ = [
    'QATInitHook', 'INIT_CHECKPOINT', 'check_trainable_quantizers', 'copy_norms_to_new_low_branches'
]
