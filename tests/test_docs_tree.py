"""docs/architecture.md's file tree lists exactly the modules of wsigym and zoo (it cannot drift)."""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


def tree_paths(text: str) -> set[str]:
    """The paths named by the first ```text block of ``text``: two spaces of indent per folder level,
    a line's name is its first word (several names when they are joined by ``", "``), folders end in ``/``."""
    block = re.search(r"```text\n(.*?)```", text, re.S)
    assert block, f"{DOC}: no ```text block with the file tree"
    paths: set[str] = set()
    folders: list[str] = []
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        words = line.split()
        names = [words[0].rstrip(",")]
        for prev, word in itertools.pairwise(words):
            if not prev.endswith(","):
                break
            names.append(word.rstrip(","))
        del folders[depth:]
        for name in names:
            path = "/".join([*folders, name]).rstrip("/")
            paths.add(path)
        if len(names) == 1 and names[0].endswith("/"):
            folders.append(names[0].rstrip("/"))
    return paths


def package_modules() -> set[str]:
    """Every tracked (or new, not ignored) ``.py`` file of wsigym and zoo, relative to the repo root."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "wsigym", "zoo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {p for p in out if p.endswith(".py") and (ROOT / p).is_file()}


def test_tree_parser_reads_nesting_and_joined_names():
    text = "```text\na/\n  b.py   x\n  c/\n    d.py, e.py  y\n  f.py\ng/   z\n```\n"
    assert tree_paths(text) == {"a", "a/b.py", "a/c", "a/c/d.py", "a/c/e.py", "a/f.py", "g"}


def test_the_architecture_tree_lists_every_module_and_nothing_else():
    listed = {p for p in tree_paths(DOC.read_text(encoding="utf-8")) if p.endswith(".py")}
    modules = package_modules()
    missing, gone = sorted(modules - listed), sorted(listed - modules)
    assert not missing and not gone, (
        f"{DOC.relative_to(ROOT)}: add these modules to the tree: {missing}; remove these: {gone}"
    )
