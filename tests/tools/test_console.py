"""A tool on a machine where inductor cannot compile: the fused kernels fall
back to eager with one warning and the same metrics, or fail where the config
asks for them; the console shows the plugin's warnings, not the pinned stack's
import-time deprecations."""
import os.path as osp
import re

from ..conftest import REPO, ptq_options, run_tool

CONFIG = osp.join(REPO, 'configs', 'benchmark', 'ptq', 'ptq_mixaq_w4a8a4_shapes.py')
FALLBACK = 'the fused fake-quantization kernels could not be compiled'


def _metrics(log):
    return dict(re.findall(r'(coco/\w+_mAP): (-?[0-9.]+)', log))


def test_ptq_without_a_compiler(tiny_shapes, fp_checkpoint, tmp_path):

    def ptq(name, fused_kernels, check=True):
        return run_tool([
            'tools/test.py', CONFIG, fp_checkpoint, '--work-dir',
            str(tmp_path / name), '--cfg-options', *ptq_options(tiny_shapes),
            f'model.backbone.fused_kernels={fused_kernels}'
        ],
                        check=check,
                        env=dict(
                            CXX='/nonexistent/c++',
                            TORCHINDUCTOR_CACHE_DIR=str(tmp_path / 'inductor'),
                            PYTHONWARNINGS=None))

    auto = ptq('auto', "'auto'")
    assert auto.stderr.count(FALLBACK) == 1 and '/nonexistent/c++' in auto.stderr
    assert 'pkg_resources' not in auto.stdout + auto.stderr
    eager = ptq('eager', 'False')
    assert FALLBACK not in eager.stderr
    assert _metrics(auto.stdout + auto.stderr) == _metrics(eager.stdout + eager.stderr) != {}
    strict = ptq('strict', 'True', check=False)
    assert strict.returncode != 0 and '/nonexistent/c++' in strict.stderr
