"""Search per-pair window ratios (NSGA-II: accuracy against BitOPs) for a MixA-Q model.

    python tools/search_ratios.py CONFIG CHECKPOINT --target-speedup 1.35 \\
        [--objective map|proxy] [--pop 16 --gens 8] [--prune] [--work-dir DIR]

CHECKPOINT is an FP checkpoint (calibrated first, at ``--calib-low-bit-ratio``
on every pair so that both branches of every pair see data), a calibrated PTQ
checkpoint or a QAT/SAQA checkpoint. Candidates are measured on CONFIG's
``search_dataloader`` split, never on val or on the calibration images. Writes
into the work dir: ``search_cache.json`` (every evaluation; a rerun resumes),
``pareto.json`` and ``pareto.png`` (the front), and for each target
``searched_<target>x.py``, a config inheriting CONFIG with the searched
``low_bit_ratios`` / ``prune_ratios``, and ``uniform_<target>x.py`` with the one
ratio on every pair of equal or lower speedup. The rules every search obeys
(its grid, its images, its rows) are :mod:`mixaq_mmdet.search.rules`. Each
target's point and its uniform ratio are then evaluated on val (``--no-val``
skips it).
``--spearman N`` instead measures how well the proxy ranks N random
candidates like mAP does. Distributed (the search images sharded over the
ranks): ``torchrun --nproc_per_node N tools/search_ratios.py ... --launcher pytorch``.
"""
import warnings

# Before anything imports it: the pinned stack's deprecation of setuptools'
# pkg_resources (mmengine's package checks); every other warning still shows.
warnings.filterwarnings('ignore', 'pkg_resources is deprecated as an API', UserWarning)

import argparse
import os.path as osp
from typing import Dict, List

import numpy as np
from mmengine.dist import is_main_process
from mmengine.logging import print_log
from mmengine.runner import Runner
from mmengine.utils import ProgressBar

import mixaq_mmdet  # noqa: F401  (registries)
from mixaq_mmdet.analysis.plots import plot_search
from mixaq_mmdet.engine import prepare_test_loop
from mixaq_mmdet.search import (CALIB_LOW_BIT_RATIO, DEFAULT_SEARCH_IMAGES, OBJECTIVES,
                                RatioEvaluator, RatioSearchSpace, calibration_options,
                                check_branches_calibrated, check_search_config, check_targets,
                                front_records, rank_cache, ratio_space, run_search, save_json,
                                search_evaluator, searched_rows, speedup_band,
                                write_searched_config)
from mixaq_mmdet.utils import (build_runner, close_process_group, load_runner_config,
                               parse_runner_args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='a MixA-Q test config (PTQ or QAT)')
    parser.add_argument('checkpoint', help='FP, calibrated or QAT checkpoint')
    parser.add_argument('--work-dir', help='outputs (default: work_dirs/<config>/search)')
    parser.add_argument(
        '--target-speedup',
        type=float,
        nargs='+',
        default=[],
        help='BitOPs speedups over the uniform high-bit model')
    parser.add_argument(
        '--tolerance', type=float, default=0.02, help='a target is met within +- this speedup')
    parser.add_argument('--objective', choices=OBJECTIVES, default='map')
    parser.add_argument('--pop', type=int, default=16, help='population size')
    parser.add_argument('--gens', type=int, default=8, help='generations')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--max-ratio',
        type=float,
        default=0.8,
        help='largest low-bit (and prune) ratio of the grid 0, 0.1, ...')
    parser.add_argument('--prune', action='store_true', help='search prune ratios too')
    parser.add_argument(
        '--search-images',
        type=int,
        default=None,
        help='a seeded subset of this many images of the search split '
        f'(default: at most {DEFAULT_SEARCH_IMAGES}; more than the split '
        'has is an error)')
    parser.add_argument(
        '--calib-low-bit-ratio',
        type=float,
        default=CALIB_LOW_BIT_RATIO,
        help='low-bit ratio of every pair while calibrating an FP checkpoint')
    parser.add_argument(
        '--no-val', action='store_true', help='do not evaluate the chosen points on val')
    parser.add_argument(
        '--spearman',
        type=int,
        default=0,
        metavar='N',
        help='only compare the proxy with mAP on N random candidates')
    return parse_runner_args(parser)


def prepare(args: argparse.Namespace) -> Runner:
    """The runner with the model loaded, checked and calibrated if needed."""
    cfg = load_runner_config(args.config, args.work_dir, args.cfg_options, args.launcher)
    if args.work_dir is None:
        cfg.work_dir = osp.join(cfg.work_dir, 'search')
    check_search_config(cfg, args.config)
    # Only an FP checkpoint is calibrated, at this ratio on every pair; a
    # calibrated checkpoint keeps its quantizers (the ratios are logged).
    cfg.merge_from_dict(calibration_options(args.calib_low_bit_ratio))
    cfg.load_from = args.checkpoint
    runner = build_runner(cfg, dataloaders=['test_dataloader', 'search_dataloader'])
    prepare_test_loop(runner)
    return runner


def spearman(evaluator: RatioEvaluator, space: RatioSearchSpace, num: int, seed: int, out: str,
             targets: List[float], tolerance: float) -> None:
    """Spearman correlation of proxy and mAP rankings over random candidates
    (inside the targets' speedup band if given: where the search ranks)."""
    from scipy.stats import spearmanr
    rng = np.random.default_rng(seed)
    rows: List[Dict] = []
    bar = ProgressBar(num) if is_main_process() else None
    uniform = evaluator.uniform_cost()
    band = speedup_band(uniform, targets, tolerance) if targets else None
    for _ in range(100000):
        if len(rows) == num:
            break
        genes = [int(rng.integers(len(space.low_choices))) for _ in range(space.num_pairs)]
        if space.prune_choices:
            genes += [int(rng.integers(len(space.prune_choices))) for _ in range(space.num_pairs)]
        if not space.feasible(genes):
            continue
        candidate = space.decode(genes)
        if band is not None and not band[0] <= evaluator.cost(candidate) <= band[1]:
            continue
        rows.append(
            dict(
                low_bit_ratios=list(candidate.low_bit_ratios),
                prune_ratios=list(candidate.prune_ratios),
                speedup=uniform / evaluator.cost(candidate),
                bbox_mAP=evaluator.bbox_map(candidate),
                distortion=evaluator.feature_distortion(candidate)))
        if bar is not None:
            bar.update()
    if len(rows) < num:
        raise ValueError(f'only {len(rows)} random candidates of 100000 fall in the band '
                         f'{targets} +- {tolerance}; widen --tolerance')
    rho = spearmanr([r['bbox_mAP'] for r in rows], [-r['distortion'] for r in rows])
    print_log(
        f'\nsearch: Spearman correlation of -distortion and bbox mAP over {num} random '
        f'candidates: {rho.statistic:.3f} (p={rho.pvalue:.2g})',
        logger='current')
    if is_main_process():
        save_json(dict(spearman=rho.statistic, p_value=rho.pvalue, candidates=rows), out)


def main() -> None:
    args = parse_args()
    check_targets(args.target_speedup, args.tolerance)
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint} does not exist')
    runner = prepare(args)
    model = runner.test_loop.model
    backbone = model.backbone
    space = ratio_space(backbone.num_pairs, args.max_ratio, args.prune)
    check_branches_calibrated(backbone, prune_only=False)
    evaluator = search_evaluator(runner.test_loop, runner.cfg.search_dataloader, args.search_images,
                                 args.seed)
    work_dir = runner.work_dir
    print_log(
        f'search: {evaluator.num_images} search images, {space.num_genes} genes, '
        f'objective {args.objective}',
        logger='current')
    if args.spearman:
        spearman(evaluator, space, args.spearman, args.seed, osp.join(work_dir, 'spearman.json'),
                 args.target_speedup, args.tolerance)
        return
    bar = ProgressBar(args.gens) if is_main_process() else None
    result, chosen = run_search(
        evaluator,
        space,
        args.objective,
        args.target_speedup,
        args.tolerance,
        pop_size=args.pop,
        generations=args.gens,
        seed=args.seed,
        cache_path=rank_cache(osp.join(work_dir, 'search_cache.json')),
        on_generation=(lambda *_: bar.update()) if bar is not None else None)
    uniform = evaluator.uniform_cost()
    summary = dict(
        config=args.config,
        checkpoint=args.checkpoint,
        objective=args.objective,
        search_images=evaluator.num_images,
        front=front_records(result, uniform),
        targets=[])
    if not args.no_val:
        # val (5000 images on COCO) is streamed, not held: two candidates per target
        val = RatioEvaluator(
            model,
            runner.test_loop.dataloader.dataset,
            hold_images=False,
            batch_size=runner.cfg.search_dataloader.get('batch_size', 8))
    for target, rows in searched_rows(evaluator, chosen).items():
        point = chosen[target]
        record = dict(
            target=target,
            low_bit_ratios=list(rows.searched.low_bit_ratios),
            prune_ratios=list(rows.searched.prune_ratios),
            search_accuracy=point.accuracy,
            speedup=uniform / point.cost,
            uniform_ratio=rows.uniform.low_bit_ratios[0],
            uniform_speedup=uniform / evaluator.cost(rows.uniform))
        if is_main_process():
            note = (f'Searched by tools/search_ratios.py ({args.objective}, '
                    f'{evaluator.num_images} search images) for a {target:g}x BitOPs speedup')
            record['config'] = write_searched_config(
                args.config,
                rows.searched,
                osp.join(work_dir, f'searched_{target:g}x.py'),
                note=note + '.')
            record['uniform_config'] = write_searched_config(
                args.config,
                rows.uniform,
                osp.join(work_dir, f'uniform_{target:g}x.py'),
                note=note + ': the one ratio on every pair of equal or lower speedup.')
        if not args.no_val:
            record['val_bbox_mAP'] = 100 * val.evaluate(rows.searched)['coco/bbox_mAP']
            record['uniform_val_bbox_mAP'] = 100 * val.evaluate(rows.uniform)['coco/bbox_mAP']
        summary['targets'].append(record)
        print_log(
            f'search: {target:g}x -> low {record["low_bit_ratios"]} prune '
            f'{record["prune_ratios"]} ({record["speedup"]:.3f}x)' +
            (f', val bbox mAP {record["val_bbox_mAP"]:.1f}; uniform ratio '
             f'{record["uniform_ratio"]:g} ({record["uniform_speedup"]:.3f}x): '
             f'{record["uniform_val_bbox_mAP"]:.1f}' if not args.no_val else ''),
            logger='current')
    if is_main_process():
        save_json(summary, osp.join(work_dir, 'pareto.json'))
        plot_search(
            result,
            uniform,
            osp.join(work_dir, 'pareto.png'),
            targets=args.target_speedup,
            ylabel='bbox mAP (search split)'
            if args.objective == 'map' else '- feature distortion (search split)')
        print_log(f'search: written {work_dir}/pareto.json, pareto.png', logger='current')


if __name__ == '__main__':
    main()
    close_process_group()
