"""synth-c16 (tiny config): determinism, geometry, cache, ground truth and the hr-vs-lr signal."""

from __future__ import annotations

import os

import numpy as np
import pytest

from wsigym.data.synth import SynthC16, SynthConfig
from wsigym.data.synth.geometry import ASSET_DIR, ASSET_NAME, LICENSE_NAME, TumourGeometry, rasterise_polygon


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SynthC16:
    return SynthC16.tiny(seed=0, cache_dir=tmp_path_factory.mktemp("synth") / "tiny", progress=False)


def test_shipped_asset_and_licence() -> None:
    assert (ASSET_DIR / ASSET_NAME).is_file()
    assert (ASSET_DIR / ASSET_NAME).stat().st_size < 3_000_000
    licence = (ASSET_DIR / LICENSE_NAME).read_text()
    assert "Apache License" in licence and "Baidu" in licence
    geo = TumourGeometry.load()
    assert len(geo) == 110 and all(n.startswith("Tumor_") for n in geo.names)
    # the raster keeps the real tumour area (exact polygon areas stored alongside) within a few percent
    raster_um2 = np.array([geo.mask(i).sum() for i in range(len(geo))]) * (geo.cell * 0.243) ** 2
    assert np.median(np.abs(raster_um2 / geo.area_um2 - 1)) < 0.02


def test_rasterise_square() -> None:
    square = np.array([[0, 0], [256, 0], [256, 128], [0, 128]], dtype=float)
    m = rasterise_polygon(square, (0, 0), (4, 6), 64)
    expected = np.zeros((4, 6), dtype=bool)
    expected[:2, :4] = True
    np.testing.assert_array_equal(m, expected)


def test_bags_valid_and_metadata(tiny: SynthC16) -> None:
    assert tiny.name == "synth-c16-tiny" and tiny.class_names == ("normal", "tumour")
    assert tiny.num_folds == 5
    for sid in tiny.slide_ids()[:6]:
        bag = tiny.load(sid).validate(sid)
        assert bag.features.dtype == np.float32 and bag.hr_features.dtype == np.float32
        assert bag.hr_features.shape == (bag.n, 16, 384) and bag.coords.dtype == np.int64
        assert bag.meta.patch_size_level0 == 2048 and bag.meta.hr_patch_size_level0 == 512
        assert bag.meta.lr_magnification == 5 and bag.meta.hr_magnification == 20
        rel = bag.hr_coords - bag.coords[:, None]
        assert (rel >= 0).all() and (rel + 512 <= 2048).all()
        assert bag.views["vlm"].shape == (bag.n, 64)
        np.testing.assert_allclose(np.linalg.norm(bag.views["vlm"], axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(bag.tumour_fraction, bag.hr_tumour_fraction.mean(axis=1), atol=1e-6)
        assert (bag.hr_tumour_fraction[~bag.hr_mask] == 0).all()  # tumour only on tissue
    assert tiny.vlm_text_embeddings().shape == (2, 64)


def test_patch_counts_are_the_bags_sizes(tiny: SynthC16) -> None:
    counts = tiny.patch_counts()
    assert list(counts) == tiny.slide_ids()
    assert all(counts[sid] == tiny.load(sid, hr=False).n for sid in tiny.slide_ids())


def test_tumour_only_on_positive_slides(tiny: SynthC16) -> None:
    for sid in tiny.slide_ids():
        tf = tiny.layout(sid).tumour_fraction()
        if tiny.label(sid) == 1:
            assert tf.max() > 0
        else:
            assert tf.max() == 0


def test_splits_and_disjoint_geometry_sources(tiny: SynthC16) -> None:
    for fold in range(tiny.num_folds):
        tr, va, te = (set(tiny.split(s, fold)) for s in ("train", "val", "test"))
        assert not (tr & va) and not (tr & te) and not (va & te)
        assert len(tr | va) == 24 and len(te) == 12
        assert {tiny.label(s) for s in va} == {0, 1}
    assert tiny.split("test", 0) == tiny.split("test", 4)
    sources = {split: set() for split in ("train", "test")}
    for s in tiny.manifest["slides"]:
        if s["label"]:
            sources[s["split"]].add(s["source"])
            assert tiny.load(s["id"], hr=False).meta.extra["geometry_source"] == s["source"]
    assert sources["train"] and sources["test"] and not (sources["train"] & sources["test"])


def test_deterministic_and_seed_dependent(tiny: SynthC16, tmp_path) -> None:
    again = SynthC16.tiny(seed=0, cache_dir=tmp_path / "again", progress=False)
    other = SynthC16.tiny(seed=1, cache_dir=tmp_path / "other", progress=False)
    assert again.manifest["slides"] == tiny.manifest["slides"]
    for f in ("slides/train_000.npz", "slides/test_003.npz"):
        assert (again.cache_dir / f).read_bytes() == (tiny.cache_dir / f).read_bytes()
    sid = tiny.slide_ids()[0]
    a, b = tiny.load(sid), again.load(sid)
    assert a.features.tobytes() == b.features.tobytes() and a.hr_features.tobytes() == b.hr_features.tobytes()
    c = other.load(sid)
    assert c.n != a.n or not np.array_equal(c.features, a.features)
    assert [s["label"] for s in other.manifest["slides"]] != [s["label"] for s in tiny.manifest["slides"]]


def test_load_regenerates_u_exactly_and_lr_skips_it(tiny: SynthC16) -> None:
    sid = tiny.slide_ids()[1]
    one, two = tiny.load(sid), tiny.load(sid)
    assert one.hr_features.tobytes() == two.hr_features.tobytes()
    lr = tiny.load(sid, hr=False)
    assert lr.hr_features is None and lr.hr_mask is None
    assert lr.features.tobytes() == one.features.tobytes()
    assert lr.views["vlm"].tobytes() == one.views["vlm"].tobytes()


def test_cache_reused_and_corrupt_cache_rebuilt(tmp_path) -> None:
    cache = tmp_path / "c"
    before = SynthC16.build_count
    first = SynthC16.tiny(seed=2, cache_dir=cache, progress=False)
    assert SynthC16.build_count == before + 1
    mtime = os.stat(cache / "manifest.json").st_mtime_ns
    SynthC16.tiny(seed=2, cache_dir=cache, progress=False)
    assert SynthC16.build_count == before + 1 and os.stat(cache / "manifest.json").st_mtime_ns == mtime
    victim = cache / first.manifest["slides"][3]["file"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    rebuilt = SynthC16.tiny(seed=2, cache_dir=cache, progress=False)
    assert SynthC16.build_count == before + 2
    assert (
        rebuilt.load(first.manifest["slides"][3]["id"]).features.tobytes()
        == first.load(first.manifest["slides"][3]["id"]).features.tobytes()
    )
    (cache / "manifest.json").unlink()
    SynthC16.tiny(seed=2, cache_dir=cache, progress=False)
    assert SynthC16.build_count == before + 3
    # no temp folders left (the build lock's file stays: removing lock files is racy)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != ".c.lock"]


def test_config_validation_and_digest() -> None:
    with pytest.raises(ValueError, match="n_train_tumour"):
        SynthConfig(n_train_tumour=0)
    assert SynthConfig().digest() != SynthConfig(hr_tumour_signal=2.0).digest()


def _held_out_effect_size(xs: list[np.ndarray], pos: list[np.ndarray], neg: list[np.ndarray]) -> float:
    """Tumour-vs-normal separation of per-slide-centred features along the mean-difference direction
    estimated on the other half of the slides (pooled-sd units), so slide effects and overfitting
    cannot inflate it."""
    xs = [x - x.mean(0) for x in xs]
    half = len(xs) // 2

    def stack(sl: slice) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate(xs[sl])
        p, n = np.concatenate(pos[sl]), np.concatenate(neg[sl])
        return x[p | n], p[p | n]

    xa, ya = stack(slice(0, half))
    xb, yb = stack(slice(half, None))
    direction = xa[ya].mean(0) - xa[~ya].mean(0)
    proj = xb @ (direction / np.linalg.norm(direction))
    return float((proj[yb].mean() - proj[~yb].mean()) / np.sqrt(0.5 * (proj[yb].var() + proj[~yb].var())))


def test_hr_reveals_tumour_better_than_lr(tiny: SynthC16) -> None:
    ids = [s for s in tiny.split("train", 0) + tiny.split("test", 0) if tiny.label(s) == 1]
    z, zp, zn, u, up, un = [], [], [], [], [], []
    for sid in ids:
        bag = tiny.load(sid)
        z.append(bag.features)
        zp.append(bag.tumour_fraction >= 0.5)  # mostly tumour
        zn.append(bag.tumour_fraction == 0)
        u.append(bag.hr_features[bag.hr_mask])
        up.append(bag.hr_tumour_fraction[bag.hr_mask] >= 0.5)
        un.append(bag.hr_tumour_fraction[bag.hr_mask] == 0)
    assert sum(p.sum() for p in zp) > 20 and sum(p.sum() for p in up) > 100
    d_lr = _held_out_effect_size(z, zp, zn)
    d_hr = _held_out_effect_size(u, up, un)
    assert d_hr > 1.5, (d_hr, d_lr)
    assert d_hr > 1.5 * d_lr, (d_hr, d_lr)


def test_within_slide_coherence(tmp_path) -> None:
    """Coherence adds each slide's own tumour (mimic) direction: orthogonal to e_T and e_M (the
    population-wide signals are unchanged), drawn afresh per slide, and it makes a slide's tumour
    patches resemble each other at low resolution; coherence 0 is the incoherent variant."""
    kw = dict(seed=0, progress=False)
    coherent = SynthC16.tiny(cache_dir=tmp_path / "c", config=SynthConfig.tiny(coherence=1.0), **kw)
    flat = SynthC16.tiny(cache_dir=tmp_path / "f", config=SynthConfig.tiny(coherence=0.0), **kw)
    assert coherent.config.digest() != flat.config.digest()
    fm = coherent.features
    keys = {s["id"]: int(s["key"]) for s in coherent.manifest["slides"]}
    gain: dict[str, list[float]] = {"coherent": [], "flat": []}
    directions = []
    for sid in [s for s in coherent.slide_ids() if coherent.label(s) == 1][:4]:
        a, b = coherent.load(sid), flat.load(sid)
        delta_z, delta_u = a.features - b.features, a.hr_features - b.hr_features
        for direction in (fm.e_tumour, fm.e_mimic):
            assert np.abs(delta_z @ direction).max() < 1e-3 and np.abs(delta_u @ direction).max() < 1e-3
        own = fm.lesion_directions(keys[sid])  # (2, d): the only directions coherence adds
        coef = np.linalg.lstsq(own.T.astype(np.float64), delta_z.T.astype(np.float64), rcond=None)[0]
        residual = delta_z - (coef.T @ own)
        assert np.abs(residual).max() < 1e-4 < 0.1 < np.abs(delta_z).max()  # float32 rounding only
        directions.append(own)
        for name, bag in (("coherent", a), ("flat", b)):
            tum = bag.tumour_fraction > 0.5
            if tum.sum() < 2 or (~tum).sum() < 2:
                continue
            zn = bag.features / np.linalg.norm(bag.features, axis=1, keepdims=True)
            within = (zn[tum] @ zn[tum].T)[np.triu_indices(int(tum.sum()), 1)].mean()
            across = (zn[tum] @ zn[~tum].T).mean()
            gain[name].append(float(within - across))
    assert gain["coherent"] and np.mean(gain["coherent"]) > np.mean(gain["flat"]) + 0.005
    assert abs(float(directions[0][0] @ directions[1][0])) < 0.5  # drawn afresh per slide
    with pytest.raises(ValueError, match="coherence"):
        SynthConfig(coherence=-1.0)
