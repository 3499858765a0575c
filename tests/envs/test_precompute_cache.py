"""The disk cache of per-slide precomputation (V, the evidence table) and safe concurrent cache builds."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file

import wsigym.envs.zoom_batch as zoom_batch_module
from wsigym.cachedir import CacheError, build_lock, publish_file
from wsigym.data import content_digest
from wsigym.data.native import NativeDataset, slide_path, write_bag, write_dataset_index
from wsigym.data.synth import SynthC16
from wsigym.envs.precompute_cache import RECORD, SlideRecordCache, module_digest, precompute_root
from wsigym.envs.slide_source import SlideSource
from wsigym.envs.zoom_batch import ZoomBatch, ZoomConfig

WORKER = Path(__file__).with_name("cache_worker.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("WSIGYM_CACHE", str(root))
    return root


@pytest.fixture()
def native(tmp_path, tiny_dataset) -> Path:
    """The tiny env dataset written as a native folder (float32, so V is that of the in-memory bags)."""
    root = tmp_path / "native"
    labels = {}
    for sid in tiny_dataset.slide_ids():
        bag = tiny_dataset.load(sid)
        write_bag(bag, slide_path(root, sid), dtype="float32")
        labels[sid] = bag.label
    return write_dataset_index(root, "tiny", ("normal", "tumour"), labels, tiny_dataset.splits)


class Counting:
    """Counts the calls of HAFED's level-1 ``aggregate`` (instance attribute shadowing the method)."""

    def __init__(self, hafed: torch.nn.Module) -> None:
        self.calls, self.inner = 0, hafed.aggregate
        hafed.aggregate = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def record_files(root: Path) -> list[Path]:
    return sorted((root / "precompute").glob("slides-*/*.safetensors"))


def temps(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name.endswith(".tmp")]


def test_cached_v_is_exactly_the_fresh_v(cache, native, models, monkeypatch):
    hafed = copy.deepcopy(models[0])
    ds = NativeDataset(native)
    fresh = SlideSource(ds, "train", 0, hafed, progress=False, disk_cache=False)
    assert fresh.content_key is None and not cache.exists()
    counter = Counting(hafed)
    first = SlideSource(ds, "train", 0, hafed, progress=False)
    assert counter.calls == len(first) and len(record_files(cache)) == len(first)
    loads, load = [], NativeDataset.load
    monkeypatch.setattr(NativeDataset, "load", lambda *a, **k: loads.append(a) or load(*a, **k))
    second = SlideSource(NativeDataset(native), "train", 0, hafed, progress=False)  # as a new process
    assert counter.calls == len(first) and loads == []  # read back: no slide read, no V recomputed
    assert second.content_key == first.content_key is not None
    for src in (first, second):
        assert torch.equal(src.v, fresh.v) and torch.equal(src.z, fresh.z)
        assert torch.equal(src.coords, fresh.coords) and torch.equal(src.labels, fresh.labels)
    # another split reuses nothing it does not share, and only computes its own slides
    monkeypatch.setattr(NativeDataset, "load", load)
    SlideSource(ds, "val", 0, hafed, progress=False)
    assert counter.calls == len(first) + len(ds.split("val", 0))
    for f in record_files(cache):
        assert f.stat().st_mode & 0o777 == 0o644 & ~_umask()
    assert not temps(cache)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_corrupt_cached_file_is_rebuilt(cache, native, models):
    hafed = copy.deepcopy(models[0])
    ds = NativeDataset(native)
    fresh = SlideSource(ds, "train", 0, hafed, progress=False, disk_cache=False)
    SlideSource(ds, "train", 0, hafed, progress=False)
    victim = record_files(cache)[0]
    victim.write_bytes(victim.read_bytes()[:100])
    counter = Counting(hafed)
    again = SlideSource(ds, "train", 0, hafed, progress=False)
    assert counter.calls == 1 and torch.equal(again.v, fresh.v)


def _batch(source: SlideSource, hafed: torch.nn.Module) -> ZoomBatch:
    config = ZoomConfig(
        budget=0.2,
        tau=0.9,
        update="none",
        reward="evidence",
        max_patches=source.max_n,
        mask_updated=False,
        absolute_cosine=False,
        budget_end="terminate",
    )
    return ZoomBatch(source, hafed, None, config, num_envs=1)


def test_evidence_table_cached_equals_fresh(cache, native, models, monkeypatch):
    hafed = copy.deepcopy(models[0])
    ds = NativeDataset(native)
    fresh = _batch(SlideSource(ds, "train", 0, hafed, progress=False, disk_cache=False), hafed).evidence
    calls = []
    inner = zoom_batch_module.patch_evidence
    monkeypatch.setattr(
        zoom_batch_module, "patch_evidence", lambda *a, **k: calls.append(1) or inner(*a, **k)
    )
    source = SlideSource(ds, "train", 0, hafed, progress=False)
    built = _batch(source, hafed).evidence
    again = _batch(SlideSource(NativeDataset(native), "train", 0, hafed, progress=False), hafed).evidence
    assert len(calls) == 1  # the second batch read the table
    assert torch.equal(built, fresh) and torch.equal(again, fresh)
    assert len(list((cache / "precompute" / "evidence").glob("*.safetensors"))) == 1
    # another HAFED classifying the same V: another table
    other = copy.deepcopy(hafed)
    with torch.no_grad():
        dict(other.named_parameters())["classifier.weight"].mul_(1.5)
    changed = _batch(source, other).evidence
    assert len(calls) == 2 and not torch.equal(changed, fresh)


def test_new_hafed_weights_invalidate_v(cache, native, models):
    hafed = copy.deepcopy(models[0])
    ds = NativeDataset(native)
    old = SlideSource(ds, "train", 0, hafed, progress=False)
    other = copy.deepcopy(hafed)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.1)
    assert module_digest(other) != module_digest(hafed)
    counter = Counting(other)
    new = SlideSource(ds, "train", 0, other, progress=False)
    assert counter.calls == len(new)  # recomputed, not read from the old weights' files
    fresh = SlideSource(ds, "train", 0, other, progress=False, disk_cache=False)
    assert torch.equal(new.v, fresh.v) and not torch.equal(new.v, old.v)
    assert new.content_key != old.content_key
    assert SlideRecordCache(other, "cpu").folder != SlideRecordCache(hafed, "cpu").folder


def test_changed_data_invalidates_v_and_warm_digest_reads_no_file(cache, native, models, monkeypatch):
    hafed = copy.deepcopy(models[0])
    old = SlideSource(NativeDataset(native), "train", 0, hafed, progress=False)
    hashed = []
    inner = content_digest.file_sha256
    monkeypatch.setattr(content_digest, "file_sha256", lambda p: hashed.append(p) or inner(p))
    SlideSource(NativeDataset(native), "train", 0, hafed, progress=False)
    assert hashed == []  # warm: the file hashes come from the memo (path, size, mtime, inode)
    ds = NativeDataset(native)
    sid = ds.split("train", 0)[0]
    bag = ds.load(sid)
    bag.hr_features = bag.hr_features * 2.0
    write_bag(bag, slide_path(native, sid), dtype="float32")
    counter = Counting(hafed)
    new = SlideSource(NativeDataset(native), "train", 0, hafed, progress=False)
    assert [Path(p).name for p in hashed] == [f"{sid}.h5"]  # only the rewritten file is hashed again
    assert counter.calls == len(new) and new.content_key != old.content_key
    fresh = SlideSource(NativeDataset(native), "train", 0, hafed, progress=False, disk_cache=False)
    assert torch.equal(new.v, fresh.v) and not torch.equal(new.v[: new.n_list[0]], old.v[: old.n_list[0]])


def test_synth_digest_follows_the_content(tmp_path, cache):
    a = SynthC16.tiny(seed=0, cache_dir=tmp_path / "a", progress=False)
    b = SynthC16.tiny(seed=0, cache_dir=tmp_path / "b", progress=False)  # same content, other folder
    c = SynthC16.tiny(seed=1, cache_dir=tmp_path / "c", progress=False)
    ids = a.slide_ids()
    assert [a.content_digest(s) for s in ids] == [b.content_digest(s) for s in ids]
    assert len({a.content_digest(s) for s in ids}) == len(ids)
    assert a.content_digest(ids[0]) != c.content_digest(ids[0])


def _run_worker(mode: str, cache: Path, dataset_dir: Path, *extra: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, str(WORKER), mode, str(cache), str(dataset_dir), *map(str, extra)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _check_visible_files(cache: Path, dataset_dir: Path) -> int:
    """Read every published file a reader can see now; returns how many were read."""
    seen = 0
    for f in record_files(cache):
        if f.exists():
            assert set(load_file(str(f))) == set(RECORD)  # complete: safetensors checks sizes
            seen += 1
    manifest = dataset_dir / "manifest.json"
    if manifest.exists():
        for s in json.loads(manifest.read_text())["slides"]:
            assert zlib.crc32((dataset_dir / s["file"]).read_bytes()) == s["crc32"]
            seen += 1
    return seen


def test_two_processes_build_the_same_caches_at_once(tmp_path, cache):
    """Two processes open synth-c16-tiny and build V of its test split at the same moment, while this
    process reads every file it can see: both succeed, each cache is built once, no reader sees a
    broken file, and no temp file is left."""
    dataset_dir = cache / "synth-tiny"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    go = tmp_path / "go"
    procs = [_run_worker("build", cache, dataset_dir, ready[i], go) for i in range(2)]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "workers did not start"
        time.sleep(0.02)
    go.write_text("go")
    seen = 0
    while any(p.poll() is None for p in procs):
        seen += _check_visible_files(cache, dataset_dir)
        time.sleep(0.01)
    outs = []
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(o["synth_builds"] for o in outs) == 1
    ds = SynthC16.tiny(cache_dir=dataset_dir, progress=False)
    n_test = len(ds.split("test", 0))
    assert sum(o["v_computed"] for o in outs) == n_test and len(record_files(cache)) == n_test
    assert outs[0]["v_sha256"] == outs[1]["v_sha256"]
    assert seen > 0 and not temps(cache)


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited before {what}: {proc.communicate()[1]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_kill_9_mid_build_then_rerun(tmp_path, cache, models):
    """A builder killed with SIGKILL inside the synth-c16 build, or inside publishing a V file, leaves a
    temp folder or file and its lock; the next build succeeds (the kernel dropped the lock), cleans
    the temps and gives the fresh result."""
    synth_dir, v_dir = cache / "synth-killed", cache / "synth-for-v"
    ds_v = SynthC16.tiny(cache_dir=v_dir, progress=False)
    procs = {
        "synth": _run_worker("hang-synth", cache, synth_dir),
        "v": _run_worker("hang-v", cache, v_dir),
    }
    try:
        _wait_for(
            lambda: any(p.is_dir() and any(p.rglob("*.npz")) for p in temps(cache)),
            procs["synth"],
            "the synth temp folder",
        )
        _wait_for(
            lambda: any(p.suffix == ".tmp" and p.parent.name.startswith("slides-") for p in temps(cache)),
            procs["v"],
            "a V temp file",
        )
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.communicate()
    assert len(temps(cache)) >= 2 and not (synth_dir / "manifest.json").exists()
    built = SynthC16.tiny(cache_dir=synth_dir, progress=False)
    assert built.manifest["slides"] and not [p for p in temps(cache) if p.is_dir()]
    torch.manual_seed(0)
    import zoo

    hafed = zoo.create_model("hafed", in_dim=384).eval()  # the workers' HAFED
    source = SlideSource(ds_v, "test", 0, hafed, progress=False)
    fresh = SlideSource(ds_v, "test", 0, hafed, progress=False, disk_cache=False)
    assert torch.equal(source.v, fresh.v) and not temps(cache)


def test_unwritable_cache_gives_one_clear_error(tmp_path, monkeypatch, native, models):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("WSIGYM_CACHE", str(blocker / "cache"))
    with pytest.raises(CacheError, match=r"not-a-folder.*set WSIGYM_CACHE to a writable folder"):
        SlideSource(NativeDataset(native), "train", 0, models[0], progress=False)
    with pytest.raises(CacheError, match="WSIGYM_CACHE"):
        SynthC16.tiny(progress=False)


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root ignores folder permissions (the test above runs for root)"
)
def test_read_only_cache_is_read_and_never_built(tmp_path, monkeypatch, native, models):
    """A complete cache in a read-only folder is read; a missing entry gives one CacheError naming the
    folder and WSIGYM_CACHE."""
    root = tmp_path / "ro"
    monkeypatch.setenv("WSIGYM_CACHE", str(root))
    built = SlideSource(NativeDataset(native), "train", 0, models[0], progress=False)
    for p in [*sorted(root.rglob("*"), reverse=True), root]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        again = SlideSource(NativeDataset(native), "train", 0, models[0], progress=False)
        assert torch.equal(again.v, built.v)
        with pytest.raises(CacheError, match=r"ro.*not writable.*set WSIGYM_CACHE to a writable folder"):
            SlideSource(NativeDataset(native), "val", 0, models[0], progress=False)
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_publish_file_removes_its_temp_on_error(tmp_path):
    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        publish_file(tmp_path / "x.bin", fail)
    assert list(tmp_path.iterdir()) == []


def test_build_lock_excludes_other_processes(tmp_path):
    """While this process holds the lock, another process cannot take it (it is an OS lock)."""
    target = tmp_path / "thing"
    code = (
        "import sys, filelock; from wsigym.cachedir import lock_path; "
        "l = filelock.FileLock(str(lock_path(sys.argv[1]))); "
        "print(l.acquire(timeout=0.2) and 'took')"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with build_lock(target):
        held = subprocess.run(
            [sys.executable, "-c", code, str(target)], env=env, capture_output=True, text=True
        )
    free = subprocess.run([sys.executable, "-c", code, str(target)], env=env, capture_output=True, text=True)
    assert "Timeout" in held.stderr and free.stdout.strip() == "took"


def test_precompute_root_follows_the_env(cache):
    assert precompute_root() == cache / "precompute"


def test_in_memory_dataset_is_not_cached_on_disk(cache, tiny_dataset, models):
    source = SlideSource(tiny_dataset, "train", 0, models[0], progress=False)
    assert source.content_key is None and not (cache / "precompute").exists()


def test_options_digest_tells_reader_options_apart():
    class Reader:
        pass

    a, b = Reader(), Reader()
    a.root = b.root = Path("data")
    a.encoder, b.encoder = "uni", "conch"
    (da, paths), (db, _) = content_digest.options_digest(a), content_digest.options_digest(b)
    assert da != db and paths == [Path("data")]
    b.encoder = "uni"
    assert content_digest.options_digest(b)[0] == da
    b.handle = object()  # not plain data: no digest, so nothing is cached
    assert content_digest.options_digest(b) is None
