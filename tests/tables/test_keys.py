"""What a table's results are keyed on: the code they ran (not its
docstrings), the models' training code recorded with each row, and the
options of a quick run."""
import os.path as osp

import pytest
from mmengine.config import Config

from mixaq_mmdet.tables import BENCHMARK, TableRunner, code_digest, format_table
from mixaq_mmdet.tables import runner as runner_module
from mixaq_mmdet.tables.cache import ROW_CODE, TRAINING_CODE
from mixaq_mmdet.tables.configs import epoch_options, quick_options
from .test_seeds import RecordingExecutor, _table

MODULE = '''"""A module."""
import os


def f(x):
    """Doubles x."""
    # a comment
    return 2 * x
'''


def _package(root, text):
    (root / 'pkg' / 'sub').mkdir(parents=True, exist_ok=True)
    (root / 'pkg' / 'sub' / 'm.py').write_text(text)
    (root / 'pkg' / 'other.py').write_text('y = 1\n')
    return str(root / 'pkg')


def test_code_keys_follow_the_code_not_its_docstrings(tmp_path):
    key = code_digest(_package(tmp_path, MODULE), ('sub', ))
    edited = MODULE.replace('Doubles x.', 'Twice x.').replace('# a comment', '# another')
    assert code_digest(_package(tmp_path, edited), ('sub', )) == key
    assert code_digest(_package(tmp_path, MODULE.replace('2 * x', '3 * x')), ('sub', )) != key
    # a module outside the parts keyed on does not count
    (tmp_path / 'pkg' / 'other.py').write_text('y = 2\n')
    assert code_digest(_package(tmp_path, MODULE), ('sub', )) == key
    assert code_digest(str(tmp_path / 'pkg'), ('sub', 'other.py')) != key
    with pytest.raises(FileNotFoundError, match='nope'):
        code_digest(str(tmp_path / 'pkg'), ('nope', ))


def test_the_keyed_code_is_what_trainings_and_rows_run():
    package = osp.dirname(osp.dirname(runner_module.__file__))
    for part in ROW_CODE:
        assert osp.exists(osp.join(package, part)), part
    assert set(TRAINING_CODE) <= set(ROW_CODE)
    # the printed table, the plots and the runner itself are not part of a row's key
    assert not {'tables/report.py', 'tables/runner.py', 'tables', 'analysis/plots.py'
                } & set(TRAINING_CODE)
    assert 'tables/report.py' not in ROW_CODE and 'tables/runner.py' not in ROW_CODE


def test_rows_on_a_model_trained_by_other_code_say_so(tiny_shapes, tmp_path, monkeypatch, capsys):
    table = _table(tiny_shapes)
    ann = osp.join(tiny_shapes, table.ann_files['val'])
    work = str(tmp_path / 'work')
    TableRunner(table, work, RecordingExecutor(ann)).run()
    # the code changes: trainings are kept, every row is computed again and says so
    monkeypatch.setattr(runner_module, 'code_digest',
                        lambda package, parts: f'changed-{len(parts)}')
    again = RecordingExecutor(ann)
    rows, _ = TableRunner(table, work, again).run()
    out = capsys.readouterr().out
    assert again.trained == [] and len(again.evaluated) == 8
    assert '(cached, trained by other code)' in out
    assert "models trained by other code than this checkout's: ['a@seed0'" in out
    by_name = {r.name: r for r in rows}
    assert all(r.trained_by_other_code for r in rows)
    assert '(model trained by other code)' in format_table([by_name['c']])
    # --retrain-changed-code trains them anew, with the new code recorded
    fresh = RecordingExecutor(ann)
    rows, _ = TableRunner(table, work, fresh, retrain_changed_code=True).run()
    assert len(fresh.trained) == 8 and not any(r.trained_by_other_code for r in rows)


def test_a_quick_run_shortens_every_schedule_that_ended_with_the_training():
    cfg = Config.fromfile(osp.join(BENCHMARK.config_root, 'qat', 'qat_uniform_w4a4_shapes.py'))
    end = cfg.train_cfg.max_epochs
    cfg.param_scheduler.insert(0, dict(type='ConstantLR', by_epoch=True, begin=0, end=end))
    options = dict(epoch_options(cfg, 1))
    assert options == {
        'train_cfg.max_epochs': 1,
        'train_cfg.val_interval': 1,
        'param_scheduler.0.end': 1,
        'param_scheduler.2.end': 1
    }
    quick = dict(quick_options(qat_epochs=2, calib_images=3, overrides={'a': 1})(cfg))
    assert quick['train_cfg.max_epochs'] == 2 and quick['a'] == 1
    assert quick['custom_hooks.0.calib_images'] == 3 and quick['test_cfg.calib_images'] == 3
    # the FP config is not a quantized model: qat_epochs leaves it alone
    fp = Config.fromfile(osp.join(BENCHMARK.config_root, 'mask-rcnn_swin-nano-p4-w7_fpn_shapes.py'))
    assert 'train_cfg.max_epochs' not in dict(quick_options(qat_epochs=2)(fp))
