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
        HistoryBuffer, getattr, np.ndarray, np.dtype,
        np._core.multiarray._reconstruct, np._core.multiarray.scalar,
        *numpy_dtypes, *_EXTRA_SAFE_GLOBALS
    ]


def add_checkpoint_safe_globals(globals_: Iterable[Any]) -> None:
    """Allow more types in local checkpoints (e.g. a custom hook's state)."""
    _EXTRA_SAFE_GLOBALS.extend(globals_)


def load_from_local_weights_only(
        filename: str,
        map_location: Optional[Union[str, torch.device, Callable]] = None
) -> Any:
    """Load a local checkpoint with ``weights_only=True`` and mmengine's types."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file {filename} can not be found')
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(filename, map_location=map_location,
                              weights_only=True)
    except torch.serialization.pickle.UnpicklingError as err:
        reason = next((line.strip() for line in str(err).splitlines()
                       if 'WeightsUnpickler error' in line), str(err))
        raise RuntimeError(
            f'checkpoint {filename} holds a type that is not allowed in '
            f'weights-only loading: {reason}. If you '
            'trust the file, allow the type with '
            'mixaq_mmdet.compat.add_checkpoint_safe_globals([...]).') from err


CheckpointLoader.register_scheme(
    prefixes='', loader=load_from_local_weights_only, force=True)


_mmengine_init_dist_pytorch = mmengine_dist_utils._init_dist_pytorch


def init_dist_pytorch_without_cuda(backend: str, init_backend: str = 'torch',
                                   **kwargs) -> None:
    """mmengine's pytorch-launcher initialization, minus the CUDA device choice
    when there is no CUDA."""
    if torch.cuda.is_available() or init_backend != 'torch':
        _mmengine_init_dist_pytorch(backend, init_backend=init_backend, **kwargs)
        return
    torch.distributed.init_process_group(backend=backend, **kwargs)


mmengine_dist_utils._init_dist_pytorch = init_dist_pytorch_without_cuda
