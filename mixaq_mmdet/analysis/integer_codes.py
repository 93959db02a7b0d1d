"""How far integer execution's codes drift from fake quantization's.

A quantized model on integer kernels computes its linear products exactly
where fake quantization rounds float sums, so a value that lands within float
rounding of a rounding boundary can take the neighbouring code; the next
layers carry the difference on. :func:`code_differences` runs the same inputs
through both and reports, per quantizer position, the share of quantized
values that differ.
"""
import re
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple

import torch
from torch import Tensor, nn

from mixaq_mmdet.quantization import quantizers_of, set_quantizer_names

#: Quantizer module names -> the position they quantize.
_POSITIONS = {
    'qk.quantizer_a': 'q',
    'qk.quantizer_b': 'k',
    'av.quantizer_a': 'softmax',
    'av.quantizer_b': 'v',
}


class CodeDifference(NamedTuple):
    """Quantized values compared at one position, and how many differ."""
    position: str
    compared: int
    differ: int

    @property
    def fraction(self) -> float:
        return self.differ / self.compared if self.compared else 0.0


def position_of(name: str) -> str:
    """A quantizer's position from its module name: the branch and place in a
    Two-Branch block (``'high.fc1_in'``), else the layer whose input it
    quantizes (``'patch_embed'``, ``'reduction'``)."""
    block = re.search(r'branches\.(\w+)\.(.+)$', name)
    if block:
        return f'{block.group(1)}.{_POSITIONS.get(block.group(2), block.group(2))}'
    if 'patch_embed' in name:
        return 'patch_embed'
    if 'downsample' in name:
        return 'reduction'
    return name


@contextmanager
def recorded_quantized(model: nn.Module) -> Iterator[Dict[str, List[Tensor]]]:
    """Inside the block, every quantized activation of ``model``'s forwards,
    by quantizer name: the outputs of fake quantizers (forward hooks), and what
    is quantized outside their forwards: the codes the integer kernels take
    (dequantized) and the outputs of fused kernels (see
    :attr:`~mixaq_mmdet.quantization.QuantizerBase.code_record`)."""
    set_quantizer_names(model)
    record: Dict[str, List[Tensor]] = defaultdict(list)
    quantizers = [q for q in quantizers_of(model) if not q.name.endswith('weight_quantizer')]
    handles = []
    for quantizer in quantizers:
        values = record[quantizer.name]
        quantizer.code_record = values
        handles.append(
            quantizer.register_forward_hook(lambda m, args, out, values=values: values.append(
                out.detach().clone()) if m.fake_quant_enabled else None))
    try:
        yield record
    finally:
        for quantizer, handle in zip(quantizers, handles):
            quantizer.code_record = None
            handle.remove()


def code_differences(fake_quant: nn.Module, integer: nn.Module, inputs: Iterable,
                     forward: Callable[[nn.Module, object], object]) -> List[CodeDifference]:
    """Per position, the quantized values of ``integer`` (a converted copy of
    ``fake_quant``) that differ from ``fake_quant``'s on the same ``inputs``,
    each run as ``forward(model, input)``. A quantizer that saw tensors of
    other shapes in the two runs (windows that moved between the groups)
    counts all of them as different."""
    records = []
    for model in (fake_quant, integer):
        with torch.no_grad(), recorded_quantized(model) as record:
            for x in inputs:
                forward(model, x)
        records.append(record)
    counts: Dict[str, List[int]] = defaultdict(lambda: [0, 0])
    for name, expected in records[0].items():
        actual = records[1].get(name, [])
        position = counts[position_of(name)]
        for a, b in zip(expected, actual):
            position[0] += a.numel()
            position[1] += int((a != b).sum()) if a.shape == b.shape else a.numel()
        for missing in expected[len(actual):]:
            position[0] += missing.numel()
            position[1] += missing.numel()
    return [CodeDifference(p, c, d) for p, (c, d) in sorted(counts.items()) if c]


__all__ = ['CodeDifference', 'code_differences', 'position_of', 'recorded_quantized']
