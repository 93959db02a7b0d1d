"""Steps of ``tools/gpu_check.sh`` that are Python.

    python tools/gpu_check_steps.py env WHEELS_DIR
    python tools/gpu_check_steps.py amp --level backbone|detector --device cuda
        [--steps 4] [--batch 2] [--json out.json]

``env``: the environment report (python, torch, CUDA, the device, Triton,
nvcc, mmcv's ops, the bundle's packages and where each was imported from).

``amp``: training steps of the benchmark's QAT (``qat_uniform_w4a4_shapes``)
and SAQA (``qat_saqa_w4a4a2_shapes``, its ratios drawn per step as the config's
``SAQAHook`` draws them) under mixed precision, with an optim wrapper built from
the config (its ``QATOptimWrapperConstructor``): mmengine's fp16
``AmpOptimWrapper`` with a dynamic loss scale on cuda, the project's bf16
``CPUAmpOptimWrapper`` on cpu. ``--level backbone`` trains the quantized Swin
alone on the mean square of its outputs: it needs none of mmcv's CUDA ops, so it
runs before they are built; ``--level detector`` trains the whole Mask R-CNN
through ``model.train_step`` (RoIAlign and NMS on the device: mmcv's CUDA ops).
Random weights, quantizers calibrated by min/max on one image, random images
with 3 objects each. Fails (exit 1) unless every loss is finite, the backbone
computed in the autocast dtype, the step sizes stayed finite float32 parameters
and some step was taken.
"""
import argparse
import copy
import json
import math
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

# ---- env ------------------------------------------------------------------------------------


def _wheel_names(wheels_dir: str) -> List[str]:
    return sorted(
        f.split('-')[0].replace('_', '-') for f in os.listdir(wheels_dir) if f.endswith('.whl'))


def env_report(wheels_dir: str) -> int:
    from importlib import metadata
    lines = [f'python: {sys.version.split()[0]} ({sys.executable})']
    import torch
    lines += [
        f'torch: {torch.__version__} ({osp.dirname(torch.__file__)})',
        f'torch CUDA: {torch.version.cuda}, cuda available: {torch.cuda.is_available()}'
    ]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines += [
            f'device: {torch.cuda.get_device_name(0)}, capability '
            f'{".".join(map(str, torch.cuda.get_device_capability(0)))}, '
            f'{props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs',
            f'cudnn: {torch.backends.cudnn.version()}'
        ]
    try:
        import triton
        lines.append(f'triton: {triton.__version__}')
    except ImportError:
        lines.append('triton: not installed')
    try:
        nvcc = subprocess.run(['nvcc', '--version'], capture_output=True, text=True, timeout=30)
        lines.append(f'nvcc: {nvcc.stdout.strip().splitlines()[-1]}')
    except (OSError, IndexError, subprocess.TimeoutExpired) as exc:
        lines.append(f'nvcc: not found ({type(exc).__name__})')
    lines.append(f'cpus: {os.cpu_count()}')
    import mmcv
    import mmcv.ops
    lines.append(f'mmcv {mmcv.__version__}: ops compiled, CUDA ops: '
                 f'{mmcv.ops.get_compiling_cuda_version()}')
    import mixaq_mmdet
    lines.append(f'mixaq_mmdet: {mixaq_mmdet.__version__} ({osp.dirname(mixaq_mmdet.__file__)})')
    lines.append(f'bundle packages ({wheels_dir}):')
    for name in _wheel_names(wheels_dir):
        try:
            dist = metadata.distribution(name)
            lines.append(f'  {name} {dist.version} ({dist.locate_file("")})')
        except metadata.PackageNotFoundError:
            lines.append(f'  {name}: NOT INSTALLED')
    print('\n'.join(lines))
    return 0 if all('NOT INSTALLED' not in line for line in lines) else 1


# ---- amp ------------------------------------------------------------------------------------

CONFIGS = dict(
    qat='configs/benchmark/qat/qat_uniform_w4a4_shapes.py',
    saqa='configs/benchmark/qat/qat_saqa_w4a4a2_shapes.py')
SHAPE = (320, 320)


def _batch(size: int) -> Dict:
    import torch
    from mmdet.testing import demo_mm_inputs
    torch.manual_seed(0)
    packed = demo_mm_inputs(
        size, [(3, ) + SHAPE] * size, num_items=[3] * size, num_classes=4, with_mask=True)
    return dict(inputs=list(packed['inputs']), data_samples=packed['data_samples'])


def _calibrate(model, batch: Dict, saqa: bool) -> None:
    import torch

    from mixaq_mmdet.quantization import enable_calibration, finish_calibration
    for module in model.modules():
        if getattr(module, 'calib', None) == 'percentile_mse':
            module.calib = 'minmax'  # the qparams only; the step is the same
    model.eval()
    enable_calibration(model)
    backbone = getattr(model, 'backbone', model)
    if saqa:
        backbone.set_ratios(0.5, 0.0)  # both branches see data
    with torch.no_grad():
        _forward(model, dict(inputs=batch['inputs'][:1], data_samples=batch['data_samples'][:1]))
    finish_calibration(model, strict=False)


def _forward(model, batch: Dict):
    """The backbone alone: its outputs on the normalized images; a detector: its features."""
    import torch
    if hasattr(model, 'data_preprocessor') and hasattr(model, 'backbone'):
        return model(**model.data_preprocessor(batch, False), mode='tensor')
    images = torch.stack(batch['inputs']).to(next(model.parameters()).device).float()
    return model((images - 128.0) / 64.0)


def _backbone_step(backbone, batch: Dict, optim_wrapper) -> float:
    """One step of the backbone on the mean square of its outputs."""
    with optim_wrapper.optim_context(backbone):
        loss = sum(out.float().pow(2).mean() for out in _forward(backbone, batch))
    optim_wrapper.update_params(loss)
    return float(loss)


def _amp_run(name: str, level: str, device, steps: int, batch: Dict, fused: Any) -> Dict:
    """``steps`` training steps of one config's backbone or detector; what they
    did and what is wrong."""
    import torch
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    from mixaq_mmdet.engine.hooks import SAQAHook
    cfg = Config.fromfile(osp.join(REPO, CONFIGS[name]))
    cfg.model.backbone.init_cfg = None  # random weights; nothing downloads
    cfg.model.backbone.fused_kernels = fused
    torch.manual_seed(0)
    model = MODELS.build(cfg.model if level == 'detector' else cfg.model.backbone).to(device)
    backbone = getattr(model, 'backbone', model)
    saqa = None
    for hook in cfg.get('custom_hooks', []):
        if hook['type'] == 'SAQAHook':
            saqa = SAQAHook(**{'seed': 0, **{k: v for k, v in hook.items() if k != 'type'}})
    _calibrate(model, batch, saqa is not None)
    cuda = device.type == 'cuda'
    wrapper_cfg = copy.deepcopy(cfg.optim_wrapper)
    if cuda:
        wrapper_cfg.update(type='AmpOptimWrapper', loss_scale='dynamic', dtype='float16')
    else:
        wrapper_cfg.update(type='CPUAmpOptimWrapper', loss_scale='dynamic')
        if level == 'backbone':
            wrapper_cfg.update(autocast_scope=None)  # the model is the backbone
    optim_wrapper = build_optim_wrapper(model, wrapper_cfg)
    quantizer_params = {
        n: p
        for n, p in model.named_parameters() if n.endswith(('.scale', '.zero_point'))
    }
    before = {n: p.detach().clone() for n, p in quantizer_params.items()}
    dtypes = set()
    qkv = backbone.stages[0].blocks[0].attn.w_msa.qkv
    handle = qkv.register_forward_hook(lambda m, i, o: dtypes.add(str(o.dtype)))
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    records = []
    for step in range(steps):
        if saqa is not None:
            backbone.set_ratios(*saqa.ratios(backbone.num_pairs, step))
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        if level == 'detector':
            loss = float(model.train_step(copy.copy(batch), optim_wrapper)['loss'])
        else:
            loss = _backbone_step(model, batch, optim_wrapper)
        if cuda:
            torch.cuda.synchronize(device)
        records.append(
            dict(
                loss=loss,
                seconds=time.perf_counter() - start,
                loss_scale=float(optim_wrapper.loss_scaler.get_scale())))
    handle.remove()
    moved = sorted(n for n in before if not torch.equal(before[n], quantizer_params[n].detach()))
    problems = []
    if not all(math.isfinite(r["loss"]) for r in records):
        problems.append(f'{name}: a loss is not finite: {[r["loss"] for r in records]}')
    want = 'torch.float16' if cuda else 'torch.bfloat16'
    if dtypes != {want}:
        problems.append(f'{name}: the backbone computed in {sorted(dtypes)}, not {want}')
    bad = [
        n for n, p in quantizer_params.items()
        if p.dtype != torch.float32 or not torch.isfinite(p).all()
    ]
    if not quantizer_params or bad:
        problems.append(f'{name}: step sizes / zero points not finite float32: {bad[:3]} '
                        f'({len(quantizer_params)} in all)')
    if not moved:
        problems.append(f'{name}: no step size moved in {steps} steps (every step skipped? '
                        f'loss scales {[r["loss_scale"] for r in records]})')
    return dict(
        config=CONFIGS[name],
        level=level,
        optim_wrapper=type(optim_wrapper).__name__,
        dtypes=sorted(dtypes),
        steps=records,
        quantizer_params=len(quantizer_params),
        moved=len(moved),
        peak_memory_mb=torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        problems=problems)


def amp_steps(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog='gpu_check_steps.py amp')
    parser.add_argument(
        '--level',
        choices=['backbone', 'detector'],
        required=True,
        help='the quantized Swin alone (no mmcv ops on the device) or the whole Mask R-CNN')
    parser.add_argument('--device', default='cuda', help='cuda (fp16) or cpu (bf16)')
    parser.add_argument('--steps', type=int, default=4, help='training steps per config')
    parser.add_argument('--batch', type=int, default=2, help=f'images per step ({SHAPE})')
    parser.add_argument('--configs', nargs='+', choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument(
        '--fused-kernels',
        choices=['true', 'false', 'auto'],
        default='true',
        help='the backbone\'s fused_kernels (true: compiled, an error if they cannot be)')
    parser.add_argument('--json', help='write the results to this file')
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1:
        parser.error(f'--steps and --batch must be >= 1, got {args.steps} and {args.batch}')
    import torch
    from mmdet.utils import register_all_modules

    import mixaq_mmdet  # noqa: F401  (its registries)
    register_all_modules()
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda, but torch.cuda.is_available() is False')
    batch = _batch(args.batch)
    fused = dict(true=True, false=False, auto='auto')[args.fused_kernels]
    runs = {
        name: _amp_run(name, args.level, device, args.steps, batch, fused)
        for name in args.configs
    }
    problems = [p for run in runs.values() for p in run['problems']]
    for name, run in runs.items():
        print(f"{name}: {run['optim_wrapper']} {run['dtypes']}, losses "
              f"{[round(r['loss'], 4) for r in run['steps']]}, s/step "
              f"{[round(r['seconds'], 3) for r in run['steps']]}, loss scales "
              f"{[r['loss_scale'] for r in run['steps']]}, {run['moved']}/"
              f"{run['quantizer_params']} step sizes / zero points moved")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(
                dict(
                    device=str(device),
                    level=args.level,
                    batch=args.batch,
                    shape=SHAPE,
                    fused_kernels=fused,
                    runs=runs),
                f,
                indent=1)
    for problem in problems:
        print(f'PROBLEM {problem}')
    return 1 if problems else 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['env'] and len(argv) == 2:
        return env_report(argv[1])
    if argv[:1] == ['amp']:
        return amp_steps(argv[1:])
    print(__doc__.split('\n\n')[1], file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main())
