"""Dataset folders: :class:`FolderDataset`, the :class:`~wsigym.data.dataset.SlideDataset` base of the folder
readers (native, CLAM, TRIDENT, SASHA), whose labels and splits are known up front.

The pieces the readers share have a module each: labels CSVs (:mod:`wsigym.data.labels_csv`), splits
(:mod:`wsigym.data.splits`) and HDF5 reading (:mod:`wsigym.data.h5`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from wsigym.data.content_digest import options_digest, sha256_hex, tree_digest
from wsigym.data.dataset import SlideDataset
from wsigym.data.splits import check_splits
from wsigym.errors import DataError


class FolderDataset(SlideDataset):
    """A dataset whose labels and splits are known up front; subclasses implement :meth:`load`.

    Attributes:
        root: the dataset folder.
        labels: ``{slide_id: class index}``.
    """

    def __init__(
        self,
        root: str | Path,
        name: str,
        class_names: Sequence[str],
        labels: Mapping[str, int],
        splits: Sequence[Mapping[str, Sequence[str]]],
        splits_source: str | Path,
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.class_names = tuple(class_names)
        self.labels = dict(labels)
        self.splits = check_splits(splits, self.labels, splits_source)

    def slide_ids(self) -> list[str]:
        return sorted(self.labels)

    def label(self, slide_id: str) -> int:
        if slide_id not in self.labels:
            raise DataError(self.root, f"unknown slide id {slide_id!r}")
        return self.labels[slide_id]

    def content_digest(self, slide_id: str) -> str | None:
        """Digest of every file under the dataset folder and the other folders among the reader's
        options (e.g. CLAM's ``hr_root``), of those options and of ``slide_id``
        (:func:`~wsigym.data.content_digest.tree_digest`; computed once per instance, file hashes
        memoised across processes). None when an option is not plain data."""
        if not hasattr(self, "_folder_digest"):
            options = options_digest(self)
            if options is None:
                self._folder_digest = None
            else:
                key, paths = options
                found = {p.resolve() for p in (self.root, *paths) if p.exists()}
                roots = [p for p in found if not any(q != p and p.is_relative_to(q) for q in found)]
                self._folder_digest = sha256_hex(key, tree_digest(roots))
        if self._folder_digest is None:
            return None
        self.label(slide_id)  # unknown ids raise
        return sha256_hex(self._folder_digest, slide_id)
