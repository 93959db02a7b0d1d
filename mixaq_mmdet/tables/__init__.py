"""Results tables as data and one runner for them: the embedded benchmark
(``make demo``) and the paper's COCO table run through the same code.

:mod:`.rows` is the data (trainings, rows, searches, claims); :mod:`.records`
the typed row of results; :mod:`.cache` keys results on the contents of their
inputs and the code that computes them; :mod:`.configs` loads a table's
configs and writes them as command-line options; :mod:`.executors` runs in
process or launches the tools (one :class:`~.executors.Executor` interface);
:mod:`.runner` joins them; :mod:`.report` makes speedups, claims and the
printed table; :mod:`.smoke` runs the COCO tables on the COCO-layout fixture.
The tables: :mod:`.benchmark`, :mod:`.coco` (the paper's) and
:mod:`.ptq_papers` (the PTQ papers' four detectors).
"""
from .benchmark import BENCHMARK
from .cache import ResultStore, code_digest, file_digest, fingerprint
from .coco import COCO
from .configs import TableConfig, relocation_options
from .executors import Calibration, Executor, LaunchExecutor, LocalExecutor, RowInfo, tool_command
from .ptq_papers import PTQ_PAPERS
from .records import RowRecord, row_record
from .report import add_speedups, compare, format_table, format_targets, published_figures
from .rows import Published, Ratios, Row, Search, SearchSettings, Table, Target, Training
from .runner import TableRunner

#: The tables ``tools/run_demo.py --table`` runs.
TABLES = {table.name: table for table in (BENCHMARK, COCO, PTQ_PAPERS)}
#: The tables on COCO (data/coco), which the COCO smoke runs on its fixture.
COCO_TABLES = tuple(t for t in TABLES.values() if t.generate_data is None)

__all__ = [
    'TABLES', 'COCO_TABLES', 'BENCHMARK', 'COCO', 'PTQ_PAPERS', 'Published', 'published_figures',
    'Ratios', 'Row', 'Search', 'SearchSettings', 'Table', 'Target', 'Training', 'TableRunner',
    'TableConfig', 'relocation_options', 'Calibration', 'Executor', 'LaunchExecutor',
    'LocalExecutor', 'RowInfo', 'tool_command', 'ResultStore', 'code_digest', 'file_digest',
    'fingerprint', 'add_speedups', 'compare', 'format_table', 'format_targets', 'RowRecord',
    'row_record'
]
