"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT`` (mmdet 3.3.0's CLI).

Prints the COCO metrics (``coco/bbox_mAP``, ``coco/segm_mAP``, ...) of the test
split through the config's ``test_cfg`` loop. CHECKPOINT is a local file or a URL
(as in mmdet); ``--tta`` wraps the model in mmdet's test-time augmentation.
"""
import warnings

# Before anything imports it: the pinned stack's deprecation of setuptools'
# pkg_resources (mmengine's package checks); every other warning still shows.
warnings.filterwarnings('ignore', 'pkg_resources is deprecated as an API', UserWarning)

import argparse
import os

from mmdet.engine.hooks.utils import trigger_visualization_hook
from mmdet.evaluation import DumpDetResults
from mmdet.utils import setup_cache_size_limit_of_dynamo

import mixaq_mmdet  # noqa: F401  (registries)
from mixaq_mmdet.utils import (build_runner, close_process_group, load_runner_config,
                               parse_runner_args, with_test_time_aug)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file or URL')
    parser.add_argument('--work-dir', help='directory for the metrics file')
    parser.add_argument('--out', help='dump predictions to a .pkl file')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir', help='save painted predictions here '
        '(inside work_dir/timestamp)')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds each shown image stays')
    parser.add_argument(
        '--tta', action='store_true', help='test-time augmentation (mmdet DetTTAModel, flips)')
    return parse_runner_args(parser)


def main() -> None:
    args = parse_args()
    setup_cache_size_limit_of_dynamo()
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must be a .pkl or .pickle file, got {args.out}')
    if '://' not in args.checkpoint and not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint} does not exist')
    cfg = load_runner_config(args.config, args.work_dir, args.cfg_options, args.launcher)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)
    if args.tta:
        cfg = with_test_time_aug(cfg)
    runner = build_runner(cfg, dataloaders=['test_dataloader'])
    if args.out is not None:
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    runner.test()


if __name__ == '__main__':
    main()
    close_process_group()
