import os
import os.path as osp
import subprocess
import sys
from typing import Dict, List, Optional

import pytest

from mixaq_mmdet.datasets import generate

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
FP_BENCH_CONFIG = osp.join(REPO, 'configs/benchmark/mask-rcnn_swin-nano-p4-w7_fpn_shapes.py')
COCO_CONFIG = osp.join(REPO, 'configs/mixaq/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py')


@pytest.fixture(scope='session')
def tiny_shapes(tmp_path_factory) -> str:
    """A tiny benchmark (8 train, 4 val, 4 search images at 320 px)."""
    root = str(tmp_path_factory.mktemp('shapes_coco'))
    generate(root, num_train=8, num_val=4, seed=0, num_search=4)
    return root


@pytest.fixture(scope='session')
def fp_checkpoint(tmp_path_factory) -> str:
    """An FP benchmark detector with random weights (plumbing, not accuracy)."""
    import torch
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    path = str(tmp_path_factory.mktemp('fp') / 'fp.pth')
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(FP_BENCH_CONFIG).model)
    model.init_weights()
    torch.save(dict(state_dict=model.state_dict(), meta={}), path)
    return path


def ptq_options(data_root: str, calib_images: int = 4) -> List[str]:
    """``--cfg-options`` of :func:`data_root_options` plus the PTQ calibration
    and search sets under ``data_root``."""
    root = data_root.rstrip('/') + '/'
    return data_root_options(data_root) + [
        f'test_cfg.calib_dataloader.dataset.data_root={root}',
        f'test_cfg.calib_images={calib_images}',
        'test_cfg.calib_dataloader.num_workers=0',
        f'search_dataloader.dataset.data_root={root}',
    ]


def data_root_options(data_root: str) -> List[str]:
    """``--cfg-options`` that point the benchmark config at ``data_root``."""
    root = data_root.rstrip('/') + '/'
    ann = root + 'annotations/instances_val.json'
    return [
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
        f'val_evaluator.ann_file={ann}',
        f'test_evaluator.ann_file={ann}',
        'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False',
        'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False',
    ]


def run_tool(args: List[str],
             cwd: str = REPO,
             timeout: int = 600,
             check: bool = True,
             threads: Optional[int] = None,
             env: Optional[Dict[str, Optional[str]]] = None) -> subprocess.CompletedProcess:
    """Run a repository script with this interpreter; fail with its output.
    ``env`` sets (None: removes) environment variables of the script.

    ``threads``: OpenMP threads per process (1 for a launcher that starts a
    process per core: more threads than cores make gloo's ranks crawl); by
    default ``$MIXAQ_TEST_TOOL_THREADS`` or 2 (set it to check that a test's
    outcome does not depend on the tools' thread count)."""
    if threads is None:
        threads = int(os.environ.get('MIXAQ_TEST_TOOL_THREADS', 2))
    variables = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS=str(threads))
    for name, value in (env or {}).items():
        variables.pop(name, None)
        if value is not None:
            variables[name] = value
    proc = subprocess.run(
        [sys.executable] + args,
        cwd=cwd,
        env=variables,
        capture_output=True,
        text=True,
        timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f'{" ".join(args)} exited {proc.returncode}\n'
                    f'--- stdout ---\n{proc.stdout[-4000:]}\n'
                    f'--- stderr ---\n{proc.stderr[-4000:]}')
    return proc
