"""Fixes the pinned stack needs, applied when the package is imported.

1. torch >= 2.6 defaults ``torch.load(weights_only=True)``, while mmengine 0.10.7 calls
``torch.load`` without the argument: runner checkpoints (``--resume``, ``load_from``,
``tools/test.py``) then fail on the numpy arrays and ``HistoryBuffer`` objects kept by
the message hub. Instead of turning the safety off, the local-file loader registered
here keeps ``weights_only=True`` and allowlists exactly the types mmengine writes.
The unpickler calls only allowlisted functions, so ``getattr`` (which pickles
``HistoryBuffer``'s statistic methods) can only fetch attributes, never run code.

2. mmengine's ``init_dist`` with the pytorch launcher (``tools/dist_*.sh``) calls
``torch.cuda.set_device`` unconditionally, which fails on a CPU-only torch. On a
machine without CUDA the process group is initialized without selecting a device
(gloo), so distributed calibration and testing run on CPU.
"""
import os.path as osp
from typing import Any, Callable, Iterable, List, Optional, Union

import mmcv
import mmengine.dist.utils as mmengine_dist_utils
import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader

_EXTRA_SAFE_GLOBALS: List[Any] = []


def checkpoint_safe_globals() -> List[Any]:
    """Globals allowed when unpickling a local checkpoint."""
    numpy_dtypes = [
        getattr(np.dtypes, name) for name in dir(np.dtypes)
        if name.endswith('DType') and isinstance(getattr(np.dtypes, name), type)
    ]
    return [
        HistoryBuffer, getattr, np.ndarray, np.dtype, np._core.multiarray._reconstruct,
        np._core.multiarray.scalar, *numpy_dtypes, *_EXTRA_SAFE_GLOBALS
    ]


def add_checkpoint_safe_globals(globals_: Iterable[Any]) -> None:
    """Allow more types in local checkpoints (e.g. a custom hook's state)."""
    _EXTRA_SAFE_GLOBALS.extend(globals_)


def load_from_local_weights_only(filename: str,
                                 map_location: Optional[Union[str, torch.device,
                                                              Callable]] = None) -> Any:
    """Load a local checkpoint with ``weights_only=True`` and mmengine's types."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file {filename} can not be found')
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except torch.serialization.pickle.UnpicklingError as err:
        reason = next(
            (line.strip() for line in str(err).splitlines() if 'WeightsUnpickler error' in line),
            str(err))
        raise RuntimeError(f'checkpoint {filename} holds a type that is not allowed in '
                           f'weights-only loading: {reason}. If you '
                           'trust the file, allow the type with '
                           'mixaq_mmdet.compat.add_checkpoint_safe_globals([...]).') from err


CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_weights_only, force=True)

_mmengine_init_dist_pytorch = mmengine_dist_utils._init_dist_pytorch


def init_dist_pytorch_without_cuda(backend: str, init_backend: str = 'torch', **kwargs) -> None:
    """mmengine's pytorch-launcher initialization, minus the CUDA device choice
    when there is no CUDA."""
    if torch.cuda.is_available() or init_backend != 'torch':
        _mmengine_init_dist_pytorch(backend, init_backend=init_backend, **kwargs)
        return
    torch.distributed.init_process_group(backend=backend, **kwargs)


mmengine_dist_utils._init_dist_pytorch = init_dist_pytorch_without_cuda


def check_mmcv_ops(device: Union[str, torch.device]) -> None:
    """Raise unless mmcv was built with the ops of ``device``: a CPU-only mmcv
    on a GPU would otherwise fail deep inside the first RoIAlign or NMS."""
    if not str(device).startswith('cuda'):
        return
    from mmcv.ops import get_compiling_cuda_version
    version = get_compiling_cuda_version()
    if version == 'not available':
        raise RuntimeError(
            f'mmcv {mmcv.__version__} has no CUDA ops (mmcv.ops.get_compiling_cuda_version() '
            f"is {version!r}) but this run is on {device}: build the environment on this "
            'machine (rm -rf .venv && make env: tools/setup_env.sh builds mmcv with CUDA ops '
            "where nvidia-smi is found, or with MIXAQ_CUDA=1), or run on CPU "
            "(CUDA_VISIBLE_DEVICES='')")


def run_mmcv_ops(device: Union[str, torch.device]) -> None:
    """Run mmcv's NMS and RoIAlign on ``device`` and compare them with the CPU
    (the set-up's check that the compiled ops work, not only import)."""
    from mmcv.ops import RoIAlign, nms
    check_mmcv_ops(device)
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(64, 2, generator=generator) * 100
    boxes = torch.cat([xy, xy + 10 + 40 * torch.rand(64, 2, generator=generator)], 1)
    scores = torch.rand(64, generator=generator)
    feats = torch.rand(1, 8, 40, 40, generator=generator)
    rois = torch.cat([torch.zeros(64, 1), boxes / 4], 1)
    align = RoIAlign((7, 7), 0.25, sampling_ratio=0, aligned=True)
    keep_cpu, keep = nms(boxes, scores, 0.5)[1], nms(boxes.to(device), scores.to(device), 0.5)[1]
    pooled_cpu, pooled = align(feats, rois), align(feats.to(device), rois.to(device))
    if not torch.equal(keep_cpu, keep.cpu()) or not torch.allclose(
            pooled_cpu, pooled.cpu(), atol=1e-5):
        raise RuntimeError(f"mmcv's NMS / RoIAlign on {device} disagree with the CPU")
    print(f"mmcv {mmcv.__version__}: NMS and RoIAlign run on {device}")
