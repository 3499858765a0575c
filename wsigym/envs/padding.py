"""One padding size per dataset: the largest slide over every split and fold.

The observation of ``WSIZoom`` pads every slide to ``P`` patches. With ``P`` the largest slide of the
*dataset* (not of one split), environments on the train, val and test splits of any fold share one
observation and action space, so a policy trained on one split predicts on the others
(``max_patches`` is also written into the environment's ``spec.kwargs`` so ``gym.make(env.spec)``
rebuilds the same spaces).

A dataset may answer cheaply with a ``patch_counts() -> {slide_id: N}`` method; otherwise every slide
is read once without its high-res features. Results are cached per process.
"""

from __future__ import annotations

import weakref

from wsigym.data.dataset import SlideDataset
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
