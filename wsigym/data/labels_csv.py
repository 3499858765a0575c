"""Labels CSVs of dataset folders: ``slide_id,label`` with the label given as a class NAME.

:func:`read_labels_csv` also reads CLAM's ``case_id,slide_id,label`` and TRIDENT's ``wsi`` column (whose
file extension is dropped, :func:`slide_stem`); :func:`write_labels_csv` writes the native form.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from wsigym.errors import DataError
from wsigym.io import atomic_write_text

#: File extensions :func:`slide_stem` drops (TRIDENT's ``wsi`` column names slide files).
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".czi", ".h5")


def read_utf8_text(path: str | Path, what: str) -> str:
    """The text of ``path`` decoded as UTF-8 (a byte-order mark is dropped).

    Raises:
        DataError: naming the file when it cannot be read or is not UTF-8 (with the offending byte).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read {what} ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            path,
            f"{what} must be UTF-8 text; byte 0x{data[e.start]:02x} at offset {e.start} is not "
            "(re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8)",
        ) from None


def check_slide_id(slide_id: str, source: str | Path) -> str:
    """Return ``slide_id`` if it can be a file name (no path separators, no leading dot)."""
    if not slide_id or "/" in slide_id or "\\" in slide_id or slide_id.startswith(".") or "\x00" in slide_id:
        raise DataError(source, f"slide id {slide_id!r} cannot be used as a file name")
    return slide_id


def slide_stem(name: str) -> str:
    """``"tumor_001.tif"`` -> ``"tumor_001"``; names without a known slide extension are kept."""
    for ext in SLIDE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def read_labels_csv(
    path: str | Path, class_names: Sequence[str] | None = None
) -> tuple[dict[str, int], tuple[str, ...]]:
    """Read a labels CSV into ``({slide_id: class index}, class_names)``.

    The id column is ``slide_id`` or, failing that, TRIDENT's ``wsi`` (file name; the extension is
    dropped). The ``label`` column holds class names. Without ``class_names`` the classes are the
    sorted distinct labels.

    Raises:
        DataError: missing file or column, empty file, duplicate slide with two labels, or a label
            that is not one of ``class_names``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "labels CSV not found (expected columns slide_id,label or wsi,label)")
    text = read_utf8_text(path, "a labels CSV")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fields = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except csv.Error as e:
        raise DataError(path, f"not a readable CSV file (line {reader.line_num}: {e})") from None
    id_col = "slide_id" if "slide_id" in fields else "wsi" if "wsi" in fields else None
    if id_col is None or "label" not in fields:
        raise DataError(path, f"expected columns 'slide_id' (or 'wsi') and 'label', found {fields}")
    if not rows:
        raise DataError(path, "labels CSV has no rows")
    names: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        sid = row[id_col]
        if id_col == "wsi":
            sid = slide_stem(sid)
        label = row["label"]
        if not sid or not label:
            raise DataError(path, f"line {line}: empty {id_col!r} or 'label'")
        check_slide_id(sid, f"{path} line {line}")
        if sid in names and names[sid] != label:
            raise DataError(path, f"line {line}: slide {sid!r} has two labels ({names[sid]!r}, {label!r})")
        names[sid] = label
    classes = tuple(class_names) if class_names is not None else tuple(sorted(set(names.values())))
    index = {c: i for i, c in enumerate(classes)}
    labels: dict[str, int] = {}
    for sid, label in names.items():
        if label not in index:
            raise DataError(
                path, f"label {label!r} of slide {sid!r} is not one of the classes {list(classes)}"
            )
        labels[sid] = index[label]
    return labels, classes


def write_labels_csv(path: str | Path, labels: Mapping[str, int], class_names: Sequence[str]) -> Path:
    """Write ``slide_id,label`` (class names), sorted by slide id, atomically."""
    lines = ["slide_id,label"]
    for sid in sorted(labels):
        lines.append(f"{sid},{class_names[labels[sid]]}")
    return atomic_write_text(path, "\n".join(lines) + "\n")
