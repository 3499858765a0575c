"""Dataset names and folder layouts, and :func:`open_dataset`, which dispatches to them.

Named datasets are built in code (``synth-c16``); folders are recognised by their layout:

===========  =====================================================  ===========================
layout       marker                                                 reader
===========  =====================================================  ===========================
``native``   ``dataset.json``                                       :class:`~.native.NativeDataset`
``clam``     ``h5_files/`` (or ``pt_files/``)                       :class:`~.clam.CLAMDataset`
``trident``  ``{mag}x_{ps}px_{ov}px_overlap/`` (or the folder is one) :class:`~.trident.TridentDataset`
``sasha``    ``lr/`` and ``hr/``                                    :class:`~.sasha.SashaDataset`
===========  =====================================================  ===========================

CLAM and TRIDENT folders need a labels CSV: pass ``labels_csv=`` (alias ``labels=``), or put a
``labels.csv`` in the folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsigym.data.dataset import SlideDataset
from wsigym.errors import DataError


def _synth_c16(**kw: Any) -> SlideDataset:
    from wsigym.data.synth import SynthC16

    return SynthC16(**kw)


def _synth_c16_tiny(**kw: Any) -> SlideDataset:
    from wsigym.data.synth import SynthC16

    return SynthC16.tiny(**kw)


def _synth_c16_incoherent(**kw: Any) -> SlideDataset:
    from wsigym.data.synth import SynthC16, SynthConfig

    return SynthC16(config=SynthConfig(coherence=0.0), name="synth-c16-incoherent", **kw)


NAMED_DATASETS: dict[str, Callable[..., SlideDataset]] = {
    "synth-c16": _synth_c16,
    "synth-c16-tiny": _synth_c16_tiny,
    "synth-c16-incoherent": _synth_c16_incoherent,
}

LAYOUTS = ("native", "clam", "trident", "sasha")
_MARKERS = (
    "dataset.json (native), h5_files/ (CLAM), {mag}x_{ps}px_{ov}px_overlap/ (TRIDENT), lr/ + hr/ (SASHA)"
)


def detect_layout(path: str | Path) -> str:
    """Name of the layout of folder ``path`` (one of :data:`LAYOUTS`).

    Raises:
        DataError: naming the folder and the layouts looked for.
    """
    from wsigym.data.trident import JOB_FOLDER, job_folders

    path = Path(path)
    if not path.is_dir():
        raise DataError(path, f"not a folder; expected one of: {_MARKERS}")
    if (path / "dataset.json").is_file():
        return "native"
    if (path / "h5_files").is_dir() or (path / "pt_files").is_dir():
        return "clam"
    if job_folders(path) or JOB_FOLDER.fullmatch(path.name):
        return "trident"
    if (path / "lr").is_dir() and (path / "hr").is_dir():
        return "sasha"
    raise DataError(path, f"matches no known dataset layout; looked for {_MARKERS}")


def _labels_kw(path: Path, kw: dict[str, Any]) -> dict[str, Any]:
    if "labels" in kw:
        kw["labels_csv"] = kw.pop("labels")
    if kw.get("labels_csv") is None:
        for cand in (path / "labels.csv", path.parent / "labels.csv"):
            if cand.is_file():
                kw["labels_csv"] = cand
                break
        else:
            raise DataError(
                path, "this layout needs a labels CSV: pass labels_csv= (or put labels.csv in the folder)"
            )
    return kw


def open_layout(path: str | Path, layout: str, **kw: Any) -> SlideDataset:
    """Open ``path`` as ``layout`` (``"native"``, ``"clam"``, ``"trident"``, ``"sasha"`` or ``"auto"``)."""
    path = Path(path)
    if layout == "auto":
        layout = detect_layout(path)
    if layout == "native":
        from wsigym.data.native import NativeDataset

        if kw:
            raise DataError(path, f"a native dataset takes no options, got {sorted(kw)}")
        return NativeDataset(path)
    if layout == "clam":
        from wsigym.data.clam import CLAMDataset

        return CLAMDataset(path, **_labels_kw(path, kw))
    if layout == "trident":
        from wsigym.data.trident import JOB_FOLDER, TridentDataset

        if JOB_FOLDER.fullmatch(path.name):  # pointed at {mag}x_... itself: the job folder is its parent
            path = path.parent
        return TridentDataset(path, **_labels_kw(path, kw))
    if layout == "sasha":
        from wsigym.data.sasha import SashaDataset

        return SashaDataset(path, **kw)
    raise DataError(path, f"unknown layout {layout!r}; expected auto or one of {LAYOUTS}")


def open_folder(path: str | Path, **kw: Any) -> SlideDataset:
    """Open a dataset folder, detecting its layout (see the module docstring)."""
    return open_layout(path, detect_layout(path), **kw)


def open_dataset(name_or_path: str | Path, **kwargs: object) -> SlideDataset:
    """Open a dataset by registered name (``"synth-c16"``) or folder path.

    A folder is recognised by its layout: the project's own format (``dataset.json``), CLAM
    (``h5_files/``), TRIDENT (``*x_*px_*px_overlap/``) or SASHA grouped files (``lr/``, ``hr/``).
    ``format`` (``"auto"`` by default, or ``"native"``, ``"clam"``, ``"trident"``, ``"sasha"``) skips
    the detection; other keyword arguments go to the dataset's constructor (e.g. ``seed``,
    ``cache_dir``, ``labels``, CLAM's ``hr_root``).

    Raises:
        DataError: when the name is unknown or the folder matches no layout.
    """
    key = str(name_or_path)
    layout = str(kwargs.pop("format", None) or "auto")
    if key in NAMED_DATASETS:
        if layout != "auto":
            raise DataError(key, f"a named dataset has no folder layout; got format={layout!r}")
        return NAMED_DATASETS[key](**kwargs)
    path = Path(key).expanduser()
    if not path.exists():
        raise DataError(
            key, f"no such dataset folder, and not a named dataset (known: {sorted(NAMED_DATASETS)})"
        )
    return open_layout(path, layout, **kwargs)
