"""The main job on the embedded benchmark (``make demo``).

Generates the benchmark data if absent, trains the FP model unless its checkpoint
is already there (an interrupted run resumes), evaluates it with COCO mAP, writes
``<work-dir>/results.json`` (a list of rows) and prints the results table.

    python tools/run_demo.py [--work-dir work_dirs/demo] [--data-root data/shapes_coco]
"""
import argparse
import json
import os
import os.path as osp
import time
from typing import Dict, List

from mmengine.config import Config
from mmengine.runner import Runner

import mixaq_mmdet  # noqa: F401  (stack fixes, registries)
from mixaq_mmdet.datasets import generate
from mixaq_mmdet.utils import load_runner_config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
FP_CONFIG = osp.join(REPO, 'configs/benchmark/mask-rcnn_swin-nano-p4-w7_fpn_shapes.py')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/shapes_coco')
    parser.add_argument('--num-train', type=int, default=600,
                        help='train images to generate if the data is absent')
    parser.add_argument('--num-val', type=int, default=200,
                        help='val images to generate if the data is absent')
    parser.add_argument('--max-epochs', type=int, default=None,
                        help='override the FP config (a quick run)')
    return parser.parse_args()


def ensure_data(data_root: str, num_train: int, num_val: int) -> None:
    """Generate the benchmark unless both annotation files exist."""
    ann = [osp.join(data_root, 'annotations', f'instances_{s}.json')
           for s in ('train', 'val')]
    if all(osp.isfile(a) for a in ann):
        print(f'[demo] data: {data_root} (present)')
        return
    print(f'[demo] data: generating {num_train} train / {num_val} val images '
          f'into {data_root}')
    generate(data_root, num_train=num_train, num_val=num_val, seed=0)


def benchmark_config(config: str, work_dir: str, data_root: str,
                     max_epochs: int = None) -> Config:
    """The benchmark config pointed at ``data_root`` and ``work_dir``."""
    data_root = data_root.rstrip('/') + '/'
    options = {
        'train_dataloader.dataset.data_root': data_root,
        'val_dataloader.dataset.data_root': data_root,
        'test_dataloader.dataset.data_root': data_root,
        'val_evaluator.ann_file': data_root + 'annotations/instances_val.json',
        'test_evaluator.ann_file': data_root + 'annotations/instances_val.json',
    }
    if max_epochs is not None:
        options['train_cfg.max_epochs'] = max_epochs
        options['train_cfg.val_interval'] = max_epochs
        options['param_scheduler.1.end'] = max_epochs
    return load_runner_config(config, work_dir=work_dir, cfg_options=options)


def ensure_fp_checkpoint(cfg: Config) -> str:
    """Train the FP model unless its final checkpoint exists; return its path."""
    final = osp.join(cfg.work_dir, f'epoch_{cfg.train_cfg.max_epochs}.pth')
    if osp.isfile(final):
        print(f'[demo] FP model: {final} (cached)')
        return final
    print(f'[demo] FP model: training into {cfg.work_dir} '
          '(about 12 minutes on 2 cores)')
    cfg.resume = True  # continue an interrupted run from its last checkpoint
    start = time.time()
    Runner.from_cfg(cfg).train()
    print(f'[demo] FP model trained in {(time.time() - start) / 60:.1f} min')
    return final


def evaluate(cfg: Config, checkpoint: str) -> Dict[str, float]:
    """COCO metrics of ``checkpoint`` on the test split."""
    cfg = cfg.copy()
    cfg.load_from = checkpoint
    cfg.resume = False
    cfg.work_dir = osp.join(cfg.work_dir, 'test')
    return Runner.from_cfg(cfg).test()


def result_row(name: str, metrics: Dict[str, float]) -> Dict:
    """A results row; mAP in points (COCO mAP@[.5:.95] x 100)."""
    return dict(name=name,
                bbox_mAP=round(100 * metrics['coco/bbox_mAP'], 2),
                segm_mAP=round(100 * metrics['coco/segm_mAP'], 2))


def format_table(rows: List[Dict]) -> str:
    header = f"{'name':<24}{'bbox mAP':>10}{'segm mAP':>10}"
    lines = [header, '-' * len(header)]
    for row in rows:
        lines.append(f"{row['name']:<24}{row['bbox_mAP']:>10.2f}"
                     f"{row['segm_mAP']:>10.2f}")
    return '\n'.join(lines)


def main() -> None:
    args = parse_args()
    ensure_data(args.data_root, args.num_train, args.num_val)
    fp_cfg = benchmark_config(FP_CONFIG, osp.join(args.work_dir, 'fp'),
                              args.data_root, args.max_epochs)
    checkpoint = ensure_fp_checkpoint(fp_cfg)
    rows = [result_row('fp', evaluate(fp_cfg, checkpoint))]
    os.makedirs(args.work_dir, exist_ok=True)
    out = osp.join(args.work_dir, 'results.json')
    with open(out, 'w') as f:
        json.dump(rows, f, indent=2)
    print(f'\n[demo] results ({FP_CONFIG.replace(REPO + "/", "")}, '
          f'val split of {args.data_root}):')
    print(format_table(rows))
    print(f'[demo] written: {out}')


if __name__ == '__main__':
    main()
