"""Datasets: a set of slides, their labels, and train/val/test splits over several folds.

Every dataset, whatever its files, answers the same questions: which classes, which slides in which
split of which fold, and the :class:`~wsigym.data.bag.SlideBag` of one slide.
:func:`wsigym.data.formats.open_dataset` turns a name (``"synth-c16"``) or a folder into one.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator

from wsigym.data.bag import SlideBag
from wsigym.errors import DataError

SPLITS = ("train", "val", "test")


class SlideDataset(abc.ABC):
    """Abstract dataset of slide bags.

    Attributes:
        name: short name used in logs, cards and result tables.
        class_names: class names; a bag's ``label`` indexes them.
        splits: ``splits[fold][split]`` is the list of slide ids of ``split`` in ``fold``.
    """

    name: str
    class_names: tuple[str, ...]
    splits: list[dict[str, list[str]]]

    @abc.abstractmethod
    def slide_ids(self) -> list[str]:
        """All slide ids, in a stable order."""

    @abc.abstractmethod
    def label(self, slide_id: str) -> int:
        """Class index of one slide (cheap: does not read features)."""

    @abc.abstractmethod
    def load(self, slide_id: str, hr: bool = True) -> SlideBag:
        """Read one slide. ``hr=False`` may skip the high-res features (faster, less memory)."""

    def content_digest(self, slide_id: str) -> str | None:
        """A digest (hex string) that changes whenever :meth:`load` of ``slide_id`` could return other
        arrays, for disk caches of data derived from the slide (:mod:`wsigym.envs.precompute_cache`);
        None (this default) when unknown, so nothing derived from the slide is cached on disk."""
        return None

    @property
    def num_folds(self) -> int:
        return len(self.splits)

    def split(self, split: str, fold: int = 0) -> list[str]:
        """Slide ids of ``split`` (``train``/``val``/``test``) in ``fold``.

        Raises:
            DataError: for an unknown split name or fold index.
        """
        if split not in SPLITS:
            raise DataError(f"dataset {self.name!r}", f"split must be one of {SPLITS}, got {split!r}")
        if not (0 <= fold < len(self.splits)):
            raise DataError(f"dataset {self.name!r}", f"fold must be in [0, {len(self.splits)}), got {fold}")
        return list(self.splits[fold].get(split, []))

    def bags(self, split: str, fold: int = 0, hr: bool = True) -> Iterator[SlideBag]:
        """Iterate over the bags of one split, in split order."""
        for slide_id in self.split(split, fold):
            yield self.load(slide_id, hr=hr)

    def __len__(self) -> int:
        return len(self.slide_ids())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, slides={len(self)}, classes={list(self.class_names)})"
        )
