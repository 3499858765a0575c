"""Errors that name the offending file, key or argument."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data: says which file (or key) and what was expected.

    Example: ``DataError("feats/slide_1.h5", "dataset 'features' is missing")``
    renders as ``feats/slide_1.h5: dataset 'features' is missing``.
    """

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")
