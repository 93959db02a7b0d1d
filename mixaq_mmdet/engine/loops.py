"""PTQLoop: post-training quantization as an mmengine test loop."""
import math
import os.path as osp
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from mmdet.registry import LOOPS
from mmengine.dataset import DefaultSampler
from mmengine.dist import get_world_size, is_main_process
from mmengine.logging import print_log
from mmengine.runner import CheckpointLoader, Runner, TestLoop, save_checkpoint
from mmengine.runner.checkpoint import get_state_dict, weights_to_cpu
from torch import nn
from torch.utils.data import DataLoader

from mixaq_mmdet.compat import checkpoint_types_allowed
from mixaq_mmdet.models import quant_setting
from mixaq_mmdet.quantization import enable_fake_quant, integer_kernels, quantizers_of, to_integer
from mixaq_mmdet.quantization.reparam import DEFAULT_REPARAM_RANGE, check_reparam_range
from .calibration import all_reduce_sum, build_calib_dataloader, calibrate_model, check_calib_images
from .checkpoints import (META_KEY, check_base_model, check_calibrated_checkpoint,
                          check_float_checkpoint)
from .converted_checkpoints import checkpoint_to_load
from .model_wrappers import unwrap

#: How a quantized model computes its quantized products (``test_cfg.execution``).
EXECUTIONS = ('fake_quant', 'integer')
#: Arguments of ``torch.compile`` a loop's ``compile`` dict may set.
COMPILE_ARGS = ('fullgraph', 'dynamic', 'backend', 'mode', 'options', 'disable')


def compile_kwargs(compile: Union[bool, Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """``torch.compile`` arguments of a ``compile`` option (None: off)."""
    if isinstance(compile, bool):
        return {} if compile else None
    if not isinstance(compile, Mapping):
        raise TypeError(f'compile must be a bool or a dict of torch.compile arguments, '
                        f'got {compile!r}')
    unknown = sorted(set(compile) - set(COMPILE_ARGS))
    if unknown:
        raise ValueError(f'compile has unknown torch.compile argument(s) {unknown}; '
                         f'valid: {", ".join(COMPILE_ARGS)}')
    return dict(compile)


@LOOPS.register_module()
class PTQLoop(TestLoop):
    """Calibrate a quantized detector on training images, then test it.

    Used as ``test_cfg``; ``tools/test.py CONFIG FP_CHECKPOINT`` runs it. The runner
    loads the checkpoint before :meth:`run`: an FP checkpoint (no quantizer state)
    is calibrated, saved as ``<work_dir>/calibrated.pth`` with the MixA-Q setting
    in its ``meta`` and evaluated; a calibrated checkpoint is checked against the
    model (:func:`check_calibrated_checkpoint`) and evaluated as it is.

    Calibration runs after the ``before_test`` / ``before_test_epoch`` hooks (a
    hook that swaps in EMA weights acts before the fold), with the model in float
    and every quantizer observing (each branch of a Two-Branch block sees the
    windows of its own group at the configured ratios). Only what holds
    quantizers is run: the backbone for the 'backbone' quantization scope, the
    whole detector for 'detector' (the scope is the model's, see
    :class:`~mixaq_mmdet.models.detectors.QuantizedDetector`). The qparams are
    all-reduced over ranks so that every rank holds the same ones.

    Args:
        runner: the runner.
        dataloader: test dataloader (config or object).
        evaluator: test evaluator.
        calib_dataloader: dataloader of the calibration images: the TRAIN split
            with the test pipeline (no augmentation). Built only when the loop
            calibrates.
        calib_images: number of calibration images, over all ranks.
        calib_seed: seed of the calibration sampler (which images are drawn).
        reparam: fold RepQ-ViT's scale reparameterization of post-LayerNorm
            activations before calibrating (see
            :mod:`mixaq_mmdet.quantization.reparam`): one extra pass over the
            calibration images collects per-channel statistics.
        reparam_range: how the reparameterization takes each channel's range
            (:data:`~mixaq_mmdet.quantization.reparam.REPARAM_RANGES`):
            'repq_vit', RepQ-ViT's calibrated per-channel grid; 'with_zero', the
            grid widened to include 0 (differs on channels of one sign).
            Recorded in the calibrated checkpoint and checked like ``reparam``.
        save_calibrated: write the calibrated checkpoint.
        fp16: as in TestLoop.
        compile: evaluate with the backbone compiled by ``torch.compile`` (True,
            or a dict of its arguments, e.g. ``dict(mode='reduce-overhead')`` for
            CUDA graphs), after calibration or loading, like mmengine's
            ``compile`` for training. In place (``nn.Module.compile``): the
            state_dict keys stay. Each distinct input shape compiles once, so
            pad the test images to one size (``Pad(size=...)``) to compile once.
        execution: 'fake_quant' (float arithmetic on fake-quantized values) or
            'integer': the quantized linear products run on int8 kernels
            (:func:`~mixaq_mmdet.quantization.to_integer`), after calibration or
            loading and before compiling.
    """

    def __init__(self,
                 runner,
                 dataloader: Union[DataLoader, Dict],
                 evaluator: Union[Dict, List],
                 calib_dataloader: Union[DataLoader, Dict],
                 calib_images: int = 32,
                 calib_seed: int = 0,
                 reparam: bool = True,
                 reparam_range: str = DEFAULT_REPARAM_RANGE,
                 save_calibrated: bool = True,
                 fp16: bool = False,
                 compile: Union[bool, Dict[str, Any]] = False,
                 execution: str = 'fake_quant',
                 scope: Optional[str] = None) -> None:
        if scope is not None:
            raise ValueError(
                f"test_cfg.scope={scope!r}: the quantization scope is a property of the "
                "model: set model=dict(type='QuantizedDetector', detector='MaskRCNN', "
                f"quant_scope={scope!r}, ...) and remove scope from test_cfg")
        super().__init__(runner, dataloader, evaluator, fp16)
        self.calib_images = check_calib_images(calib_images)
        self.calib_seed = calib_seed
        self.reparam = reparam
        try:
            self.reparam_range = check_reparam_range(reparam_range)
        except ValueError as e:
            raise ValueError(f'test_cfg.{e}') from None
        self.save_calibrated = save_calibrated
        self.compile_kwargs = compile_kwargs(compile)
        if execution not in EXECUTIONS:
            raise ValueError(f'test_cfg.execution must be one of {EXECUTIONS}, got {execution!r}')
        self.execution = execution
        self._calib_dataloader = calib_dataloader
        self.num_calib_images = 0
        if not quantizers_of(self.model):
            raise ValueError(f'{type(self.model).__name__} has no quantizers: PTQLoop needs a '
                             "quantized model, e.g. backbone type 'MixAQSwinTransformer' with "
                             'quant=True')

    @property
    def model(self) -> nn.Module:
        """The detector, without DDP or test-time-augmentation wrappers."""
        return unwrap(self.runner.model)

    @property
    def calib_dataloader(self) -> DataLoader:
        """The calibration dataloader, built on first use."""
        if not isinstance(self._calib_dataloader, DataLoader):
            self._calib_dataloader = build_calib_dataloader(self.runner, self._calib_dataloader,
                                                            self.calib_seed)
        return self._calib_dataloader

    def run(self) -> dict:
        """mmengine's ``TestLoop.run``, the model prepared between the
        ``before_test_epoch`` hooks and the first batch (:meth:`run_iter`)."""
        if len(self.dataloader) == 0:
            raise ValueError('PTQ: the test dataloader is empty; nothing would be evaluated')
        self._calibrated = self.check_checkpoint()
        self._prepared = False
        return super().run()

    def run_iter(self, idx: int, data_batch: Sequence[dict]) -> None:
        if not self._prepared:
            self._prepared = True
            self.quantize_model(self._calibrated)
            self.runner.model.eval()
            self.set_execution()
            if self.compile_kwargs is not None:
                self.model.backbone.compile(**self.compile_kwargs)
                print_log(
                    f'PTQ: backbone compiled with torch.compile({self.compile_kwargs})',
                    logger='current')
            self.runner.model.eval()
        super().run_iter(idx, data_batch)

    def prepare_model(self) -> None:
        """What :meth:`run` does before its first batch, for tools that
        evaluate the model their own way: check the loaded checkpoint, call the
        ``before_test`` and ``before_test_epoch`` hooks, then quantize."""
        calibrated = self.check_checkpoint()
        self.runner.call_hook('before_test')
        self.runner.call_hook('before_test_epoch')
        self.quantize_model(calibrated)
        self.runner.model.eval()
        self.set_execution()

    def set_execution(self) -> None:
        """Run the quantized products as ``execution`` says (the model in eval)."""
        if self.execution == 'integer':
            to_integer(self.model)
            kernels = {k for k in integer_kernels(self.model).values() if k is not None}
            print_log(
                f'PTQ: quantized products run on integer kernels ({", ".join(kernels)})',
                logger='current')

    def check_checkpoint(self) -> bool:
        """Check the loaded checkpoint against the model; whether it is a
        calibrated one (else an FP one)."""
        checkpoint = self.runner.cfg.get('load_from')
        if not checkpoint:
            raise ValueError('PTQ needs a checkpoint: run tools/test.py CONFIG '
                             'CHECKPOINT (load_from is not set)')
        model = self.model
        path = checkpoint_to_load(checkpoint)  # not inside: the allowlist does not nest
        with checkpoint_types_allowed():
            state = CheckpointLoader.load_checkpoint(path, map_location='cpu')
        calibrated = any(q.is_calibrated for q in quantizers_of(model))
        if calibrated:
            check_calibrated_checkpoint(model, state, checkpoint, self.setting())
        else:
            check_float_checkpoint(model, state, checkpoint)
            check_base_model(state, checkpoint, self.runner.cfg.get('base_model'))
        return calibrated

    def quantize_model(self, calibrated: bool) -> None:
        """Calibrate an FP checkpoint (saved as ``calibrated.pth``), or use a
        calibrated one as it is (hooks that act on the weights, such as EMA,
        have run before)."""
        checkpoint = self.runner.cfg.get('load_from')
        if calibrated:
            print_log(f'PTQ: {checkpoint} is calibrated; evaluating it as it is', logger='current')
            enable_fake_quant(self.model)
        else:
            self.calibrate()
            if self.save_calibrated and is_main_process():
                self._save_calibrated(checkpoint)

    def _save_calibrated(self, fp_checkpoint: str) -> None:
        path = osp.join(self.runner.work_dir, 'calibrated.pth')
        meta = {
            META_KEY: self.setting(),
            'calib_images': self.num_calib_images,
            'fp_checkpoint': fp_checkpoint
        }
        save_checkpoint(
            dict(meta=meta, state_dict=weights_to_cpu(get_state_dict(self.model))), path)
        print_log(f'PTQ: calibrated checkpoint saved to {path}', logger='current')

    def setting(self) -> Dict[str, Any]:
        """The model's quantization setting and this loop's reparameterization
        (its range None without one)."""
        return dict(
            quant_setting(self.model),
            reparam=self.reparam,
            reparam_range=self.reparam_range if self.reparam else None)

    def calibration_image_paths(self) -> List[str]:
        """The images :meth:`calibrate` observes (over all ranks): a search
        or a tuning split must not contain them."""
        loader = self.calib_dataloader
        dataset, sampler = loader.dataset, loader.sampler
        world = get_world_size()
        num = min(math.ceil(self.calib_images / world) * world, len(dataset))
        if isinstance(sampler, DefaultSampler) and sampler.shuffle:
            generator = torch.Generator().manual_seed(sampler.seed + sampler.epoch)
            indices = torch.randperm(len(dataset), generator=generator).tolist()[:num]
        elif isinstance(sampler, DefaultSampler):
            indices = list(range(num))
        else:
            indices = list(sampler)[:num]
        return [dataset.get_data_info(i)['img_path'] for i in indices]

    def calibrate(self) -> int:
        """Reparameterize (if enabled), observe ``calib_images`` training images,
        then compute the qparams (:func:`calibrate_model`).

        Returns:
            The number of images this rank observed.
        """
        seen = calibrate_model(
            self.model,
            self.calib_dataloader,
            self.calib_images,
            reparam=self.reparam,
            reparam_range=self.reparam_range)
        self.num_calib_images = int(all_reduce_sum(seen))
        return seen


def prepare_test_loop(runner: Runner) -> PTQLoop:
    """``runner``'s PTQ loop with its model calibrated (FP checkpoint) or checked
    (calibrated one), ready to evaluate: what ``Runner.test`` does before the
    loop's evaluation, for tools that evaluate the model their own way (the
    search, the demo's rows)."""
    loop = runner.test_loop  # mmengine builds the loop on first access
    if not isinstance(loop, PTQLoop):
        raise TypeError(f'test_cfg builds a {type(loop).__name__}; a quantized model needs '
                        "test_cfg=dict(type='PTQLoop', ...)")
    runner.call_hook('before_run')
    runner.load_or_resume()
    loop.prepare_model()
    return loop


__all__ = ['PTQLoop', 'compile_kwargs', 'prepare_test_loop', 'COMPILE_ARGS', 'EXECUTIONS']
