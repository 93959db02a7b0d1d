"""Forked children of a process that compiled the fused kernels: they run,
and compile kernels of their own, instead of hanging."""
import textwrap

from ..conftest import run_tool

#: A parent that compiles the kernels, then forks a child that needs a kernel
#: the parent did not compile (per channel) with an empty inductor cache: the
#: child compiles it. Through inductor's pool of compile workers, which lives
#: in the parent, the child hung (``make demo --jobs 2``'s first QAT trainings):
#: the parent is started as the tools start it, with ``TORCHINDUCTOR_COMPILE_THREADS=1``.
SCRIPT = textwrap.dedent('''
    import sys, time
    import torch
    from mixaq_mmdet.quantization.numerics import compile_kernels, fake_quantize
    from mixaq_mmdet.utils.forking import fork_child, kill_child, poll_child, torch_threads

    with torch_threads(1):
        compile_kernels()

    def per_channel():
        x = torch.rand(8, 16, requires_grad=True)
        scale = torch.full((8, ), 0.1, requires_grad=True)
        zero_point = torch.full((8, ), 3.0, requires_grad=True)
        fake_quantize(x, scale, zero_point, 0, 15, 0).sum().backward()
        assert scale.grad.shape == (8, )

    child = fork_child(per_channel, sys.argv[1], threads=1)
    deadline = time.time() + 240
    while time.time() < deadline:
        ended = poll_child(child)
        if ended is not None:
            sys.exit(0 if ended.ok else 1)
        time.sleep(0.2)
    kill_child(child)
    sys.exit('the child hung')
''')


def test_a_forked_child_compiles_a_kernel_of_its_own(tmp_path):
    script = tmp_path / 'fork.py'
    script.write_text(SCRIPT)
    log = tmp_path / 'child.log'
    proc = run_tool([str(script), str(log)],
                    check=False,
                    timeout=400,
                    env={
                        'TORCHINDUCTOR_CACHE_DIR': str(tmp_path / 'inductor'),
                        'TORCHINDUCTOR_COMPILE_THREADS': '1'
                    })
    assert proc.returncode == 0, proc.stderr[-3000:] + log.read_text()[-3000:]
