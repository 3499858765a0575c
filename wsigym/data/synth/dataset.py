"""``SynthC16``: the embedded benchmark - real CAMELYON16 tumour geometry, simulated tissue and features.

Built on first use into a cache folder (default ``$WSIGYM_CACHE/synth-c16-<confighash>-seed<seed>``,
else ``~/.cache/wsigym/...``) that holds each slide's compact latents (:class:`SlideLayout`:
patch grid, child tissue mask, tumour counts, phenotype and mimic maps) and a ``manifest.json`` with
CRC32 checksums. The features ``Z``, ``U`` and the VLM view are regenerated exactly on every
:meth:`SynthC16.load` from the slide's own seed (:mod:`wsigym.data.synth.generator`), so the cache stays
small and ``load(id, hr=False)`` never draws ``U``. The folder is written to a temporary sibling and
renamed into place; a cache whose manifest, config or checksums do not match is rebuilt. Builders take
the folder's lock (:func:`wsigym.cachedir.build_lock`), so processes that open a missing cache at once
build it once (the others wait and reuse it), and a build removes the temp folders of killed builders.

Splits: ``n_train`` train slides (``n_train_tumour`` positive) and ``n_test`` test slides
(``n_test_tumour`` positive). Positive train slides take their tumour geometry from one group of the
real tumour source slides, positive test slides from the other (disjoint, ``test_source_fraction``).
Every fold has the same test split; its val split is a stratified ``val_fraction`` of the train slides
(seeded per fold), the rest is train.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from wsigym.cachedir import build_lock, cache_root, remove_stale_temps
from wsigym.data.bag import SlideBag, SlideMeta
from wsigym.data.content_digest import sha256_hex
from wsigym.data.dataset import SlideDataset
from wsigym.data.synth.config import FORMAT_VERSION, SynthConfig
from wsigym.data.synth.generator import FeatureModel
from wsigym.data.synth.geometry import MPP, TumourGeometry
from wsigym.data.synth.layout import CHILD_PX, LR_PX, SlideLayout, simulate_layout
from wsigym.errors import DataError
from wsigym.io import atomic_folder, atomic_write_json

CLASS_NAMES = ("normal", "tumour")
MANIFEST = "manifest.json"
CALIBRATION = "calibration.json"
_LAYOUT_KEY = 0x1A70
_SPLIT_KEY = 0x5B17
_ARRAYS = ("grid", "hr_mask", "tumour_counts", "phenotype", "mimic", "origin")


def default_cache_root() -> Path:
    """``$WSIGYM_CACHE`` if set, else ``~/.cache/wsigym`` (:func:`wsigym.cachedir.cache_root`)."""
    return cache_root()


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    atomic_write_json(path, data, indent=1)


def plan_slides(config: SynthConfig, seed: int, geometry: TumourGeometry) -> list[dict[str, Any]]:
    """Slide list: id, split, label, key (the slide's seed index) and geometry source index.

    The real source slides are split into a train group and a test group once (seeded by
    ``config.geometry_split_seed``); within a group, positive slides cycle through a seeded permutation
    of its sources, so each source is used about equally often (about 1.5 times with the defaults).
    """
    order = np.random.default_rng(
        np.random.SeedSequence([config.geometry_split_seed, _SPLIT_KEY])
    ).permutation(len(geometry))
    n_test_src = max(1, round(config.test_source_fraction * len(geometry)))
    groups = {"test": np.sort(order[:n_test_src]), "train": np.sort(order[n_test_src:])}
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_KEY]))
    slides: list[dict[str, Any]] = []
    for split, n, n_pos in (
        ("train", config.n_train, config.n_train_tumour),
        ("test", config.n_test, config.n_test_tumour),
    ):
        labels = rng.permutation(np.r_[np.ones(n_pos, int), np.zeros(n - n_pos, int)])
        src = groups[split]
        cycle = np.concatenate([rng.permutation(src) for _ in range(-(-n_pos // len(src)))])[:n_pos]
        j = 0
        for i, lab in enumerate(labels):
            source = int(cycle[j]) if lab else None
            j += int(lab)
            slides.append(
                {
                    "id": f"{split}_{i:03d}",
                    "split": split,
                    "label": int(lab),
                    "key": len(slides),
                    "source": source,
                }
            )
    return slides


def make_folds(slides: list[dict[str, Any]], config: SynthConfig, seed: int) -> list[dict[str, list[str]]]:
    """``num_folds`` folds: shared test split, stratified seeded val share of the train slides."""
    train = [s for s in slides if s["split"] == "train"]
    test = [s["id"] for s in slides if s["split"] == "test"]
    folds = []
    for f in range(config.num_folds):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_KEY, f + 1]))
        val: set[str] = set()
        for lab in (0, 1):
            ids = [s["id"] for s in train if s["label"] == lab]
            n_val = max(1, round(config.val_fraction * len(ids)))
            val.update(ids[i] for i in rng.choice(len(ids), size=n_val, replace=False))
        folds.append(
            {
                "train": [s["id"] for s in train if s["id"] not in val],
                "val": [s["id"] for s in train if s["id"] in val],
                "test": list(test),
            }
        )
    return folds


class SynthC16(SlideDataset):
    """The synth-c16 benchmark (see the module docstring).

    Args:
        seed: benchmark seed; with ``config`` it fixes every slide, feature and split.
        config: sizes and difficulty knobs (default: the CAMELYON16-sized benchmark).
        cache_dir: the cache folder of this ``(config, seed)`` (default under :func:`default_cache_root`).
        progress: show a progress bar while building.
        name: dataset name in logs and tables.
    """

    build_count = 0
    """How many times this process built a cache (tests use it to check reuse)."""

    def __init__(
        self,
        seed: int = 0,
        config: SynthConfig | None = None,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        name: str = "synth-c16",
    ) -> None:
        self.seed = int(seed)
        self.config = config if config is not None else SynthConfig()
        self.name = name
        self.class_names = CLASS_NAMES
        root = default_cache_root()
        self.cache_dir = (
            Path(cache_dir).expanduser()
            if cache_dir is not None
            else root / f"{name}-{self.config.digest()}-seed{self.seed}"
        )
        self.geometry = TumourGeometry.load()
        self.features = FeatureModel(self.config, self.seed)
        self.manifest = self._open_or_build(progress)
        self._slides = {s["id"]: s for s in self.manifest["slides"]}
        self.splits = make_folds(self.manifest["slides"], self.config, self.seed)

    @classmethod
    def tiny(cls, seed: int = 0, config: SynthConfig | None = None, **kw: Any) -> SynthC16:
        """The small benchmark (:meth:`SynthConfig.tiny`, 36 slides, N about 40-250), name ``synth-c16-tiny``."""
        kw.setdefault("name", "synth-c16-tiny")
        return cls(seed=seed, config=config if config is not None else SynthConfig.tiny(), **kw)

    # ---- cache -------------------------------------------------------------------------------
    def _expected_header(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "name": self.name,
            "seed": self.seed,
            "config": self.config.to_dict(),
            "digest": self.config.digest(),
        }

    def _valid_manifest(self) -> dict[str, Any] | None:
        path = self.cache_dir / MANIFEST
        try:
            manifest = json.loads(path.read_text())
            header = self._expected_header()
            if any(manifest.get(k) != v for k, v in header.items() if k != "name"):
                return None
            for s in manifest["slides"]:
                f = self.cache_dir / s["file"]
                if f.stat().st_size != s["bytes"] or _crc32(f) != s["crc32"]:
                    return None
            return manifest
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _open_or_build(self, progress: bool) -> dict[str, Any]:
        manifest = self._valid_manifest()
        if manifest is not None:
            return manifest
        with build_lock(self.cache_dir, f"{self.name} in {self.cache_dir}"):
            manifest = self._valid_manifest()  # built by another process while we waited
            if manifest is not None:
                return manifest
            remove_stale_temps(self.cache_dir.parent, self.cache_dir.name)  # left by killed builders
            return self._build(progress)

    def _build(self, progress: bool) -> dict[str, Any]:
        """Build the cache folder (the caller holds its lock)."""
        start = time.perf_counter()
        type(self).build_count += 1
        with atomic_folder(self.cache_dir) as tmp:  # a stale or corrupt folder there is replaced
            (tmp / "slides").mkdir()
            slides = plan_slides(self.config, self.seed, self.geometry)
            for s in tqdm(slides, desc=f"building {self.name}", disable=not progress, leave=False):
                rng = np.random.default_rng(np.random.SeedSequence([self.seed, _LAYOUT_KEY, s["key"]]))
                layout = simulate_layout(self.config, self.geometry, s["source"], rng)
                rel = f"slides/{s['id']}.npz"
                np.savez(tmp / rel, **{k: np.asarray(getattr(layout, k)) for k in _ARRAYS})
                s.update(
                    file=rel,
                    bytes=(tmp / rel).stat().st_size,
                    crc32=_crc32(tmp / rel),
                    n=layout.n,
                    source=layout.source,
                    tissue_children=int(layout.hr_mask.sum()),
                    tumour_um2=float(layout.tumour_counts.sum(dtype=np.int64) * (64 * MPP) ** 2),
                )
            disk = sum(f.stat().st_size for f in (tmp / "slides").iterdir())
            manifest = {
                **self._expected_header(),
                "slides": slides,
                "build_seconds": round(time.perf_counter() - start, 2),
                "disk_bytes": disk,
            }
            _write_json_atomic(tmp / MANIFEST, manifest)
        return manifest

    def content_digest(self, slide_id: str) -> str:
        """Digest of everything :meth:`load` of ``slide_id`` depends on: the format version, the config,
        the seed and the slide's manifest entry (its layout file's CRC32 and its seed key)."""
        entry = self._entry(slide_id)
        fields = {k: entry.get(k) for k in ("id", "key", "label", "source", "crc32", "bytes", "n")}
        return sha256_hex(
            "synth-c16",
            str(FORMAT_VERSION),
            json.dumps(self.config.to_dict(), sort_keys=True),
            str(self.seed),
            json.dumps(fields, sort_keys=True),
        )

    # ---- SlideDataset ------------------------------------------------------------------------
    def slide_ids(self) -> list[str]:
        return [s["id"] for s in self.manifest["slides"]]

    def _entry(self, slide_id: str) -> dict[str, Any]:
        try:
            return self._slides[slide_id]
        except KeyError:
            raise DataError(f"dataset {self.name!r}", f"unknown slide id {slide_id!r}") from None

    def label(self, slide_id: str) -> int:
        return int(self._entry(slide_id)["label"])

    def patch_counts(self) -> dict[str, int]:
        """``{slide_id: N}`` from the manifest (no slide is read; :mod:`wsigym.envs.padding`)."""
        return {s["id"]: int(s["n"]) for s in self.manifest["slides"]}

    def layout(self, slide_id: str) -> SlideLayout:
        """The stored latents of one slide."""
        entry = self._entry(slide_id)
        path = self.cache_dir / entry["file"]
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in _ARRAYS}
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(
                path, f"unreadable synth-c16 cache file ({exc}); delete {self.cache_dir}"
            ) from exc
        origin = tuple(int(v) for v in arrays.pop("origin"))
        return SlideLayout(**arrays, origin=origin, source=entry["source"])  # type: ignore[arg-type]

    def load(self, slide_id: str, hr: bool = True) -> SlideBag:
        """One slide bag; ``hr=False`` skips ``U`` (and its random draws)."""
        entry = self._entry(slide_id)
        layout = self.layout(slide_id)
        key = int(entry["key"])
        fm = self.features
        meta = SlideMeta(
            lr_magnification=5.0,
            hr_magnification=20.0,
            patch_size_level0=LR_PX,
            hr_patch_size_level0=CHILD_PX,
            mpp=MPP,
            encoder=f"synthetic (ViT-S/16-like, d={self.config.dim})",
            extra={
                "dataset": self.name,
                "split": entry["split"],
                "geometry_source": entry["source"] or None,
                "geometry": "real CAMELYON16 annotation" if entry["source"] else "none (negative slide)",
                "features": "simulated (wsigym.data.synth.generator)",
                "seed": self.seed,
            },
        )
        return SlideBag(
            slide_id=slide_id,
            features=fm.lr_features(layout, key),
            coords=layout.coords(),
            label=int(entry["label"]),
            class_names=self.class_names,
            hr_features=fm.hr_features(layout, key) if hr else None,
            hr_mask=layout.hr_mask.copy() if hr else None,
            hr_coords=layout.hr_coords() if hr else None,
            tumour_fraction=layout.tumour_fraction(),
            hr_tumour_fraction=layout.hr_tumour_fraction() if hr else None,
            meta=meta,
            views={"vlm": fm.vlm_features(layout, key)},
        )

    def vlm_text_embeddings(self) -> np.ndarray:
        """``(C, e)`` simulated unit text embeddings of the class descriptions
        (:data:`~wsigym.data.synth.generator.CLASS_DESCRIPTIONS`), fixed by the seed."""
        return self.features.text_anchors.copy()

    @property
    def calibration_path(self) -> Path:
        return self.cache_dir / CALIBRATION

    def calibration(self) -> dict[str, Any] | None:
        """The calibration report of this cache if ``wsigym synth calibrate`` has run here, else the one
        shipped in ``wsigym/data/assets/<name>-calibration.json`` when it was measured on this very config
        and seed, else None."""
        shipped = Path(__file__).resolve().parent.parent / "assets" / f"{self.name}-{CALIBRATION}"
        for path in (self.calibration_path, shipped):
            try:
                report = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if report.get("config_digest") == self.config.digest() and report.get("seed") == self.seed:
                return report
        return None
