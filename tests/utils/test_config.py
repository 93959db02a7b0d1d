"""How the tools load a config."""
import os.path as osp

import pytest
from mmengine.config import Config

from mixaq_mmdet.utils import load_runner_config
from ..conftest import REPO

QAT = osp.join(REPO, 'configs', 'mixaq', 'qat', 'qat_uniform_w4a4_swin-t_coco.py')


def test_unformatted_configs_are_the_same_config(tmp_path):
    """``format_config=False`` logs and dumps a config without yapf's
    formatting: another text, the same config once loaded back, options and
    work dir included."""
    options = {'train_cfg.max_epochs': 1}
    formatted = load_runner_config(QAT, str(tmp_path), options)
    plain = load_runner_config(QAT, str(tmp_path), dict(options, format_config=False))
    assert plain.pretty_text != formatted.pretty_text
    assert Config.fromstring(plain.pretty_text, '.py').to_dict() == \
        dict(Config.fromstring(formatted.pretty_text, '.py').to_dict(), format_config=False)
    assert plain.train_cfg.max_epochs == 1 and plain.work_dir == str(tmp_path)
    assert plain.filename == QAT


def test_the_format_setting_is_checked(tmp_path):
    with pytest.raises(ValueError, match="format_config must be True or False, got '0'"):
        load_runner_config(QAT, str(tmp_path), dict(format_config='0'))
