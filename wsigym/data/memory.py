"""A dataset held in memory: bags built in code (tests, benchmarks, quick experiments) as a SlideDataset.

Random bags of known structure for tests and benchmarks: :func:`wsigym.data.random_dataset.random_dataset`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from wsigym.data.bag import SlideBag
from wsigym.data.dataset import SlideDataset
from wsigym.data.splits import check_splits
from wsigym.errors import DataError


class MemoryDataset(SlideDataset):
    """The :class:`~wsigym.data.bag.SlideBag` s given, in their order, with the given splits.

    Args:
        name: the dataset's name (logs, tables, error messages).
        bags: the slides; each is validated, and slide ids must be unique.
        splits: ``splits[fold][split]`` slide ids (checked: known ids, each once per fold); None puts
            every slide in one fold's ``train`` split.
        class_names: default: the first bag's.

    ``load(slide_id, hr=False)`` returns the bag without its high-res fields (``hr_features``,
    ``hr_mask``, ``hr_coords``, ``hr_tumour_fraction``), as a reader that skips them would.
    """

    def __init__(
        self,
        name: str,
        bags: Iterable[SlideBag],
        splits: Sequence[Mapping[str, Sequence[str]]] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        source = f"dataset {name!r}"
        self._bags: dict[str, SlideBag] = {}
        for bag in bags:
            if bag.slide_id in self._bags:
                raise DataError(source, f"slide id {bag.slide_id!r} is given twice")
            self._bags[bag.slide_id] = bag.validate(f"{source}, slide {bag.slide_id!r}")
        if not self._bags:
            raise DataError(source, "no bags given")
        first = next(iter(self._bags.values()))
        self.class_names = tuple(class_names) if class_names is not None else tuple(first.class_names)
        if splits is None:
            splits = [{"train": list(self._bags), "val": [], "test": []}]
        self.splits = check_splits(splits, self._bags, source)

    def slide_ids(self) -> list[str]:
        return list(self._bags)

    def _bag(self, slide_id: str) -> SlideBag:
        if slide_id not in self._bags:
            raise DataError(f"dataset {self.name!r}", f"no slide {slide_id!r}")
        return self._bags[slide_id]

    def label(self, slide_id: str) -> int:
        return self._bag(slide_id).label

    def load(self, slide_id: str, hr: bool = True) -> SlideBag:
        bag = self._bag(slide_id)
        if hr:
            return bag
        return dataclasses.replace(
            bag, hr_features=None, hr_mask=None, hr_coords=None, hr_tumour_fraction=None
        )
