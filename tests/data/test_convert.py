"""convert(): any dataset -> native format, atomic per slide, resumable, index written last."""

from __future__ import annotations

import numpy as np
import pytest

from wsigym.data.convert import ConvertReport, convert
from wsigym.data.native import NativeDataset, slide_path
from wsigym.data.trident import TridentDataset


@pytest.fixture
def source(tmp_path, layouts, bags):
    job = layouts.write_trident(tmp_path / "job", bags)
    return TridentDataset(job, layouts.write_labels(tmp_path / "labels.csv", bags), n_folds=3)


def test_convert_round_trip(tmp_path, source):
    out = convert(source, tmp_path / "native", dtype="float32", progress=False)
    ds = NativeDataset(out)
    assert ds.name == source.name and ds.class_names == source.class_names and ds.splits == source.splits
    for sid in source.slide_ids():
        a, b = source.load(sid), ds.load(sid)
        for key in ("features", "coords", "hr_features", "hr_mask", "hr_coords"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
        assert a.meta == b.meta


class _Killed(RuntimeError):
    pass


class _DiesAt:
    """Wraps a dataset; load() of one slide raises, like a run killed mid-way."""

    def __init__(self, ds, slide_id):
        self.ds, self.slide_id = ds, slide_id

    def __getattr__(self, name):
        return getattr(self.ds, name)

    def load(self, slide_id, hr=True):
        if slide_id == self.slide_id:
            raise _Killed(slide_id)
        return self.ds.load(slide_id, hr)


def test_resumes_after_kill_deleted_slide_and_stale_temp(tmp_path, source):
    out = tmp_path / "native"
    with pytest.raises(_Killed):
        convert(_DiesAt(source, "slide_03"), out, progress=False)
    assert not (out / "dataset.json").exists()  # index is written last
    assert sorted(p.name for p in (out / "slides").iterdir()) == ["slide_00.h5", "slide_01.h5", "slide_02.h5"]

    convert(source, out, progress=False)
    inode = {sid: slide_path(out, sid).stat().st_ino for sid in source.slide_ids()}
    slide_path(out, "slide_04").unlink()  # deleted slide
    slide_path(out, "slide_01").write_bytes(b"\x89HDF\r\n truncated")  # torn file from another tool
    stale = out / "slides" / ".slide_05.h5.abc123.tmp"  # temp file of a killed write
    stale.write_bytes(b"partial")

    report = ConvertReport()
    convert(source, out, progress=False, report=report)
    assert sorted(report.written) == ["slide_01", "slide_04"]
    assert sorted(report.skipped) == ["slide_00", "slide_02", "slide_03", "slide_05"]
    assert report.removed_temp == [stale.name] and not stale.exists()
    for sid in report.skipped:
        assert slide_path(out, sid).stat().st_ino == inode[sid]  # untouched
    ds = NativeDataset(out)
    assert len(ds) == 6 and ds.load("slide_01").n == source.load("slide_01").n
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
