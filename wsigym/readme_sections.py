"""Generated sections of a README: the text between ``<!-- results:KEY -->`` and ``<!-- /results:KEY -->``.

Results tables are written by the commands that measure them (``wsigym evaluate --readme``,
``zoo results --readme``), never typed by hand; everything outside the markers is left untouched and
the file is replaced atomically.
"""

from __future__ import annotations

import re
from pathlib import Path

from wsigym.io import atomic_write_text


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
