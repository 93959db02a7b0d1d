"""What a table's results are keyed on: the contents of their inputs.

A row or a training is reused while its key is unchanged: the merged config's
text, the content digest of the checkpoint it starts from (a URL stands for
itself) and the versions of the code and data it read. File times and the
table's folder play no part, so a moved or copied work dir, or a checkout of
the same commit, reuses what it holds.
"""
import hashlib
import json
import os
import os.path as osp
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from mmengine.config import Config

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


def package_digest(package: str) -> str:
    """Digest of every ``.py`` file under ``package``: a change of a quantizer
    changes the key of every row."""
    paths = []
    for folder, dirs, files in os.walk(package):
        dirs.sort()
        paths += [osp.join(folder, f) for f in sorted(files) if f.endswith('.py')]
    return files_digest(sorted(paths), package)


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
    # and its output would depend on MIXAQ_FORMAT_CONFIG
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
        self.previous: Dict[str, Dict] = {
            r['name']: r
            for r in saved.get('rows', []) if 'seeds' not in r
        }
        self.rows: List[Dict] = []

    def reuse(self, name: str, key: Optional[str],
              wanted: Sequence[str]) -> Tuple[bool, Optional[Dict]]:
        """``(done, row)``: a row not asked for keeps its previous result
        (flagged ``stale`` if its key changed); an asked-for row whose key is
        unchanged is taken as it was. ``done`` False: compute it."""
        old = self.previous.get(name)
        if name not in wanted:
            if old is not None:
                old['stale'] = old.get('fingerprint') != key
                if not old['stale']:
                    old.pop('stale')
            return True, old
        if old is not None and key is not None and old.get('fingerprint') == key:
            print(f'[table] {name}: unchanged, taken from {osp.basename(self.path)}')
            old.pop('stale', None)
            return True, old
        return False, None

    def keep(self, row: Dict) -> None:
        """Add a row taken from the previous run."""
        self.rows.append(row)

    def add(self, row: Dict, key: str) -> None:
        """Add a computed row and save."""
        row['fingerprint'] = key
        self.rows.append(row)
        self.save()

    def save(self, **extra) -> None:
        names = {r['name'] for r in self.rows}
        rows = self.rows + [r for n, r in self.previous.items() if n not in names]
        os.makedirs(osp.dirname(osp.abspath(self.path)), exist_ok=True)
        with open(self.path, 'w') as f:
            json.dump(dict(rows=rows, **extra), f, indent=2)
