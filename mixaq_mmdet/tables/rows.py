"""A results table as data: the models it trains, the rows it evaluates, the
ratio searches it runs and the claims it checks between rows.

A table names configs relative to its ``config_root`` and models by the name of
a :class:`Training`; nothing here runs anything (:mod:`.runner` does).
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple, Union

from ..ratios import RATIO_TOLERANCE
from ..search import CALIB_LOW_BIT_RATIO, Candidate

#: Config overrides as ``(dotted key, value)`` pairs, mmengine's ``--cfg-options``.
Options = Tuple[Tuple[str, Any], ...]

#: How a target compares row A with row B on bbox mAP: 'ge' (A >= B), 'gt'
#: (A > B), 'within' (A at most 0.5 points below B), 'equal' (A at most 0.1
#: points from B, either side), 'noise' (A - B above twice its standard
#: error), 'not_worse' (A - B above minus twice it). A claim is met only where
#: it holds beyond that noise (:func:`.report.verdict`).
TARGET_TESTS = ('ge', 'gt', 'within', 'equal', 'noise', 'not_worse')
#: What a row reports: the float model, a calibrated FP model, a trained
#: quantized model. The table states it; the runner checks it against the config.
METHODS = ('FP', 'PTQ', 'QAT')
#: A ratio of every pair, or one per pair.
PairRatios = Union[float, Tuple[float, ...]]


@dataclass(frozen=True)
class Ratios:
    """The low-bit and prune ratios a row evaluates its model at: one for
    every pair, or one per pair."""
    low_bit: PairRatios = 0.0
    prune: PairRatios = 0.0

    def __post_init__(self) -> None:
        for name in ('low_bit', 'prune'):
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value, )
            if not values or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
                    for v in values):
                raise ValueError(f'Ratios.{name} must be a ratio in [0, 1] or a tuple of them '
                                 f'(one per pair), got {value!r}')

    def options(self) -> 'Options':
        """The config overrides that set these ratios."""
        return (('model.backbone.low_bit_ratios', self.low_bit), ('model.backbone.prune_ratios',
                                                                  self.prune))

    def candidate(self, num_pairs: int) -> Candidate:
        """These ratios on a backbone of ``num_pairs`` pairs."""

        def per_pair(name: str) -> Tuple[float, ...]:
            value = getattr(self, name)
            if not isinstance(value, tuple):
                return (float(value), ) * num_pairs
            if len(value) != num_pairs:
                raise ValueError(f'Ratios.{name} gives {len(value)} ratios; the backbone has '
                                 f'{num_pairs} pairs')
            return tuple(float(v) for v in value)

        low, prune = per_pair('low_bit'), per_pair('prune')
        if any(a + b > 1 + RATIO_TOLERANCE for a, b in zip(low, prune)):
            raise ValueError(f'low-bit plus prune ratio exceeds 1 on a pair: {low} + {prune}')
        return Candidate(low, prune)


class Published(NamedTuple):
    """A figure a paper or repository reports for a row: box / mask AP."""
    source: str
    box: float
    mask: float

    def __str__(self) -> str:
        return f'{self.box:.1f} / {self.mask:.1f} {self.source}'


def seeded_name(name: str, seed: Optional[int]) -> str:
    """The name of ``name``'s training or row at ``seed`` (None: not seeded)."""
    return name if seed is None else f'{name}@seed{seed}'


@dataclass(frozen=True)
class Training:
    """A model of the table: ``config`` trained from the final checkpoint of
    the training ``parent`` (None: from the config's own initialization), or,
    with ``checkpoint``, a given checkpoint (a file or URL) that is not trained.

    A ``seeded`` training is trained once per seed of the table (mmengine's
    ``randomness.seed``), each from the same seed of a seeded parent (or the
    one parent), and its rows are the mean over the seeds. An unseeded
    training continues the first seed of a seeded parent."""
    name: str
    config: str
    parent: Optional[str] = None
    checkpoint: Optional[str] = None
    seeded: bool = False


def _check_method(item: Any) -> None:
    if item.method not in METHODS:
        raise ValueError(f'{item.name}: method {item.method!r} is not one of {METHODS}')


@dataclass(frozen=True)
class Row:
    """``config`` with ``options`` (at ``ratios``, if given) evaluated on val
    on the training ``model``'s final checkpoint (``init``: its QAT
    initialization, ``qat_init.pth``); ``method`` is what the row reports.

    A PTQ row calibrates the FP model. With ``calibration`` (a name, also its
    folder) it calibrates at ``calib_ratios`` instead and is evaluated at
    ``ratios``; the rows naming one calibration share it. The speedup is the
    BitOPs of the row ``base`` over the row's own.
    """
    name: str
    config: str
    model: str
    base: str
    method: str
    options: Options = ()
    ratios: Optional[Ratios] = None
    calibration: Optional[str] = None
    calib_ratios: Optional[Ratios] = None
    init: bool = False
    plotted: bool = True  # a point of the table's Pareto plots
    published: Tuple[Published, ...] = ()

    def __post_init__(self) -> None:
        _check_method(self)
        ratio_keys = {k for k, _ in Ratios().options()} & {k for k, _ in self.options}
        if ratio_keys:
            raise ValueError(f'row {self.name}: set the ratios as ratios=Ratios(...), not as '
                             f'the options {sorted(ratio_keys)}')
        if (self.calibration is None) != (self.calib_ratios
                                          is None) or (self.calibration is not None
                                                       and self.ratios is None):
            raise ValueError(f'row {self.name}: a row of a calibration names it and gives the '
                             'ratios it is calibrated at (calib_ratios) and evaluated at '
                             '(ratios); a row without one gives neither calibration nor '
                             'calib_ratios')

    @property
    def evaluated_options(self) -> Options:
        """The options of the config the row is evaluated with."""
        return self.options + (self.ratios.options() if self.ratios else ())

    @property
    def calib_options(self) -> Options:
        """The options of the config its calibration runs (a row of one)."""
        return self.options + self.calib_ratios.options()


class SearchSettings(NamedTuple):
    """NSGA-II's population and generations, and the search images."""
    pop: int
    gens: int
    images: int


@dataclass(frozen=True)
class Search:
    """Per-pair ratios searched by NSGA-II on the search split of ``config``
    (the ``model``'s checkpoint, calibrated at ``calib_ratio`` on every pair
    if ``method`` is 'PTQ') for each speedup of ``targets``: rows
    ``<name>_<target>x`` at the searched ratios and, with ``uniform_name``,
    ``<uniform_name>_<target>x`` at one ratio on every pair of equal or lower
    speedup. With ``prune`` a pair's prune ratio is searched too."""
    name: str
    config: str
    model: str
    base: str
    targets: Tuple[float, ...]
    method: str
    uniform_name: Optional[str] = None
    objective: str = 'proxy'
    prune: bool = False
    calib_ratio: float = CALIB_LOW_BIT_RATIO

    def __post_init__(self) -> None:
        _check_method(self)
        if self.method == 'FP':
            raise ValueError(f'search {self.name}: a search needs a quantized model (PTQ or '
                             'QAT), not FP')

    def row_names(self) -> Tuple[str, ...]:
        """The rows of the search, in the order they are computed."""
        names = tuple(f'{self.name}_{t:g}x' for t in self.targets)
        if self.uniform_name:
            names += tuple(f'{self.uniform_name}_{t:g}x' for t in self.targets)
        return names

    @property
    def folder(self) -> str:
        """The search's work folder, e.g. ``search_1.35x``."""
        return self.name + '_' + '_'.join(f'{t:g}x' for t in self.targets)


@dataclass(frozen=True)
class Target:
    """A claim: row ``a`` against row ``b`` by ``test`` (:data:`TARGET_TESTS`)."""
    claim: str
    a: str
    b: str
    test: str

    def __post_init__(self) -> None:
        if self.test not in TARGET_TESTS:
            raise ValueError(f'target {self.claim!r}: test {self.test!r} is not one of '
                             f'{TARGET_TESTS}')


def ablation_targets(speedup: str) -> Tuple[Target, ...]:
    """The claims of the QAT ablations at ``speedup`` (e.g. '1.35x'): the row
    ``qat_mixaq_w4a4a2_<speedup>`` above its random and reverse window orders
    beyond noise, and above the same ratios without SAQA."""
    row = f'qat_mixaq_w4a4a2_{speedup}'
    return (Target(f'{speedup}: importance order above random, beyond noise', row,
                   f'qat_mixaq_random_{speedup}', 'noise'),
            Target(f'{speedup}: importance order above reverse, beyond noise', row,
                   f'qat_mixaq_reverse_{speedup}', 'noise'),
            Target(f'{speedup}: SAQA above the same ratios without SAQA', row,
                   f'qat_no_saqa_{speedup}', 'gt'))


@dataclass(frozen=True)
class Table:
    """Everything a table runs. ``ann_files`` are the annotation files of the
    'train', 'val' (and 'search') splits under ``data_root``, the data part of
    the rows' keys; ``img_shape`` is the network input the BitOPs
    are counted at; ``plots`` maps a method ('PTQ', 'QAT') to its base row and
    the Pareto plot's file name; ``extra_plots`` are (function of the rows and
    a file, file name) pairs; ``search_settings`` the searches' defaults.
    ``validate_trainings`` False: the trainings skip their own validation
    (mmengine's ``val_begin`` past the end), which the rows repeat anyway.
    ``generate_data``, for a table on data it makes, writes the splits that are
    absent under a data root (sizes per split)."""
    name: str
    title: str
    config_root: str
    data_root: str
    ann_files: Dict[str, str]
    img_shape: Tuple[int, int]
    trainings: Tuple[Training, ...]
    rows: Tuple[Row, ...]
    searches: Tuple[Search, ...] = ()
    targets: Tuple[Target, ...] = ()
    plots: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    extra_plots: Tuple[Tuple[Callable[[Sequence[Dict], str], None], str], ...] = ()
    eval_batch: int = 1
    search_settings: SearchSettings = SearchSettings(pop=12, gens=5, images=24)
    search_tolerance: float = 0.02
    seeds: Tuple[int, ...] = (0, )
    validate_trainings: bool = True
    work_dir: str = ''
    generate_data: Optional[Callable[[str, Dict[str, int]], None]] = None

    @property
    def default_work_dir(self) -> str:
        """Where the table runs unless told (``work_dirs/<name>_table``)."""
        return self.work_dir or f'work_dirs/{self.name}_table'

    def __post_init__(self) -> None:
        trainings = {t.name for t in self.trainings}
        if not self.seeds or len(set(self.seeds)) != len(
                self.seeds) or not all(isinstance(s, int) and s >= 0 for s in self.seeds):
            raise ValueError(f'table {self.name}: seeds must be distinct non-negative integers, '
                             f'got {self.seeds!r}')
        for training in self.trainings:
            if training.seeded and training.checkpoint is not None:
                raise ValueError(f'table {self.name}: training {training.name} is a given '
                                 'checkpoint, which cannot be seeded')
        names = [r.name for r in self.rows] + [n for s in self.searches for n in s.row_names()]
        if len(set(names)) != len(names):
            raise ValueError(f'table {self.name}: row names repeat: '
                             f'{sorted(n for n in set(names) if names.count(n) > 1)}')
        before = set()
        for training in self.trainings:
            if training.parent is not None and training.parent not in before:
                raise ValueError(f'table {self.name}: training {training.name} continues '
                                 f'{training.parent!r}, which is not a training listed '
                                 f'before it ({sorted(before)})')
            before.add(training.name)
        for item in self.rows + self.searches:
            if item.model not in trainings:
                raise ValueError(f'table {self.name}: {item.name} uses model {item.model!r}, '
                                 f'not one of the trainings {sorted(trainings)}')
        calibrations: Dict[str, Row] = {}
        for row in self.rows:
            if row.calibration is None:
                continue
            first = calibrations.setdefault(row.calibration, row)
            if (first.config, first.model, first.calib_options) != (row.config, row.model,
                                                                    row.calib_options):
                raise ValueError(f'table {self.name}: rows {first.name} and {row.name} share '
                                 f'calibration {row.calibration!r} but not its config, model, '
                                 'options and calibration ratios')
        missing = sorted({'train', 'val'} - set(self.ann_files))
        if missing or (self.searches and 'search' not in self.ann_files):
            splits = 'train, val' + (' and search' if self.searches else '')
            raise ValueError(f'table {self.name}: ann_files needs the splits {splits}; '
                             f'has {sorted(self.ann_files)}')
        for target in self.targets:
            for name in (target.a, target.b):
                if name not in names:
                    raise ValueError(f'table {self.name}: target {target.claim!r} names '
                                     f'row {name!r}, which the table does not have')

    @property
    def row_names(self) -> Tuple[str, ...]:
        return tuple(r.name for r in self.rows) + tuple(n for s in self.searches
                                                        for n in s.row_names())

    def training(self, name: str) -> Training:
        return next(t for t in self.trainings if t.name == name)

    def seeds_of(self, training: str) -> Tuple[Optional[int], ...]:
        """The seeds ``training`` is trained at (``(None,)``: once, unseeded)."""
        return self.seeds if self.training(training).seeded else (None, )

    def parent_of(self, training: str, seed: Optional[int]) -> Optional[str]:
        """The seeded name of the training that ``training`` at ``seed`` continues."""
        parent = self.training(training).parent
        if parent is None or not self.training(parent).seeded:
            return parent
        return seeded_name(parent, self.seeds[0] if seed is None else seed)

    def needed_trainings(self, rows: Sequence[str]) -> Tuple[str, ...]:
        """The trainings (seeded names) the rows ``rows`` need, parents first:
        every seed of a row's model, the first seed of a search's."""
        needed = set()
        for row in self.rows:
            if row.name in rows:
                needed.update(seeded_name(row.model, s) for s in self.seeds_of(row.model))
        for search in self.searches:
            if set(search.row_names()) & set(rows):
                needed.add(seeded_name(search.model, self.seeds_of(search.model)[0]))
        for training in reversed(self.trainings):
            for seed in self.seeds_of(training.name):
                if seeded_name(training.name, seed) in needed and training.parent:
                    needed.add(self.parent_of(training.name, seed))
        return tuple(
            seeded_name(t.name, s) for t in self.trainings for s in self.seeds_of(t.name)
            if seeded_name(t.name, s) in needed)
