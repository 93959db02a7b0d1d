"""NSGA-II search of MixA-Q's per-pair low-bit (and prune) ratios.

A MixA-Q Swin backbone runs the windows of each pair of consecutive blocks at
high or low activation bits, and may skip some of them. A configuration gives
every pair a low-bit ratio (fraction of its windows at low bits) and a prune
ratio (fraction skipped), with ``low + prune <= 1`` per pair. This module
searches those ratios with pymoo's NSGA-II for the trade-off between accuracy
(maximised; expensive, a detector evaluation) and cost (minimised; cheap, an
analytic BitOPs count), usually inside a target cost band.

Genes are integer indices into the ratio choices: the ``num_pairs`` low-bit
genes first, then (when the space has prune choices) the ``num_pairs`` prune
genes. The search follows pymoo's integer recipe (integer random sampling, SBX
and polynomial mutation on floats rounded back to integers, duplicates
eliminated) plus a repair that makes every candidate feasible and steers its
cost into the band, so the expensive accuracy is only spent where it counts.
Every evaluation can be cached in a JSON file, so an interrupted search resumes
where it stopped and a finished one replays without evaluating anything.

Modules: :mod:`.space` (choices and genes), :mod:`.bounds` (costs and their
range), :mod:`.repair` (feasibility and the band), :mod:`.result` (evaluations
and their front), :mod:`.cache` (resume) and :mod:`.algorithm` (NSGA-II). Only
the standard library, numpy, pymoo and :mod:`mixaq_mmdet.ratios` are imported,
so the search can run (and be tested) without the detection stack.
"""
from mixaq_mmdet.ratios import RATIO_GRID
from .algorithm import search_ratios
from .bounds import cost_range
from .result import Evaluation, SearchResult
from .space import Candidate, RatioSearchSpace

__all__ = [
    'RATIO_GRID', 'Candidate', 'RatioSearchSpace', 'Evaluation', 'SearchResult', 'cost_range',
    'search_ratios'
]
