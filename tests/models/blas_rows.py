"""When two computations may be compared bit for bit on this machine.

The Two-Branch block batches the windows of a group (and, in inference, only
the real tokens of padded windows) into matrix products of other row counts
than the reference block's, which runs each image's group on its own. Each
output row of a product is the same dot products whatever the row count, but
whether CPU BLAS gives it the same bits depends on its kernels: MKL on this
kind of machine does from 16 rows up (fewer rows take other kernels), another
library or CPU may not. And a last-bit difference that moves one value across
a quantization step changes a quantized backbone's output by about 1% (see
test_tolerance_separates_rounding_from_a_wrong_window), as much as windows in
the wrong branch do: no float32 tolerance separates the two. So these
comparisons run in float64 (:data:`DTYPE`), where rounding moves the outputs
by about 1e-16 and a wrong window by 1e-2: bit for bit where
:data:`ROWS_INVARIANT` holds (probed here, at the thread count the tests run
with), else within :data:`REL_L2`.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: Row counts of the block's products in the tests (window groups of 49 tokens
#: and more, real-token FFN groups of at least ``MIN_FFN_ROWS``).
PROBE_ROWS = (16, 17, 23, 31, 49, 64, 97, 98, 147)
#: Inner sizes of the nano Swin's linears (dims 16..128, FFN 4x).
PROBE_INNER = (16, 32, 48, 64, 128, 256, 512)
#: The dtype of the comparisons.
DTYPE = torch.float64
#: Relative L2 distance allowed where rows are not invariant: float64 rounding
#: of every product moves the outputs by about 1e-16, a few windows in the
#: wrong branch or a wrong bias table by 1e-2.
REL_L2 = 1e-9


def blas_rows_invariant() -> bool:
    """Whether ``F.linear`` gives each row the same bits in a product of any of
    :data:`PROBE_ROWS` rows as in one of ``max(PROBE_ROWS)``."""
    generator = torch.Generator().manual_seed(0)
    rows = max(PROBE_ROWS)
    for inner in PROBE_INNER:
        x = torch.randn(rows, inner, generator=generator, dtype=DTYPE)
        weight = torch.randn(inner * 2, inner, generator=generator, dtype=DTYPE)
        bias = torch.randn(inner * 2, generator=generator, dtype=DTYPE)
        full = F.linear(x, weight, bias)
        for m in PROBE_ROWS:
            if not torch.equal(F.linear(x[:m], weight, bias), full[:m]):
                return False
    return True


ROWS_INVARIANT = blas_rows_invariant()


def relative_l2(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def assert_same_outputs(outs: Sequence[Tensor], refs: Sequence[Tensor]) -> None:
    """Bit for bit where BLAS rows are invariant; else within :data:`REL_L2`."""
    assert len(outs) == len(refs)
    for index, (a, b) in enumerate(zip(outs, refs)):
        assert a.shape == b.shape, (index, a.shape, b.shape)
        assert a.dtype == b.dtype and (a.dtype == DTYPE or not a.is_floating_point()), (
            f'compare in {DTYPE} (model.to(DTYPE)), got {a.dtype}')
        if ROWS_INVARIANT:
            assert torch.equal(a, b), (index, relative_l2(a, b))
        else:
            assert relative_l2(a, b) <= REL_L2, (index, relative_l2(a, b))
