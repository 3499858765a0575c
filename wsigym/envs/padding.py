"""One padding size per dataset: the largest slide over every split and fold.

The observation of ``WSIZoom`` pads every slide to ``P`` patches. With ``P`` the largest slide of the
*dataset* (not of one split), environments on the train, val and test splits of any fold share one
observation and action space, so a policy trained on one split predicts on the others
(``max_patches`` is also written into the environment's ``spec.kwargs`` so ``gym.make(env.spec)``
rebuilds the same spaces).

A dataset may answer cheaply with a ``patch_counts() -> {slide_id: N}`` method; otherwise every slide
is read once without its high-res features. Results are cached per process.

**A cap for small-memory agents.** The observation grows with ``P`` (``P * (d + 5) + 1`` floats), and
``max_patches`` smaller than a slide of the split is refused. :func:`cap_patches` gives the dataset
without its slides of more than ``K`` patches, left out of every split and fold (no truncation: a
slide is never cut, since which patches to drop would change the task). The env then pads to at most
``K`` (``gym.make("WSIZoom-v0", dataset=cap_patches("synth-c16", K), max_patches=K)`` pads to exactly
``K``, the same on every split). The capped dataset lists what it left out in ``skipped``
(``{slide_id: N}``); loading one of those slides raises a :class:`~wsigym.errors.DataError` naming its
``N`` and the cap, and ``reset(options={"slide_id": ...})`` on one raises ``ValueError`` (not in the split).
Results on a capped dataset are results on fewer slides: say so when reporting them.
"""

from __future__ import annotations

import weakref

from wsigym.data.bag import SlideBag
from wsigym.data.dataset import SlideDataset
from wsigym.data.formats import open_dataset
from wsigym.errors import DataError

_BY_FOLDER: dict[tuple[str, str, str], int] = {}
_BY_OBJECT: weakref.WeakKeyDictionary[SlideDataset, int] = weakref.WeakKeyDictionary()


def dataset_patch_counts(dataset: SlideDataset) -> dict[str, int]:
    """``{slide_id: N}`` for every slide of every split and fold of ``dataset``."""
    counts = getattr(dataset, "patch_counts", None)
    if callable(counts):
        return {str(k): int(v) for k, v in counts().items()}
    ids: list[str] = []
    seen: set[str] = set()
    for fold in dataset.splits:
        for split_ids in fold.values():
            for sid in split_ids:
                if sid not in seen:
                    seen.add(sid)
                    ids.append(sid)
    return {sid: int(dataset.load(sid, hr=False).n) for sid in ids}


def dataset_max_patches(dataset: SlideDataset) -> int:
    """The largest patch count ``N`` over every split and fold of ``dataset`` (cached per process).

    Raises:
        DataError: when the dataset's splits name no slide.
    """
    root = getattr(dataset, "root", None) or getattr(dataset, "cache_dir", None)
    key = (type(dataset).__name__, dataset.name, str(root)) if root is not None else None
    cached = _BY_FOLDER.get(key) if key is not None else _BY_OBJECT.get(dataset)
    if cached is not None:
        return cached
    counts = dataset_patch_counts(dataset)
    if not counts:
        raise DataError(f"dataset {dataset.name!r}", "its splits name no slide")
    value = max(counts.values())
    if key is not None:
        _BY_FOLDER[key] = value
    else:
        _BY_OBJECT[dataset] = value
    return value


class CappedDataset(SlideDataset):
    """``base`` without its slides of more than ``max_patches`` patches (module docstring, A cap).

    Attributes:
        skipped: ``{slide_id: N}`` of the slides left out.
    """

    def __init__(self, base: SlideDataset, max_patches: int) -> None:
        if isinstance(max_patches, bool) or not isinstance(max_patches, int) or max_patches < 1:
            raise ValueError(f"max_patches must be an integer >= 1, got {max_patches!r}")
        counts = dataset_patch_counts(base)
        self.base, self.max_patches = base, max_patches
        self.skipped = {sid: n for sid, n in counts.items() if n > max_patches}
        self._counts = {sid: n for sid, n in counts.items() if n <= max_patches}
        if not self._counts:
            raise DataError(
                f"dataset {base.name!r}",
                f"no slide has at most max_patches={max_patches} patches "
                f"(the smallest has {min(counts.values())})",
            )
        self.name = f"{base.name}-max{max_patches}"
        self.class_names = tuple(base.class_names)
        self.splits = [
            {split: [s for s in ids if s not in self.skipped] for split, ids in fold.items()}
            for fold in base.splits
        ]

    def slide_ids(self) -> list[str]:
        return [s for s in self.base.slide_ids() if s not in self.skipped]

    def label(self, slide_id: str) -> int:
        return self.base.label(slide_id)

    def load(self, slide_id: str, hr: bool = True) -> SlideBag:
        """The base dataset's bag.

        Raises:
            DataError: for a slide left out by the cap.
        """
        if slide_id in self.skipped:
            raise DataError(
                f"dataset {self.name!r}",
                f"slide {slide_id!r} has {self.skipped[slide_id]} patches, more than the cap "
                f"max_patches={self.max_patches}; it is left out of every split",
            )
        return self.base.load(slide_id, hr=hr)

    def content_digest(self, slide_id: str) -> str | None:
        return self.base.content_digest(slide_id)

    def patch_counts(self) -> dict[str, int]:
        """``{slide_id: N}`` of the slides kept."""
        return dict(self._counts)


def cap_patches(dataset: str | SlideDataset, max_patches: int) -> CappedDataset:
    """The dataset (a name, folder or :class:`SlideDataset`) without its slides of more than
    ``max_patches`` patches (module docstring, A cap)."""
    base = dataset if isinstance(dataset, SlideDataset) else open_dataset(dataset)
    return CappedDataset(base, max_patches)
