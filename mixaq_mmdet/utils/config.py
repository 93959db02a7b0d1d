"""Config handling shared by ``tools/train.py`` and ``tools/test.py``."""
import argparse
import copy
import os
import os.path as osp
from typing import Optional, Sequence

from mmdet.registry import RUNNERS
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.runner import Runner

from mixaq_mmdet.compat import check_mmcv_ops
from mixaq_mmdet.datasets.layout import check_dataset_files
from mixaq_mmdet.engine.runner import MixAQRunner

#: mmdet 3.3.0's defaults for ``tools/test.py --tta`` when a config has none.
DEFAULT_TTA_MODEL = dict(
    type='DetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
TTA_META_KEYS = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                 'flip_direction')


def parse_runner_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Add the options mmdet's tools share (``--cfg-options``, ``--launcher``,
    ``--local-rank``), parse, and export ``LOCAL_RANK`` for the launcher."""
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value pairs')
    parser.add_argument('--launcher', default='none', choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


#: A config's ``format_config = False`` logs and dumps it as it is instead of
#: formatted by yapf (about a second a run for a COCO config: mmengine formats
#: it once to log it and once to save it); the table runner's runs set it.
FORMAT_CONFIG_KEY = 'format_config'


def load_runner_config(config: str,
                       work_dir: Optional[str] = None,
                       cfg_options: Optional[dict] = None,
                       launcher: str = 'none') -> Config:
    """Load a config as mmdet's tools do.

    ``work_dir`` is taken from the command line, else from the config, else
    ``work_dirs/<config name>``.
    """
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file {config} does not exist')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get(FORMAT_CONFIG_KEY, True) not in (True, False):
        raise ValueError(f'{FORMAT_CONFIG_KEY} must be True or False, got '
                         f'{cfg[FORMAT_CONFIG_KEY]!r}')
    if not cfg.get(FORMAT_CONFIG_KEY, True):
        # mmengine 0.10.7's fromfile passes format_python_code on for lazy-import
        # configs only: rebuild the config with it
        cfg = Config(
            cfg.to_dict(),
            cfg_text=cfg.text,
            filename=cfg.filename,
            env_variables=cfg.env_variables,
            format_python_code=False)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg


def with_test_time_aug(cfg: Config) -> Config:
    """The config with the model wrapped for test-time augmentation, as mmdet
    3.3.0's ``tools/test.py --tta`` does: the config's ``tta_model`` and
    ``tta_pipeline``, or by default horizontal flips merged by NMS."""
    if 'tta_model' not in cfg:
        print_log(
            '--tta: the config has no tta_model; using DetTTAModel with NMS', logger='current')
        cfg.tta_model = copy.deepcopy(DEFAULT_TTA_MODEL)
    if 'tta_pipeline' not in cfg:
        print_log(
            '--tta: the config has no tta_pipeline; flipping the test pipeline', logger='current')
        dataset = cfg.test_dataloader.dataset
        while 'dataset' in dataset:
            dataset = dataset['dataset']
        pipeline = copy.deepcopy(dataset.pipeline)
        pipeline[-1] = dict(
            type='TestTimeAug',
            transforms=[[dict(type='RandomFlip', prob=1.0),
                         dict(type='RandomFlip', prob=0.0)],
                        [dict(type='PackDetInputs', meta_keys=TTA_META_KEYS)]])
        cfg.tta_pipeline = pipeline
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    return cfg


def build_runner(cfg: Config, dataloaders: Sequence[str] = ()) -> Runner:
    """Build the runner named by ``runner_type`` in mmdet's ``RUNNERS`` (which
    falls back to mmengine's), by default :class:`MixAQRunner`, after checking that mmcv's
    ops run on the device the runner will use and that the files of the
    ``dataloaders`` the run reads (e.g. ``'test_dataloader'``) exist."""
    check_mmcv_ops(get_device())
    for name in dataloaders:
        if cfg.get(name) is not None:
            check_dataset_files(cfg[name].dataset, f'{name}.dataset')
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return MixAQRunner.from_cfg(cfg)
