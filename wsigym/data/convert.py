"""Convert any :class:`~wsigym.data.dataset.SlideDataset` into the native format (:mod:`wsigym.data.native`).

Resumable: each slide is written atomically, a slide whose file already exists and reads back (same id,
label and classes) is skipped, temp files left by a killed run are removed, and the index
(``labels.csv``, ``splits/``, ``dataset.json``) is written last, so a folder without ``dataset.json`` is
an unfinished conversion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from wsigym.data.dataset import SlideDataset
from wsigym.data.native import read_bag, slide_path, write_bag, write_dataset_index
from wsigym.errors import DataError
from wsigym.io import is_temp


@dataclass
class ConvertReport:
    """What a :func:`convert` call did: slide ids written and skipped, temp files removed."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    removed_temp: list[str] = field(default_factory=list)


def _is_complete(path: Path, slide_id: str, label: int, class_names: tuple[str, ...]) -> bool:
    if not path.is_file():
        return False
    try:
        bag = read_bag(path, hr=True)
    except (DataError, OSError):
        return False
    return bag.slide_id == slide_id and bag.label == label and bag.class_names == class_names


def convert(
    dataset: SlideDataset,
    out_root: str | Path,
    *,
    dtype: str = "float16",
    progress: bool = True,
    report: ConvertReport | None = None,
) -> Path:
    """Write ``dataset`` to ``out_root`` in the native format; return ``out_root``.

    Args:
        dataset: any slide dataset (a folder reader or ``synth-c16``).
        out_root: destination folder (created; may hold an unfinished earlier conversion).
        dtype: feature storage type, ``"float16"`` or ``"float32"``.
        progress: show a tqdm bar.
        report: when given, filled with what was written, skipped and removed.
    """
    out_root = Path(out_root)
    slides_dir = out_root / "slides"
    slides_dir.mkdir(parents=True, exist_ok=True)
    report = report if report is not None else ConvertReport()
    for p in sorted(list(slides_dir.iterdir()) + list(out_root.iterdir())):
        if p.is_file() and is_temp(p):
            p.unlink()
            report.removed_temp.append(p.name)
    class_names = tuple(dataset.class_names)
    labels: dict[str, int] = {}
    ids = dataset.slide_ids()
    for slide_id in tqdm(ids, desc=f"convert {dataset.name}", unit="slide", disable=not progress):
        label = int(dataset.label(slide_id))
        labels[slide_id] = label
        path = slide_path(out_root, slide_id)
        if _is_complete(path, slide_id, label, class_names):
            report.skipped.append(slide_id)
            continue
        bag = dataset.load(slide_id, hr=True)
        if bag.slide_id != slide_id or bag.label != label:
            raise DataError(
                f"dataset {dataset.name!r}",
                f"load({slide_id!r}) returned slide {bag.slide_id!r} label {bag.label}",
            )
        write_bag(bag, path, dtype=dtype)
        report.written.append(slide_id)
    write_dataset_index(out_root, dataset.name, class_names, labels, dataset.splits)
    return out_root
