"""WSIZoom-v0 on live slides: a synthetic Aperio TIFF with known tumours and the real slides."""

from __future__ import annotations

import pickle
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

import wsigym  # noqa: F401  (registers the environments)
import zoo
from wsigym.envs.live_source import LiveSlides, LiveSlideSource, encoder_fingerprint
from wsigym.envs.vector import WSIZoomVectorEnv
from wsigym.envs.zoom import WSIZoomEnv
from wsigym.errors import DataError
from wsigym.slides.encoders import TorchPatchEncoder, timm_encoder
from wsigym.slides.reader import read_children
from wsigym.slides.synthetic_slides import SyntheticSlide, tumour_fraction, write_aperio_tiff


class CountingEncoder:
    """A :class:`PatchEncoder` that counts its calls and images."""

    def __init__(self, inner: TorchPatchEncoder) -> None:
        self.inner = inner
        self.name, self.dim, self.input_size = inner.name, inner.dim, inner.input_size
        self.mean, self.std = inner.mean, inner.std
        self.fingerprint = encoder_fingerprint(inner)
        self.calls = 0
        self.images = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.images += len(images)
        return self.inner(images)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    """8192^2 level-0 px at 0.25 um/px (40x): a 4 x 4 grid of 5x patches, two tumour ellipses."""
    return write_aperio_tiff(tmp_path_factory.mktemp("live") / "synthetic_live.svs", seed=3)


@pytest.fixture(scope="module")
def encoder() -> TorchPatchEncoder:
    torch.manual_seed(0)
    return timm_encoder("vit_tiny_patch16_224", img_size=32, name="vit_tiny_rand32")


@pytest.fixture(scope="module")
def models(encoder) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(1)
    hafed = zoo.create_model("hafed", in_dim=encoder.dim).eval()
    tsu = zoo.create_model("tsu", in_dim=encoder.dim, tau=0.9).eval()
    return hafed, tsu


def make(slides, encoder, models, **kwargs) -> WSIZoomEnv:
    hafed, tsu = models
    if "labels" not in kwargs:
        items = slides if isinstance(slides, list) else [slides]
        kwargs["labels"] = {Path(getattr(s, "path", s)).stem: 1 for s in items}
    return WSIZoomEnv(slides=slides, encoder=encoder, hafed=hafed, tsu=tsu, progress=False, **kwargs)


def test_episode_end_to_end_and_render(synthetic, encoder, models):
    env = gym.make(
        "WSIZoom-v0",
        slides=[synthetic],
        labels={synthetic.path.stem: "tumour"},
        class_names=("normal", "tumour"),
        encoder=encoder,
        hafed=models[0],
        tsu=models[1],
        budget=0.25,
        render_mode="rgb_array",
        progress=False,
    )
    base = env.unwrapped
    assert base.max_patches == base.source.n_list[0] >= 8
    assert base.observation_space["state"].shape == (base.max_patches * encoder.dim,)
    obs, info = env.reset(seed=0)
    assert obs in base.observation_space and info["label"] == 1 and info["slide_id"] == synthetic.path.stem
    np.testing.assert_allclose(
        obs["state"].reshape(base.max_patches, -1), base.source.features(0).numpy(), rtol=0, atol=0
    )
    steps, done = 0, False
    while not done:
        obs, reward, term, trunc, info = env.step(int(np.flatnonzero(info["action_mask"])[0]))
        assert obs in base.observation_space and np.isfinite(reward)
        assert "hit_tumour" in info and "tsu_updates" in info
        steps, done = steps + 1, term or trunc
    assert steps == info["budget_steps"] == int(np.ceil(0.25 * base.max_patches))
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    thumb, _ = base.source.thumbnail(0)
    assert frame.shape[0] > thumb.shape[0] and frame.shape[1] > 2 * thumb.shape[1]
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 100  # the slide's pixels, not a flat grid


def test_zoom_reads_and_encodes_exactly_the_children(synthetic, encoder, models):
    counting = CountingEncoder(encoder)
    env = make(synthetic, counting, models, budget=0.5)
    src = env.source
    obs, info = env.reset(seed=1)
    plan = src.plan(0)
    assert counting.images == plan.n  # the low-res pass: one image per patch
    a = int(np.flatnonzero(info["action_mask"])[3])
    before = counting.images
    obs, *_ = env.step(a)
    assert counting.images - before == plan.k == 16
    # independently: read the 16 children of patch a from the file, encode them, HAFED level 1
    children = read_children(synthetic.path, tuple(int(v) for v in plan.coords[a]), 5, 20, 256)
    assert children.shape == (16, 256, 256, 3)
    np.testing.assert_array_equal(children, src.read_children(0, a))
    u = torch.as_tensor(encoder(children))[None]
    with torch.no_grad():
        v = models[0].aggregate(u, torch.as_tensor(plan.hr_mask[a])[None])[0]
    state = obs["state"].reshape(env.max_patches, -1)
    np.testing.assert_allclose(state[a], v.numpy(), rtol=1e-5, atol=1e-6)
    # children are the level-0 squares of the plan, and a different patch gives a different V
    assert np.array_equal(plan.hr_coords[a, 5], plan.coords[a] + np.array([1, 1]) * plan.hr_patch_size_level0)
    b = int(np.flatnonzero(env.action_masks())[0])
    assert not np.allclose(src.oracle(np.array([0]), np.array([b]))[0].numpy(), v.numpy())


def test_low_res_features_are_cached(synthetic, encoder, models, tmp_path):
    counting = CountingEncoder(encoder)
    env = make(synthetic, counting, models, cache_dir=tmp_path)
    env.reset(seed=0)
    n = env.source.n_list[0]
    assert counting.images == n
    env.reset(seed=1)  # same slide: no new encoding
    assert counting.images == n and env.source.counters["lr_encoded"] == n
    # a new environment on the same cache folder reads Z (and the plan) from disk
    again = CountingEncoder(encoder)
    env2 = make(synthetic, again, models, cache_dir=tmp_path)
    env2.reset(seed=0)
    assert again.images == 0 and env2.source.counters["z_from_cache"] == 1
    np.testing.assert_array_equal(env2.source.features(0).numpy(), env.source.features(0).numpy())
    feats = tmp_path / "5x_256px_0px_overlap" / f"features_{encoder.name}" / f"{synthetic.path.stem}.h5"
    with h5py.File(feats, "r") as f:  # a TRIDENT features file
        assert f["features"].shape == (n, encoder.dim) and f["coords"].shape == (n, 2)
        assert f["coords"].attrs["target_magnification"] == 5
        assert f["features"].attrs["encoder"] == f"{encoder.name}@{encoder_fingerprint(encoder)}"
    # other weights under the same name are not trusted: recomputed
    torch.manual_seed(5)
    other = CountingEncoder(timm_encoder("vit_tiny_patch16_224", img_size=32, name="vit_tiny_rand32"))
    env3 = make(synthetic, other, models, cache_dir=tmp_path)
    env3.reset(seed=0)
    assert other.images == n and env3.source.counters["z_from_cache"] == 0


def test_hit_tumour_matches_the_known_regions(synthetic, encoder, models):
    env = make(synthetic, encoder, models, budget=1.0, update="none")
    plan = env.source.plan(0)
    truth = tumour_fraction(
        synthetic.tumour_regions, plan.coords, plan.patch_size_level0, synthetic.width, synthetic.height
    )
    # the patch holding the big ellipse's centre is mostly tumour, corners of the slide are not
    x0, y0, x1, y1 = synthetic.tumour_regions[0]
    centre = np.array([(x0 + x1) // 2, (y0 + y1) // 2])
    inside = np.flatnonzero(
        ((plan.coords <= centre) & (centre < plan.coords + plan.patch_size_level0)).all(1)
    )
    assert len(inside) == 1 and truth[inside[0]] > 0.5
    assert (truth == 0).sum() >= 3
    env.reset(seed=0)
    hits = {}
    for a in range(plan.n):
        _, _, _, _, info = env.step(a)
        hits[a] = info["hit_tumour"]
        assert info["tumour_fraction"] == pytest.approx(float(truth[a]))
    assert hits == {a: bool(truth[a] > 0) for a in range(plan.n)}
    assert any(hits.values()) and not all(hits.values())


def test_live_slides_through_dataset_in_both_envs_and_evaluate(synthetic, encoder, models):
    from wsigym.evaluate import evaluate

    hafed, tsu = models
    live = LiveSlides([synthetic], {synthetic.path.stem: 1}, encoder, remember_zooms=True)
    kw = {"hafed": hafed, "tsu": tsu, "budget": 0.25, "progress": False}
    single = WSIZoomEnv(dataset=live, **kw)
    assert make([synthetic], encoder, models, remember_zooms=True).options.dataset == live  # keyword path
    vec = WSIZoomVectorEnv(num_envs=2, dataset=live, **kw)
    assert vec.max_patches == single.max_patches == single.source.n_list[0]
    vobs, vinfo = vec.reset(seed=0)
    obs, info = single.reset(seed=0)
    assert vinfo["slide_id"][0] == info["slide_id"] == synthetic.path.stem
    for key in obs:
        np.testing.assert_array_equal(vobs[key][0], obs[key])
    action = int(np.flatnonzero(info["action_mask"])[1])
    vobs, vreward, *_ = vec.step(np.array([action, action]))
    obs, reward, *_ = single.step(action)
    np.testing.assert_allclose(vobs["state"][0], obs["state"], atol=1e-5)  # batched f_S: float order
    np.testing.assert_allclose(vreward[0], reward, atol=1e-5)
    models_kw = {"hafed": hafed, "tsu": tsu}
    report = evaluate(
        ["random"], dataset=live, budgets=(0.25,), seeds=(0,), env_kwargs=models_kw, progress=False
    )
    assert report.dataset == "live:1 slides" and report.slides == 1
    report = evaluate(["attention-topk"], env=single, seeds=(0,), progress=False)
    assert (report.dataset, report.split, report.slides) == ("live:1 slides", "live", 1)
    assert report.rows[0].mean["zooms"] == int(np.ceil(0.25 * single.max_patches))


def test_truth_callable_and_errors(synthetic, encoder, models):
    calls = []

    def truth(coords, size):
        calls.append(size)
        return (coords[:, 0] == coords[:, 0].min()).astype(np.float32)

    env = make([synthetic.path], encoder, models, truth={synthetic.path.stem: truth})
    assert calls == [2048] and env.source.has_truth == [True]
    with pytest.raises(ValueError, match=r"in_dim=16 but encoder 'vit_tiny_rand32' gives 192-d"):
        WSIZoomEnv(
            slides=[synthetic],
            labels={synthetic.path.stem: 0},
            encoder=encoder,
            hafed=zoo.create_model("hafed", in_dim=16),
            tsu=zoo.create_model("tsu", in_dim=16),
            progress=False,
        )
    with pytest.raises(ValueError, match=r"no label for slide\(s\) \['synthetic_live'\]"):
        make(synthetic, encoder, models, labels={"other": 1})
    with pytest.raises(ValueError, match="not both"):
        make(synthetic, encoder, models, dataset="synth-c16")
    with pytest.raises(ValueError, match="reward='evidence' needs the oracle rows V of every patch"):
        make(synthetic, encoder, models, reward="evidence")
    with pytest.raises(ValueError, match=r"must give \d+ tumour fractions \(one per low-res patch\)"):
        make(synthetic, encoder, models, truth={synthetic.path.stem: [0.0, 1.0]})


def test_labels_csv_and_folder(synthetic, encoder, models, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text(f"slide_id,label\n{synthetic.path.stem},tumour\nabsent,normal\n")
    env = make(synthetic.path.parent, encoder, models, labels=csv)
    assert env.source.slide_ids == [synthetic.path.stem]
    assert env.source.class_names == ("normal", "tumour") and int(env.source.labels[0]) == 1


def test_source_pickles_as_paths(synthetic, encoder, models):
    src = LiveSlideSource(synthetic, {synthetic.path.stem: 1}, encoder, models[0], progress=False)
    src.features(0)
    v = src.oracle(np.array([0]), np.array([2]))
    assert src.slides[0].reader._handle is not None  # open in this process
    copy = pickle.loads(pickle.dumps(src))
    assert copy.slides[0].reader._handle is None  # reopened lazily
    np.testing.assert_allclose(copy.oracle(np.array([0]), np.array([2])).numpy(), v.numpy(), atol=1e-6)


def test_check_env(synthetic, encoder, models):
    from gymnasium.utils.env_checker import check_env

    hafed, tsu = models
    env = gym.make(
        "WSIZoom-v0",
        slides=[synthetic],
        labels={synthetic.path.stem: 1},
        encoder=encoder,
        hafed=hafed,
        tsu=tsu,
        budget=0.2,
        remember_zooms=True,
        progress=False,
    )
    check_env(env.unwrapped, skip_render_check=True)


def test_real_slides(encoder, models, cmu, tcga):
    labels = {cmu.stem: 0, tcga.stem: 1}
    with pytest.raises(DataError, match=r"tcga-cr-7395-01a-01-ts1\.svs: .*pass mpp="):
        make([cmu, tcga], encoder, models, labels=labels)
    env = make([cmu, tcga], encoder, models, labels=labels, mpp={tcga.stem: 0.5}, render_mode="rgb_array")
    src = env.source
    # CMU is a 20x scan: 5x patches are 1024 level-0 px resampled to 256; its children are level-0 reads
    assert src.plan(0).base_magnification == 20 and src.plan(0).patch_size_level0 == 1024
    assert src.plan(1).base_magnification == 20 and src.plan(1).k == 16
    for sid in (cmu.stem, tcga.stem):
        obs, info = env.reset(seed=0, options={"slide_id": sid})
        assert info["slide_id"] == sid and obs in env.observation_space
        for _ in range(2):
            if not info["action_mask"].any():
                break
            a = int(np.flatnonzero(info["action_mask"])[-1])
            obs, reward, term, _, info = env.step(a)
            assert np.isfinite(reward) and obs in env.observation_space
            assert np.isfinite(obs["state"]).all()
            if term:
                break
        frame = env.render()
        assert frame.ndim == 3 and frame.dtype == np.uint8


def test_both_sources_share_index_of():
    """One slide lookup for cached and live slides; its error names what the slides are."""
    from wsigym.envs.live_source import LiveSlideSource
    from wsigym.envs.slide_source import SlideIndex, SlideSource

    assert LiveSlideSource.index_of is SlideSource.index_of is SlideIndex.index_of

    class Two(SlideIndex):
        slide_ids = ("a", "b")

        def describe(self) -> str:
            return "the two slides"

    assert Two().index_of("b") == 1 and Two().index_of(0) == 0
    with pytest.raises(ValueError, match="'c' is not in the two slides"):
        Two().index_of("c")
    with pytest.raises(ValueError, match=r"must be in \[0, 2\), got 2"):
        Two().index_of(2)
