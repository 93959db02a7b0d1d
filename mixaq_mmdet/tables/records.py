"""A row of a table's results (``results.json``): what was evaluated, on
which model, how, and what it measured."""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch.nn as nn
from mmengine.runner import CheckpointLoader

from ..analysis import count_bitops
from ..compat import checkpoint_types_allowed
from ..models import quant_scope
from .rows import METHODS


@dataclass
class RowRecord:
    """One evaluation of a row (a seed's, for a row on seeded models), or the
    mean of a row's seeds (``seeds`` set). mAPs are COCO's, in points."""
    name: str
    method: str
    bbox_mAP: float
    segm_mAP: float
    no_detections: bool
    bitops_G: float
    w_bits: int
    act_bits: float
    a_bits: List[int]
    low_bit_ratios: Optional[List[float]]
    prune_ratios: Optional[List[float]]
    window_score: Optional[str]
    window_order: Optional[str]
    calib_images: int
    execution: Optional[str]
    backbone_ms: Optional[float]
    scope: Optional[str]
    #: The training the row's checkpoint comes from (``<name>:init``: its QAT
    #: initialization) and the row its speedup is measured against.
    model: str
    base: str
    img_shape: List[int]
    eval_seconds: float
    commands: List[str] = field(default_factory=list)
    config: Optional[str] = None
    plotted: bool = True
    #: A seed's evaluation: the row's name and the seed.
    row: Optional[str] = None
    seed: Optional[int] = None
    #: The key of the inputs it was computed from; ``stale``: they changed since.
    fingerprint: Optional[str] = None
    stale: bool = False
    #: The model was trained by other code than the row was evaluated with.
    trained_by_other_code: bool = False
    speedup: Optional[float] = None
    search_seconds: Optional[float] = None
    search_candidates: Optional[int] = None
    #: A mean over seeds: the seeds and each metric's per-seed values and spread.
    seeds: Optional[List[int]] = None
    bbox_mAP_seeds: Optional[List[float]] = None
    bbox_mAP_std: Optional[float] = None
    segm_mAP_seeds: Optional[List[float]] = None
    segm_mAP_std: Optional[float] = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f'row {self.name}: method {self.method!r} is not one of {METHODS}')

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'RowRecord':
        """A record read back from ``results.json``; unknown or missing fields
        (a file of another version) are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        if unknown or missing:
            raise ValueError(f'row {data.get("name")!r} of results.json does not have the '
                             f'fields of this version: unknown {unknown}, missing {missing}; '
                             'compute it again (delete results.json)')
        return cls(**data)


def row_record(name: str,
               method: str,
               model: nn.Module,
               metrics: Mapping[str, float],
               trained: str,
               base: str,
               calib_images: int,
               img_shape: Sequence[int],
               seconds: float,
               execution: Optional[str] = None) -> RowRecord:
    """A row's record: metrics, BitOPs at ``img_shape``, the backbone's
    measured time per image where the run measured it, and the model's setting
    (``model`` is the evaluated model, or one built from the same config;
    ``execution``: how a quantized model computed, see ``test_cfg.execution``)."""
    report = count_bitops(model, tuple(img_shape))
    backbone = model.backbone
    quantized = method != 'FP'
    # mmdet's CocoMetric reports nothing when no image has a detection: COCO's mAP is 0
    return RowRecord(
        name=name,
        method=method,
        bbox_mAP=round(100 * metrics.get('coco/bbox_mAP', 0.0), 2),
        segm_mAP=round(100 * metrics.get('coco/segm_mAP', 0.0), 2),
        no_detections='coco/bbox_mAP' not in metrics,
        bitops_G=round(report.bitops / 1e9, 4),
        w_bits=backbone.w_bits if quantized else 32,
        act_bits=round(report.act_bits, 3),
        a_bits=list(backbone.a_bits) if quantized else [32, 32],
        low_bit_ratios=list(backbone.low_bit_ratios) if quantized else None,
        prune_ratios=list(backbone.prune_ratios) if quantized else None,
        window_score=backbone.policy.score if quantized else None,
        window_order=backbone.policy.order if quantized else None,
        calib_images=calib_images,
        execution=(execution or 'fake_quant') if quantized else None,
        backbone_ms=metrics.get('mixaq/backbone_ms'),
        scope=quant_scope(model) if quantized else None,
        model=trained,
        base=base,
        img_shape=list(img_shape),
        eval_seconds=round(seconds, 1))


def calibrated_images(checkpoint: str) -> int:
    """The images ``checkpoint`` was calibrated on, as its meta records
    (``PTQLoop`` writes it into ``calibrated.pth``); 0 for a checkpoint that
    records none (an FP or QAT checkpoint)."""
    with checkpoint_types_allowed():
        state = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    return int((state.get('meta') or {}).get('calib_images', 0))


__all__ = ['RowRecord', 'row_record', 'calibrated_images']
