"""What a table's results are keyed on: the contents of their inputs.

A row or a training is reused while its key is unchanged: the merged config's
text, the content digest of the checkpoint it starts from (a URL stands for
itself) and the versions of the code and data it read. File times and the
table's folder play no part, so a moved or copied work dir, or a checkout of
the same commit, reuses what it holds.
"""
import ast
import hashlib
import json
import os
import os.path as osp
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from mmengine.config import Config

from .records import RowRecord

_CHUNK = 1 << 22
#: Digests of files already read in this process: (path, size, mtime_ns) -> digest.
_DIGESTS: Dict[Tuple[str, int, int], str] = {}


def file_digest(path: str) -> str:
    """sha256 of the file's content (read once per process while it is unchanged)."""
    stat = os.stat(path)
    key = (osp.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(_CHUNK), b''):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def files_digest(paths: Iterable[str], root: Optional[str] = None) -> str:
    """One digest of several files' names (relative to ``root``) and contents."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update((osp.relpath(path, root) if root else path).encode())
        digest.update(file_digest(path).encode())
    return digest.hexdigest()


#: The package's code a training runs (the models, quantizers, hooks, loops
#: and data), and the code a row's evaluation runs besides (BitOPs, the
#: search, the executors and the records). Paths relative to the package.
TRAINING_CODE = ('__init__.py', 'compat.py', 'registry.py', 'ratios.py', 'datasets', 'engine',
                 'models', 'quantization', 'utils')
ROW_CODE = TRAINING_CODE + ('analysis', 'search', 'tables/configs.py', 'tables/executors.py',
                            'tables/records.py')


def _code(path: str) -> str:
    """A module's code without its docstrings and comments (its AST)."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        body = getattr(node, 'body', None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_digest(package: str, parts: Sequence[str]) -> str:
    """Digest of the code of ``parts`` of ``package`` (modules or folders):
    a change of what runs changes it, an edit of a docstring or a comment
    does not."""
    paths = []
    for part in parts:
        path = osp.join(package, part)
        if osp.isfile(path):
            paths.append(path)
            continue
        if not osp.isdir(path):
            raise FileNotFoundError(f'{path} (code of a key) does not exist')
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            paths += [osp.join(folder, f) for f in sorted(files) if f.endswith('.py')]
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(osp.relpath(path, package).encode())
        digest.update(hashlib.sha256(_code(path).encode()).hexdigest().encode())
    return digest.hexdigest()[:16]


def checkpoint_stamp(checkpoint: Optional[str]) -> str:
    """What a key records of a checkpoint: its content digest, or the URL."""
    if checkpoint is None:
        return 'none'
    if '://' in checkpoint:
        return checkpoint
    return file_digest(checkpoint)


def fingerprint(cfg: Config,
                checkpoint: Optional[str],
                versions: str,
                work_dir: Optional[str] = None) -> str:
    """The key of a row or a training: ``cfg``'s merged text (with ``work_dir``,
    the table's folder, written as a placeholder: a moved folder keeps its
    keys), the checkpoint it starts from and the code and data ``versions``."""
    # the merged settings as text, unformatted: yapf would cost a second a key
    # and its output would depend on the format_config setting
    text = Config(cfg.to_dict(), format_python_code=False).pretty_text
    if work_dir:
        text = text.replace(work_dir.rstrip('/'), '{work_dir}')
    digest = hashlib.sha256(text.encode())
    digest.update(f'{checkpoint_stamp(checkpoint)}:{versions}'.encode())
    return digest.hexdigest()[:16]


class ResultStore:
    """The rows of ``results.json``: those computed or kept in this run, and
    those of the previous run. Saved after each new row, so that an
    interrupted run keeps its progress."""

    def __init__(self, path: str) -> None:
        self.path = path
        saved = {}
        if osp.isfile(path):
            with open(path) as f:
                saved = json.load(f)
        # a mean over seeds is derived from its seeds' rows, never reused
        self.previous: Dict[str, RowRecord] = {
            r['name']: RowRecord.from_dict(r)
            for r in saved.get('rows', []) if r.get('seeds') is None
        }
        self.rows: List[RowRecord] = []

    def reuse(self, name: str, key: Optional[str],
              wanted: Sequence[str]) -> Tuple[bool, Optional[RowRecord]]:
        """``(done, row)``: a row not asked for keeps its previous result
        (flagged ``stale`` if its key changed); an asked-for row whose key is
        unchanged is taken as it was. ``done`` False: compute it."""
        old = self.previous.get(name)
        if name not in wanted:
            if old is not None:
                old.stale = old.fingerprint != key
            return True, old
        if old is not None and key is not None and old.fingerprint == key:
            print(f'[table] {name}: unchanged, taken from {osp.basename(self.path)}')
            old.stale = False
            return True, old
        return False, None

    def keep(self, row: RowRecord) -> None:
        """Add a row taken from the previous run."""
        self.rows.append(row)

    def add(self, row: RowRecord, key: Optional[str]) -> None:
        """Add a computed row and save."""
        row.fingerprint = key
        self.rows.append(row)
        self.save()

    def save(self, **extra) -> None:
        names = {r.name for r in self.rows}
        rows = self.rows + [r for n, r in self.previous.items() if n not in names]
        os.makedirs(osp.dirname(osp.abspath(self.path)), exist_ok=True)
        with open(self.path, 'w') as f:
            json.dump(dict(rows=[r.to_dict() for r in rows], **extra), f, indent=2)
