"""``SynthConfig``: every size and difficulty knob of the synth-c16 benchmark."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

FORMAT_VERSION = 2
"""Bumped whenever the cache layout or the generative model changes (part of the cache key)."""


@dataclass(frozen=True)
class SynthConfig:
    """Sizes and difficulty knobs of synth-c16. All defaults are the published benchmark.

    Split sizes (CAMELYON16): ``n_train`` slides of which ``n_train_tumour`` positive, ``n_test`` of which
    ``n_test_tumour`` positive. ``test_source_fraction`` of the 110 real tumour source slides give the
    test positives their geometry, the rest the train positives (disjoint; sources are reused with a
    random quarter-turn rotation, mirror and sub-cell offset on fresh simulated tissue).

    Tissue: the number of low-res (5x, 2048 level-0 px) patches per slide targets a log-normal with
    median ``n_median`` and log-sd ``n_sigma``, clipped to ``[n_min, n_max]``; positive slides grow
    beyond it where their real lesions need more tissue. ``tumour_window_lr`` (tiny config) crops the
    real tumour raster to a window of that many low-res patches around a random tumour cell.

    Features (see :mod:`wsigym.data.synth.generator` for the model):
        dim: feature width d (384 like ViT-S/16). ``k`` is fixed at 16 (4 x 4 children at 20x).
        n_phenotypes: benign tissue phenotypes; ``smoothness``: their spatial correlation length in
        20x children (Gaussian sigma); ``phenotype_scale``: prototype norm.
        hr_tumour_signal / lr_tumour_signal: amplitude of the tumour direction in a fully tumorous
        high-res child / low-res patch (noise sd is ``hr_noise`` / ``lr_noise`` per dimension).
        mimic_slide_prob: probability that a slide (either class) holds tumour-mimicking benign tissue,
        mimic_area: its share of that slide's tissue, mimic_lr_signal: how far a mimic moves a low-res
        patch along the tumour direction (so it looks like tumour at 5x), mimic_hr_signal: its amplitude
        along its own, tumour-orthogonal direction at 20x.
        coherence: within-slide coherence of lesion morphology (see the generator's "Within-slide
        coherence"): each slide's tumour (mimic) patches share a slide-specific direction of norm
        ``coherence`` times the noise norm at each resolution (``lr_noise * sqrt(dim)`` at 5x,
        ``hr_noise * sqrt(dim)`` at 20x), scaled by the patch's tumour fraction (mimic intensity).
        0 gives the incoherent variant (``synth-c16-incoherent``).
        stain_shift: sd of the per-slide stain/batch offset (a random vector per slide, shared by both
        resolutions), stain_tumour_axis: sd of its component along the tumour direction.
        vlm_dim: width e of the simulated vision-language view, vlm_tumour_lean / vlm_mimic_lean /
        vlm_noise: how strongly a patch embedding leans to the tumour text anchor.
    """

    n_train: int = 270
    n_train_tumour: int = 111
    n_test: int = 129
    n_test_tumour: int = 49
    test_source_fraction: float = 0.3
    geometry_split_seed: int = 0
    num_folds: int = 5
    val_fraction: float = 0.1
    n_median: float = 1500.0
    n_sigma: float = 0.55
    n_min: int = 250
    n_max: int = 8000
    tumour_window_lr: int | None = None
    dim: int = 384
    n_phenotypes: int = 6
    smoothness: float = 3.0
    phenotype_scale: float = 4.0
    hr_tumour_signal: float = 8.0
    lr_tumour_signal: float = 0.6
    hr_noise: float = 0.3
    lr_noise: float = 0.135
    mimic_slide_prob: float = 0.5
    mimic_area: float = 0.03
    mimic_lr_signal: float = 0.6
    mimic_hr_signal: float = 3.0
    coherence: float = 1.0
    stain_shift: float = 0.3
    stain_tumour_axis: float = 0.2
    vlm_dim: int = 64
    vlm_tumour_lean: float = 1.5
    vlm_mimic_lean: float = 0.6
    vlm_noise: float = 0.1

    def __post_init__(self) -> None:
        checks = [
            (0 < self.n_train_tumour < self.n_train, "n_train_tumour must be in (0, n_train)"),
            (0 < self.n_test_tumour < self.n_test, "n_test_tumour must be in (0, n_test)"),
            (0.0 < self.test_source_fraction < 1.0, "test_source_fraction must be in (0, 1)"),
            (0 < self.n_min <= self.n_max, "need 0 < n_min <= n_max"),
            (self.dim >= 8 and self.vlm_dim >= 4, "dim must be >= 8 and vlm_dim >= 4"),
            (self.n_phenotypes >= 1, "n_phenotypes must be >= 1"),
            (
                self.num_folds >= 1 and 0.0 < self.val_fraction < 1.0,
                "need num_folds >= 1, val_fraction in (0,1)",
            ),
            (self.coherence >= 0.0, "coherence must be >= 0"),
            (
                0.0 <= self.mimic_slide_prob <= 1.0 and 0.0 <= self.mimic_area < 1.0,
                "mimic probabilities in [0,1)",
            ),
        ]
        for ok, what in checks:
            if not ok:
                raise ValueError(f"SynthConfig: {what} (got {self})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """12 hex chars identifying this config and the format version (the cache key)."""
        blob = json.dumps({"format": FORMAT_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @classmethod
    def tiny(cls, **overrides: Any) -> SynthConfig:
        """36 small slides (N about 40-250), same d = 384 and k = 16: for tests and quick demos."""
        base: dict[str, Any] = dict(
            n_train=24,
            n_train_tumour=10,
            n_test=12,
            n_test_tumour=5,
            n_median=110.0,
            n_sigma=0.45,
            n_min=40,
            n_max=250,
            tumour_window_lr=6,
        )
        base.update(overrides)
        return cls(**base)
