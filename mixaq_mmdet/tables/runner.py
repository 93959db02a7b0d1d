"""One runner for every table: train what the asked-for rows need, evaluate
the rows, run the searches, reuse what is unchanged, check the claims."""
import os
import os.path as osp
import shutil
import time
from functools import partial
from typing import Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

from ..engine.hooks.qat_init_hook import INIT_CHECKPOINT
from ..quantization.numerics import compile_kernels
from ..search import calibration_options
from ..utils.forking import torch_threads
from .cache import ROW_CODE, TRAINING_CODE, ResultStore, code_digest, files_digest, fingerprint
from .configs import ConfigOptions, TableConfig
from .executors import Calibration, Executor, RowInfo
from .records import RowRecord
from .report import add_speedups, compare, with_seed_means
from .rows import Row, Search, SearchSettings, Table, seeded_name
from .scheduler import Job, run_jobs

#: Where a training records the key of the inputs it was trained from, the
#: digest of the code that trained it, and the commands that trained it (one
#: a line: a resumed run adds one).
TRAINING_KEY_FILE = 'table_inputs.txt'
TRAINING_CODE_FILE = 'table_code.txt'
TRAINING_COMMANDS_FILE = 'table_commands.txt'
PACKAGE = osp.dirname(osp.dirname(osp.abspath(__file__)))


class Outcome(NamedTuple):
    """A row's record: computed now (to store under ``key``) or ``kept``
    from the previous ``results.json``."""
    record: RowRecord
    key: Optional[str]
    kept: bool


class TableRunner:
    """Runs ``table`` into ``work_dir`` on the data under ``data_root``.

    A training is reused while its config, its parent checkpoint's content and
    the training annotations are unchanged; an interrupted training resumes.
    The code it ran (:data:`~.cache.TRAINING_CODE`, docstrings and comments
    left out) is recorded beside it: a row on a model trained by other code
    says so (``trained_by_other_code``), and with ``retrain_changed_code`` such
    a model is trained anew. A row is reused from ``results.json`` while its
    config, checkpoint, code (:data:`~.cache.ROW_CODE`) and data are
    unchanged; rows not in ``rows`` keep their previous result (marked stale
    if their inputs changed). ``options`` adds overrides to every config
    (a quick run's epochs or image counts); ``checkpoints`` replaces the given
    checkpoint of a training (the COCO FP model: a URL or a local file);
    ``search`` the table's search settings.

    A seeded training is trained into ``<name>@seed<s>`` for each seed of the
    table; a row on it is evaluated per seed (``<row>@seed<s>``) and reported
    as their mean, and a search uses the first seed's model.

    The work is split into jobs: each training, each search, and the rows of
    one calibration (or one row) at one seed; a job of rows not asked for only
    keeps their previous records (a light job, run in this process). ``jobs`` > 1 runs up to that
    many side by side in forked children (:func:`.scheduler.run_jobs`, logs
    in ``<work_dir>/logs``), where the executor allows it (``side_by_side``).
    """

    def __init__(self,
                 table: Table,
                 work_dir: str,
                 executor: Executor,
                 data_root: Optional[str] = None,
                 rows: Optional[Sequence[str]] = None,
                 options: Optional[ConfigOptions] = None,
                 checkpoints: Optional[Dict[str, str]] = None,
                 search: Optional[SearchSettings] = None,
                 jobs: int = 1,
                 retrain_changed_code: bool = False) -> None:
        if jobs > 1 and not executor.side_by_side:
            raise ValueError(f'jobs={jobs} runs jobs side by side in this machine\'s processes; '
                             f'{type(executor).__name__} runs one at a time on all the devices')
        unknown = sorted(set(rows or ()) - set(table.row_names))
        if unknown:
            raise ValueError(f'table {table.name} has no rows {unknown}; rows: ' +
                             ', '.join(table.row_names))
        self.table, self.work_dir, self.executor = table, osp.abspath(work_dir), executor
        # the tools run in the repository: a data root given elsewhere is made absolute
        self.data_root = osp.abspath(data_root) if data_root else table.data_root
        self.wanted = list(rows) if rows else list(table.row_names)
        self.options = options
        self.given = {
            name: path if '://' in path else osp.abspath(path)
            for name, path in (checkpoints or {}).items()
        }
        self.search_settings = search or table.search_settings
        self.store = ResultStore(osp.join(self.work_dir, 'results.json'))
        self.dry_run = executor.dry_run
        self.jobs = jobs
        self.retrain_changed_code = retrain_changed_code
        self.training_code = code_digest(PACKAGE, TRAINING_CODE)

    def config(self, config: str, work_dir: str, options=()) -> TableConfig:
        return TableConfig(
            osp.join(self.table.config_root, config), work_dir, self.data_root, tuple(options),
            self.options)

    def data_version(self, splits: Sequence[str]) -> str:
        if self.dry_run:
            return 'dry-run'
        return files_digest([osp.join(self.data_root, self.table.ann_files[s]) for s in splits],
                            self.data_root)

    def key(self, tc: TableConfig, checkpoint: Optional[str], versions: str) -> Optional[str]:
        if self.dry_run or (checkpoint and '://' not in checkpoint and not osp.isfile(checkpoint)):
            return None
        return fingerprint(tc.cfg, checkpoint, versions, self.work_dir)

    def run(self) -> Tuple[List[RowRecord], List[Dict]]:
        """Compute the asked-for rows; return every row (with its speedup) and
        the table's claims checked on them, both also in ``results.json``."""
        checkpoints, jobs = self.training_jobs()
        versions = f"{code_digest(PACKAGE, ROW_CODE)}:{self.data_version(('train', 'val'))}"
        trained = {job.name for job in jobs}
        jobs += self.search_jobs(checkpoints, versions, trained)
        jobs += self.row_jobs(checkpoints, versions, trained)
        if self.jobs > 1:
            with torch_threads(1):  # a parallel region here would hang the forked jobs
                compile_kernels()  # once here, not in every forked job
        run_jobs(jobs, self.store_outcomes, self.jobs, osp.join(self.work_dir, 'logs'))
        if self.dry_run:
            return self.store.rows, []
        self.store.rows = rows = with_seed_means(self.in_table_order(self.store.rows))
        add_speedups(rows)
        targets = compare(self.table.targets, rows, self.seed_dirs,
                          osp.join(self.data_root, self.table.ann_files['val']))
        other = sorted({r.model for r in rows if r.trained_by_other_code and r.seeds is None})
        if other:
            print(f'[table] models trained by other code than this checkout\'s: {other}; their '
                  'rows say so (--retrain-changed-code trains them anew)')
        self.store.save(
            targets=targets,
            trainings=self.training_records(checkpoints),
            seeds=list(self.table.seeds),
            seeded_trainings=[t.name for t in self.table.trainings if t.seeded])
        return rows, targets

    def training_records(self, checkpoints: Dict[str, str]) -> Dict[str, Dict]:
        """Each model's checkpoint and the commands that trained it (none: given)."""
        records = {}
        for name, checkpoint in checkpoints.items():
            path = osp.join(osp.dirname(checkpoint), TRAINING_COMMANDS_FILE)
            commands = []
            if '://' not in checkpoint and osp.isfile(path):
                with open(path) as f:
                    commands = f.read().splitlines()
            records[name] = dict(checkpoint=checkpoint, commands=commands)
        return records

    def training_jobs(self) -> Tuple[Dict[str, str], List[Job]]:
        """The final checkpoint of every training, and a job for each training
        a wanted row needs (named ``train <name>``)."""
        checkpoints: Dict[str, str] = {}
        jobs: List[Job] = []
        needed = self.table.needed_trainings(self.wanted)
        train_data = self.data_version(('train', ))  # models never see val
        for training in self.table.trainings:
            if training.checkpoint is not None:
                checkpoints[training.name] = self.given.get(training.name, training.checkpoint)
                continue
            for seed in self.table.seeds_of(training.name):
                name = seeded_name(training.name, seed)
                options = () if seed is None else (('randomness.seed', seed), )
                tc = self.config(training.config, osp.join(self.work_dir, name), options)
                loop = tc.cfg.train_cfg
                if not self.table.validate_trainings:
                    # the table evaluates every row itself
                    end = loop.get('max_epochs', loop.get('max_iters'))
                    tc = tc.with_options((('train_cfg.val_begin', end + 1), ))
                final = osp.join(tc.work_dir, f'epoch_{loop.max_epochs}.pth')
                checkpoints[name] = final
                if name in needed:
                    parent_name = self.table.parent_of(training.name, seed)
                    parent = checkpoints.get(parent_name)
                    # a given checkpoint (COCO's FP model) is no job to wait for
                    parent_job = f'train {parent_name}'
                    jobs.append(
                        Job(f'train {name}',
                            partial(self.ensure_trained, name, tc, parent, final, train_data),
                            tuple(j.name for j in jobs if j.name == parent_job),
                            work_dirs=(tc.work_dir, )))
        return checkpoints, jobs

    def search_jobs(self, checkpoints: Dict[str, str], versions: str,
                    trained: Set[str]) -> List[Job]:
        """A job for each search (``search <name>``)."""
        jobs = []
        for search in self.table.searches:
            model = f'train {seeded_name(search.model, self.table.seeds_of(search.model)[0])}'
            run = partial(self.run_search, search, checkpoints, versions)
            folders = (osp.join(self.work_dir, search.folder), ) + tuple(
                self.row_dir(name) for name in search.row_names())
            jobs.append(
                Job(f'search {search.name}',
                    run, (model, ) if model in trained else (),
                    work_dirs=folders,
                    light=not set(search.row_names()) & set(self.wanted)))
        return jobs

    def row_jobs(self, checkpoints: Dict[str, str], versions: str, trained: Set[str]) -> List[Job]:
        """A job for the rows of each calibration at each seed (``eval
        <calibration>@seed<s>``, sharing the calibrated model), and for each
        other row at each seed (``eval <row>@seed<s>``)."""
        groups: Dict[str, List[Tuple[Row, Optional[int]]]] = {}
        for row in self.table.rows:
            for seed in self.table.seeds_of(row.model):
                group = seeded_name(row.calibration or row.name, seed)
                groups.setdefault(f'eval {group}', []).append((row, seed))
        jobs = []
        for name, members in groups.items():
            models = {f'train {seeded_name(r.model, s)}' for r, s in members}
            jobs.append(
                Job(name,
                    partial(self.run_rows, members, checkpoints, versions),
                    tuple(sorted(models & trained)),
                    work_dirs=tuple(self.row_folders(members)),
                    light=not any(row.name in self.wanted for row, _ in members)))
        return jobs

    def row_folders(self, members: Sequence[Tuple[Row, Optional[int]]]) -> List[str]:
        """Where the runs of a job of rows write: each row's folder and its
        calibration's."""
        folders = []
        for row, seed in members:
            folders.append(self.row_dir(seeded_name(row.name, seed)))
            if row.calibration is not None:
                folders.append(osp.join(self.work_dir, seeded_name(row.calibration, seed)))
        return list(dict.fromkeys(folders))

    def run_rows(self, members: Sequence[Tuple[Row, Optional[int]]], checkpoints: Dict[str, str],
                 versions: str) -> List[Outcome]:
        outcomes = (self.run_row(row, seed, checkpoints, versions) for row, seed in members)
        return [o for o in outcomes if o is not None]

    def store_outcomes(self, job: Job, outcomes: Optional[List[Outcome]]) -> None:
        """Store the rows a job computed or kept (a training's job: none)."""
        for outcome in outcomes or ():
            if outcome.kept:
                self.store.keep(outcome.record)
            else:
                self.add(outcome.record, outcome.key)

    def in_table_order(self, rows: List[RowRecord]) -> List[RowRecord]:
        """``rows`` as the table lists them (a row's seeds in the table's
        order), rows the table no longer has last."""
        names = self.table.row_names
        seeds = list(self.table.seeds)

        def place(row: RowRecord) -> Tuple[int, int]:
            name = row.row or row.name
            index = names.index(name) if name in names else len(names)
            return index, seeds.index(row.seed) + 1 if row.seed in seeds else 0

        return sorted(rows, key=place)

    def ensure_trained(self, name: str, tc: TableConfig, parent: Optional[str], final: str,
                       train_data: str) -> None:
        """Train ``tc`` from ``parent`` unless ``final`` exists for the same
        inputs; an interrupted run with the same inputs resumes."""
        record = osp.join(tc.work_dir, TRAINING_KEY_FILE)
        if self.dry_run:
            self.executor.train(tc, parent, resume=False)
            return
        cfg = tc.cfg.copy()
        cfg.pop('search_dataloader', None)  # training never reads the search split
        key = fingerprint(cfg, parent, train_data, self.work_dir)
        recorded = open(record).read() if osp.isfile(record) else None
        code = self.trained_code(tc.work_dir)
        changed = code is not None and code != self.training_code
        if osp.isfile(final) and recorded == key and not (changed and self.retrain_changed_code):
            print(f'[table] {name}: {final} (cached' +
                  (', trained by other code)' if changed else ')'))
            return
        if recorded is not None and (recorded != key or changed):
            print(f'[table] {name}: ' + ('config, parent checkpoint or data changed' if recorded !=
                                         key else 'code changed') + '; training anew')
            shutil.rmtree(tc.work_dir)
        os.makedirs(tc.work_dir, exist_ok=True)
        with open(record, 'w') as f:
            f.write(key)
        with open(osp.join(tc.work_dir, TRAINING_CODE_FILE), 'w') as f:
            f.write(self.training_code)
        resume = osp.isfile(osp.join(tc.work_dir, 'last_checkpoint'))
        print(f'[table] {name}: training {osp.relpath(tc.path, self.table.config_root)} into '
              f'{tc.work_dir}' + (f' from {parent}' if parent else '') +
              (' (resuming)' if resume else ''))
        start = time.time()
        commands = self.executor.train(tc, parent, resume)
        with open(osp.join(tc.work_dir, TRAINING_COMMANDS_FILE), 'a') as f:
            f.write(''.join(c + '\n' for c in commands))
        print(f'[table] {name}: trained in {(time.time() - start) / 60:.1f} min')
        if not osp.isfile(final):
            raise RuntimeError(f'{name}: training ended without {final}')

    @staticmethod
    def trained_code(work_dir: str) -> Optional[str]:
        """The digest of the code that trained the model in ``work_dir``
        (None: not trained by a table, e.g. a given checkpoint)."""
        path = osp.join(work_dir, TRAINING_CODE_FILE)
        if not osp.isfile(path):
            return None
        with open(path) as f:
            return f.read()

    def row_dir(self, name: str) -> str:
        """A row's folder (``<name>/test`` where a training has that folder)."""
        path = osp.join(self.work_dir, name)
        if any(
                seeded_name(t.name, s) == name for t in self.table.trainings
                for s in self.table.seeds_of(t.name)):
            path = osp.join(path, 'test')
        return path

    def seed_dirs(self, name: str) -> List[Tuple[Optional[int], str]]:
        """(seed, folder) of each evaluation of the row ``name`` (seed None:
        a row evaluated once)."""
        row = next((r for r in self.table.rows if r.name == name), None)
        seeds = self.table.seeds_of(row.model) if row is not None else (None, )
        return [(seed, self.row_dir(seeded_name(name, seed))) for seed in seeds]

    def row_options(self, out_dir: str):
        return (('test_dataloader.batch_size', self.table.eval_batch),
                ('test_evaluator.outfile_prefix', osp.join(out_dir, 'preds')))

    def run_row(self, row: Row, seed: Optional[int], checkpoints: Dict[str, str],
                versions: str) -> Optional[Outcome]:
        """``row`` evaluated on its model's training at ``seed`` (None:
        unseeded), or its previous record (None: not asked for and none)."""
        name, model = seeded_name(row.name, seed), seeded_name(row.model, seed)
        checkpoint = checkpoints[model]
        if row.init:
            checkpoint = osp.join(osp.dirname(checkpoint), INIT_CHECKPOINT)
        out_dir = self.row_dir(name)
        versions = self.model_versions(versions, model)
        tc = self.config(row.config, out_dir, row.evaluated_options + self.row_options(out_dir))
        calibration = None
        if row.calibration is None:
            key = self.key(tc, checkpoint, versions)
        else:
            calib_tc = self.config(row.config,
                                   osp.join(self.work_dir, seeded_name(row.calibration, seed)),
                                   row.calib_options)
            calibration = Calibration(calib_tc, checkpoint, self.key(calib_tc, checkpoint,
                                                                     versions))
            key = None if calibration.key is None else f'{calibration.key}:{row.ratios}'
        done, old = self.store.reuse(name, key, [name] if row.name in self.wanted else [])
        if done:
            return None if old is None else Outcome(old, None, True)
        info = RowInfo(name, row.method, f'{model}:init' if row.init else model, row.base)
        if calibration is None:
            print(f'[table] {name}: evaluating {row.config} on {checkpoint}')
            record = self.executor.evaluate(info, tc, checkpoint)
        else:
            print(f'[table] {name}: evaluating {row.config} calibrated as '
                  f'{osp.basename(calibration.tc.work_dir)} at {row.ratios}')
            record = self.executor.evaluate_calibrated(info, calibration, row.ratios, tc)
        if record is None:  # a dry run
            return None
        self.describe(record, tc, model)
        record.plotted = row.plotted
        if seed is not None:
            record.row, record.seed = row.name, seed
        return Outcome(record, key, False)

    def model_versions(self, versions: str, model: str) -> str:
        """``versions`` with the code that trained ``model``: a model trained
        again by other code changes the keys of its rows."""
        return f'{versions}:{self.trained_code(osp.join(self.work_dir, model)) or "given"}'

    def describe(self, record: RowRecord, tc: TableConfig, model: str) -> None:
        """What the runner adds to a computed record: its config and whether
        its model was trained by other code."""
        record.config = osp.relpath(tc.path, self.table.config_root)
        trained = self.trained_code(osp.join(self.work_dir, model))
        record.trained_by_other_code = trained is not None and trained != self.training_code

    def run_search(self, search: Search, checkpoints: Dict[str, str],
                   versions: str) -> List[Outcome]:
        names = search.row_names()
        model = seeded_name(search.model, self.table.seeds_of(search.model)[0])
        checkpoint = checkpoints[model]
        versions = self.model_versions(versions, model)
        tc = self.config(search.config, osp.join(self.work_dir, search.folder),
                         tuple(calibration_options(search.calib_ratio).items()))
        settings = self.search_settings
        key = self.key(
            tc, checkpoint, f"{versions}:{self.data_version(('search', ))}:"
            f'{search.targets}:{self.table.search_tolerance}:{search.objective}:'
            f'{search.prune}:{settings.images}:{settings.pop}:{settings.gens}:{search.method}:'
            f'{search.uniform_name}')
        results = [self.store.reuse(name, key, self.wanted) for name in names]
        if all(done for done, _ in results):
            return [Outcome(row, None, True) for _, row in results if row is not None]
        print(f'[table] {search.name}: searching {search.config} on {checkpoint}')
        records = self.executor.search(search, Calibration(tc, checkpoint, key), settings, key
                                       or 'dry-run', {name: self.row_dir(name)
                                                      for name in names})
        for record in records:
            self.describe(record, tc, model)
        return [Outcome(record, key, False) for record in records]

    def add(self, record: RowRecord, key: Optional[str]) -> None:
        self.store.add(record, key)
