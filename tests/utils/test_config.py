"""How the tools load a config."""
import os.path as osp

from mmengine.config import Config

from mixaq_mmdet.utils import load_runner_config
from mixaq_mmdet.utils.config import FORMAT_CONFIG_ENV
from ..conftest import REPO

QAT = osp.join(REPO, 'configs', 'mixaq', 'qat', 'qat_uniform_w4a4_swin-t_coco.py')


def test_unformatted_configs_are_the_same_config(monkeypatch, tmp_path):
    """``MIXAQ_FORMAT_CONFIG=0`` logs and dumps a config without yapf's
    formatting: another text, the same config once loaded back, options and
    work dir included."""
    options = {'train_cfg.max_epochs': 1}
    formatted = load_runner_config(QAT, str(tmp_path), options)
    monkeypatch.setenv(FORMAT_CONFIG_ENV, '0')
    plain = load_runner_config(QAT, str(tmp_path), options)
    assert plain.pretty_text != formatted.pretty_text
    assert Config.fromstring(plain.pretty_text, '.py').to_dict() == \
        Config.fromstring(formatted.pretty_text, '.py').to_dict()
    assert plain.train_cfg.max_epochs == 1 and plain.work_dir == str(tmp_path)
    assert plain.filename == QAT
