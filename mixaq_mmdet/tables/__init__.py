"""Results tables as data and one runner for them: the embedded benchmark
(``make demo``) and the paper's COCO table run through the same code.

:mod:`.rows` is the data (trainings, rows, searches, claims); :mod:`.cache`
keys results on the contents of their inputs; :mod:`.configs` loads a table's
configs and writes them as command-line options; :mod:`.executors` runs in
process or launches the tools; :mod:`.runner` joins them; :mod:`.report`
makes records, speedups, claims and the printed table.
"""
from .benchmark import BENCHMARK
from .cache import ResultStore, file_digest, fingerprint, package_digest
from .coco import COCO
from .configs import TableConfig, relocation_options
from .executors import LaunchExecutor, LocalExecutor, tool_command
from .report import add_speedups, compare, format_table, format_targets, row_record
from .rows import Row, Search, SearchSettings, Table, Target, Training
from .runner import TableRunner

#: The tables ``tools/run_demo.py --table`` runs.
TABLES = {table.name: table for table in (BENCHMARK, COCO)}

__all__ = [
    'TABLES', 'BENCHMARK', 'COCO', 'Row', 'Search', 'SearchSettings', 'Table', 'Target', 'Training',
    'TableRunner', 'TableConfig', 'relocation_options', 'LaunchExecutor', 'LocalExecutor',
    'tool_command', 'ResultStore', 'file_digest', 'fingerprint', 'package_digest', 'add_speedups',
    'compare', 'format_table', 'format_targets', 'row_record'
]
