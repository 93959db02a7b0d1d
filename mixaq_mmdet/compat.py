"""What the pinned stack needs from the plugin, as functions its runner and
tools call; importing the package applies none of it.

1. torch >= 2.6 defaults ``torch.load(weights_only=True)``, while mmengine 0.10.7 calls
``torch.load`` without the argument: runner checkpoints (``--resume``, ``load_from``,
``tools/test.py``) then fail on the numpy arrays and ``HistoryBuffer`` objects kept by
the message hub. Instead of turning the safety off, :func:`checkpoint_safe_globals`
allowlists exactly the types mmengine writes, for the duration of a load
(:class:`~mixaq_mmdet.engine.MixAQRunner`, :func:`load_from_local_weights_only`).
The unpickler calls only allowlisted functions, so ``getattr`` (which pickles
``HistoryBuffer``'s statistic methods) can only fetch attributes, never run code.

2. mmengine's ``init_dist`` with the pytorch launcher (``tools/dist_*.sh``) calls
``torch.cuda.set_device`` unconditionally, which fails on a CPU-only torch:
:func:`init_process_group_without_cuda` initializes the process group without
selecting a device (gloo), so distributed calibration and testing run on CPU.
"""
import codecs
import contextlib
import datetime
import os.path as osp
from typing import Any, Callable, Iterable, Iterator, List, Optional, Union

import mmcv
import numpy as np
import torch
import torch.multiprocessing as mp
from mmengine.logging import HistoryBuffer

_EXTRA_SAFE_GLOBALS: List[Any] = []


def checkpoint_safe_globals() -> List[Any]:
    """Globals allowed when unpickling a local checkpoint: mmengine's message
    hub (``HistoryBuffer``), numpy arrays, scalars and dtypes. numpy's array
    and scalar reconstructors are taken from their public ``__reduce__``, as
    pickle records them."""
    numpy_dtypes = [
        getattr(np.dtypes, name) for name in dir(np.dtypes)
        if name.endswith('DType') and isinstance(getattr(np.dtypes, name), type)
    ]
    reconstruct, scalar = np.zeros(1).__reduce__()[0], np.float64(0).__reduce__()[0]
    # codecs.encode: how pickle protocol 2 stores an array's bytes (torch >= 2.5
    # allows it by itself, 2.4 does not)
    return [
        HistoryBuffer, getattr, codecs.encode, np.ndarray, np.dtype, reconstruct, scalar,
        *numpy_dtypes, *_EXTRA_SAFE_GLOBALS
    ]


def add_checkpoint_safe_globals(globals_: Iterable[Any]) -> None:
    """Allow more types in local checkpoints (e.g. a custom hook's state)."""
    _EXTRA_SAFE_GLOBALS.extend(globals_)


@contextlib.contextmanager
def checkpoint_types_allowed() -> Iterator[None]:
    """Within the block, ``torch.load(weights_only=True)`` (torch >= 2.6's
    default) also accepts :func:`checkpoint_safe_globals`; torch's own
    allowlist is restored after it (torch 2.4 has no ``safe_globals`` context:
    its public get / add / clear functions do the same)."""
    serialization = torch.serialization
    if hasattr(serialization, 'safe_globals'):
        with serialization.safe_globals(checkpoint_safe_globals()):
            yield
        return
    saved = list(serialization.get_safe_globals())
    serialization.add_safe_globals(checkpoint_safe_globals())
    try:
        yield
    finally:
        serialization.clear_safe_globals()
        serialization.add_safe_globals(saved)


def load_from_local_weights_only(filename: str,
                                 map_location: Optional[Union[str, torch.device,
                                                              Callable]] = None) -> Any:
    """Load a local checkpoint with ``weights_only=True`` and mmengine's types."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file {filename} can not be found')
    try:
        with checkpoint_types_allowed():
            return torch.load(filename, map_location=map_location, weights_only=True)
    except torch.serialization.pickle.UnpicklingError as err:
        reason = next(
            (line.strip() for line in str(err).splitlines() if 'WeightsUnpickler error' in line),
            str(err))
        raise RuntimeError(f'checkpoint {filename} holds a type that is not allowed in '
                           f'weights-only loading: {reason}. If you '
                           'trust the file, allow the type with '
                           'mixaq_mmdet.compat.add_checkpoint_safe_globals([...]).') from err


def init_process_group_without_cuda(backend: str = 'nccl',
                                    init_backend: str = 'torch',
                                    timeout: Optional[float] = None,
                                    **kwargs) -> None:
    """The pytorch launcher's process group on a machine without CUDA: what
    mmengine's ``init_dist`` does with ``env_cfg.dist_cfg``, minus its
    ``torch.cuda.set_device``; ``backend`` must be one that runs on CPU."""
    if backend == 'nccl':
        raise ValueError("env_cfg.dist_cfg.backend='nccl' needs CUDA, which this machine "
                         "lacks: use backend='gloo' (--cfg-options env_cfg.dist_cfg.backend=gloo)")
    if init_backend != 'torch':
        raise ValueError(f"env_cfg.dist_cfg.init_backend={init_backend!r} is not supported "
                         "without CUDA; valid: 'torch'")
    if timeout is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=timeout)
    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method('spawn')
    torch.distributed.init_process_group(backend=backend, **kwargs)


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
