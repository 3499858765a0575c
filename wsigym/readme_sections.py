"""Generated sections of a README: the text between ``<!-- results:KEY -->`` and ``<!-- /results:KEY -->``.

Results tables are written by the commands that measure them (``wsigym evaluate --readme``,
``zoo results --readme``), never typed by hand; everything outside the markers is left untouched and
the file is replaced atomically.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temp file next to ``path``, then rename it over ``path``.

    The file keeps its permissions (a new one gets ``0o644`` less the umask, not ``mkstemp``'s 0o600).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        mode = path.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o644 & ~umask
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_section(readme: str | Path, key: str, text: str) -> None:
    """Replace what lies between ``<!-- results:KEY -->`` and ``<!-- /results:KEY -->`` in ``readme``.

    Raises:
        ValueError: naming the file, when the markers are missing.
    """
    path = Path(readme)
    content = path.read_text()
    start, end = f"<!-- results:{key} -->", f"<!-- /results:{key} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(content):
        raise ValueError(f"{path}: markers {start} ... {end} not found")
    atomic_write_text(path, pattern.sub(lambda _: f"{start}\n{text.strip()}\n{end}", content, count=1))
