"""The documentation: README.md stays short, its links resolve, its commands exist."""
import glob
import os.path as osp
import re
from typing import List, Tuple

import pytest

from .conftest import REPO

README = osp.join(REPO, 'README.md')
MAX_README_LINES = 300
TEST_COMMAND = 'make test'
DEMO_COMMAND = 'make demo'

# [text](target) and ![alt](target), the text possibly wrapped over lines; <img src="target">.
MD_LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
HTML_SRC = re.compile(r'<img\b[^>]*\bsrc\s*=\s*["\']([^"\']+)["\']', re.IGNORECASE)
FENCE = re.compile(r'^\s*(```|~~~)')
EXTERNAL = re.compile(r'^(https?:|mailto:|ftp:)', re.IGNORECASE)


def read(path: str) -> str:
    with open(path, encoding='utf-8') as f:
        return f.read()


def doc_files() -> List[str]:
    files = [README, osp.join(REPO, 'CHANGELOG.md')]
    files += sorted(glob.glob(osp.join(REPO, 'docs', '*.md')))
    return files


def strip_code(text: str) -> str:
    """The text without fenced code blocks and inline code spans (no links there)."""
    kept, in_fence = [], False
    for line in text.split('\n'):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            kept.append(line)
    return re.sub(r'`[^`]*`', '', '\n'.join(kept))


def relative_targets(text: str) -> List[str]:
    """The relative link and image targets of a markdown text, #anchors stripped."""
    prose = strip_code(text)
    targets = MD_LINK.findall(prose) + HTML_SRC.findall(prose)
    relative = []
    for target in targets:
        if EXTERNAL.match(target) or target.startswith('#'):
            continue
        relative.append(target.split('#', 1)[0].split('?', 1)[0])
    return relative


def broken_links(path: str) -> List[Tuple[str, str]]:
    base = osp.dirname(path)
    return [(osp.relpath(path, REPO), target) for target in relative_targets(read(path))
            if not osp.exists(osp.normpath(osp.join(base, target)))]


def makefile_targets() -> List[str]:
    targets = []
    for line in read(osp.join(REPO, 'Makefile')).split('\n'):
        match = re.match(r'^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?!=)', line)
        if match:
            targets += match.group(1).split()
    return targets


def test_readme_is_short():
    with open(README, encoding='utf-8') as f:
        lines = f.read().splitlines()
    assert len(lines) < MAX_README_LINES, (
        f'README.md has {len(lines)} lines; keep it under {MAX_README_LINES} and move '
        'details to docs/')


def test_doc_files_exist():
    files = doc_files()
    missing = [f for f in files[:2] if not osp.isfile(f)]
    assert not missing, f'missing: {missing}'
    assert len(files) > 2, 'no docs/*.md pages'


@pytest.mark.parametrize('path', doc_files(), ids=lambda p: osp.relpath(p, REPO))
def test_relative_links_resolve(path):
    assert osp.isfile(path), f'{path} does not exist'
    broken = broken_links(path)
    assert not broken, f'links to files that do not exist: {broken}'


def test_link_checker_sees_links(tmp_path):
    page = tmp_path / 'page.md'
    page.write_text('See [a](missing.md#part), ![b](img.png), [wrapped\ntext](there.md),\n'
                    '<img src="pic.png" width="45%">, [web](https://example.org/x.md), '
                    '[here](#anchor) and `[code](not_a_link.md)`.\n'
                    '```\n[fenced](not_a_link_either.md)\n```\n')
    assert broken_links(str(page)) == [(osp.relpath(str(page), REPO), t)
                                       for t in ('missing.md', 'img.png', 'there.md', 'pic.png')]
    (tmp_path / 'missing.md').write_text('')
    assert ('missing.md' not in [t for _, t in broken_links(str(page))])


def test_readme_names_the_two_commands():
    readme = read(README)
    for command in (TEST_COMMAND, DEMO_COMMAND):
        assert command in readme, f'README.md does not name `{command}`'


def test_the_two_commands_are_makefile_targets():
    targets = makefile_targets()
    for command in (TEST_COMMAND, DEMO_COMMAND):
        target = command.split()[1]
        assert target in targets, f'`{command}`: no target {target!r} in the Makefile'


def test_ci_runs_the_test_command():
    ci = read(osp.join(REPO, '.ci', 'run'))
    code = '\n'.join(line.split('#', 1)[0] for line in ci.split('\n'))
    run = re.compile(r'(?<![\w-])' + re.escape(TEST_COMMAND) + r'(?![\w-])')
    assert run.search(code), f'.ci/run does not run `{TEST_COMMAND}`'
