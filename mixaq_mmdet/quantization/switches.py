"""Model-wide quantizer switches, as torch.ao's ``enable_observer`` /
``enable_fake_quant`` helpers: calibrate, quantize or run a model in float."""
import contextlib
from typing import Iterator, List

from torch import nn

from .base import QuantizerBase
from .observers import any_rank


def quantizers_of(model: nn.Module) -> List[QuantizerBase]:
    """The quantizers of ``model`` in module order (each shared one once)."""
    return [m for m in model.modules() if isinstance(m, QuantizerBase)]


def set_quantizer_names(model: nn.Module) -> None:
    """Give every quantizer its qualified module name, for error messages."""
    for name, module in model.named_modules():
        if isinstance(module, QuantizerBase):
            module.name = name


def enable_calibration(model: nn.Module) -> None:
    """Start a calibration: statistics reset, observers on, fake quant off.

    Forwards then compute the float model and collect statistics, across
    batches, until :func:`calculate_qparams`.
    """
    set_quantizer_names(model)
    for quantizer in quantizers_of(model):
        quantizer.reset_statistics()
        quantizer.enable_observer()
        quantizer.disable_fake_quant()


def reset_statistics(model: nn.Module) -> None:
    """Forget every quantizer's statistics (qparams stay)."""
    for quantizer in quantizers_of(model):
        quantizer.reset_statistics()


def calculate_qparams(model: nn.Module, strict: bool = True) -> List[str]:
    """Observers off; qparams computed from the statistics of every quantizer
    that observed data on some rank. The one call that computes qparams.

    Quantizers that observed nothing keep their qparams (e.g. loaded ones). An
    empty calibration must not silently leave a float model: with ``strict``
    any quantizer with neither statistics nor qparams raises, naming it. With
    ``strict=False`` such quantizers are allowed when part of the model saw no
    data by design (e.g. the low-bit branch of a block whose low-bit ratio was
    0 during calibration): they stay uncalibrated, so they raise if ever reached
    with fake quant on; if no quantizer at all is calibrated it still raises.
    A collective under distributed: call it on every rank.

    Returns:
        The names of the quantizers left uncalibrated (empty when ``strict``).
    """
    set_quantizer_names(model)
    quantizers = quantizers_of(model)
    for quantizer in quantizers:
        quantizer.disable_observer()
        device = quantizer.calibrated.device
        if any_rank(quantizer.has_statistics(), device):
            quantizer.calculate_qparams()
    missing = [q.display_name for q in quantizers if not q.is_calibrated]
    if missing and (strict or len(missing) == len(quantizers)):
        shown = ', '.join(
            missing[:5]) + (f' and {len(missing) - 5} more' if len(missing) > 5 else '')
        raise RuntimeError(f'{len(missing)} quantizer(s) have no calibration statistics: '
                           f'{shown}; run forward passes on calibration data after '
                           'enable_calibration(model)')
    return missing


def finish_calibration(model: nn.Module, strict: bool = True) -> List[str]:
    """End a calibration: :func:`calculate_qparams`, then :func:`enable_fake_quant`.

    Returns:
        The names of the quantizers left uncalibrated (see :func:`calculate_qparams`).
    """
    missing = calculate_qparams(model, strict)
    enable_fake_quant(model)
    return missing


def enable_fake_quant(model: nn.Module) -> None:
    """Fake quant on and observers off, computing nothing: the state of a model
    built for quantized inference. Its uncalibrated quantizers raise when reached
    until the model is calibrated or a calibrated checkpoint is loaded."""
    set_quantizer_names(model)
    for quantizer in quantizers_of(model):
        quantizer.disable_observer()
        quantizer.enable_fake_quant()


def disable_quantization(model: nn.Module) -> None:
    """Observers and fake quant off: the model computes its float function exactly."""
    for quantizer in quantizers_of(model):
        quantizer.disable_observer()
        quantizer.disable_fake_quant()


@contextlib.contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in float (:func:`disable_quantization`) inside the block, each
    quantizer's fake-quant and observer switches as they were after it."""
    quantizers = quantizers_of(model)
    states = [(q.fake_quant_enabled, q.observer_enabled) for q in quantizers]
    disable_quantization(model)
    try:
        yield model
    finally:
        for quantizer, (fake_quant, observer) in zip(quantizers, states):
            quantizer.enable_fake_quant(fake_quant)
            quantizer.enable_observer(observer)
