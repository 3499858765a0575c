"""Errors that name the offending file, key or argument."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data: says which file (or key) and what was expected.

    Example: ``DataError("feats/slide_1.h5", "dataset 'features' is missing")``
    renders as ``feats/slide_1.h5: dataset 'features' is missing``.
    """

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")

    def __reduce__(self) -> tuple[Any, tuple[type[DataError], str, str]]:
        # rebuilt from (source, problem), so the error crosses processes (Ray tasks, multiprocessing),
        # also for subclasses whose own __init__ words the problem
        return _rebuild_data_error, (type(self), self.source, self.problem)


def _rebuild_data_error(cls: type[DataError], source: str, problem: str) -> DataError:
    error = Exception.__new__(cls)
    DataError.__init__(error, source, problem)
    return error
