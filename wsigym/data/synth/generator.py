r"""The simulated feature model of synth-c16 (the *features* are simulated; the tumour geometry is real).

A fixed "encoder" is drawn once from the benchmark seed: an orthonormal set of directions in
:math:`\mathbb{R}^d` - the tumour direction :math:`e_T`, the mimic direction :math:`e_M` (orthogonal
to :math:`e_T`), a background direction, and ``K`` phenotype directions scaled to prototypes
:math:`\mu_k` of norm ``phenotype_scale``; plus an offset :math:`b` (per-dimension sd 0.5) shared by
every feature, as real encoders have a non-zero mean.

For child ``c`` (20x, 512 px) with phenotype weights :math:`w_c` (smooth maps, see
:mod:`wsigym.data.synth.layout`), mimic intensity :math:`m_c`, tumour area fraction :math:`t_c`, and a
slide's stain offset :math:`s = \sigma_s g + \sigma_{sT} \gamma e_T` (:math:`g \sim N(0, I_d)`,
:math:`\gamma \sim N(0, 1)`, drawn per slide, shared by both resolutions):

.. math::
    u_c = b + \textstyle\sum_k w_{ck}\mu_k + a^{hr}_T t_c e_T + a^{hr}_M m_c e_M + s + \sigma_{hr}\varepsilon_c

Children off tissue (``hr_mask`` False) get :math:`b + \mu_{bg} + \sigma_{hr}\varepsilon`.
The low-res patch ``i`` (5x, 2048 px) sees the average of its 16 children's *appearance* but not
their fine texture: the tumour shows only faintly and tumour-mimicking benign tissue (e.g. sinus
histiocytosis, germinal centres) projects onto the same low-res direction as tumour:

.. math::
    z_i = b + \tfrac{1}{16}\textstyle\sum_c [\text{on}_c \sum_k w_{ck}\mu_k + (1-\text{on}_c)\mu_{bg}]
          + (a^{lr}_T \bar t_i + a^{lr}_M \bar m_i) e_T + s + \sigma_{lr}\varepsilon_i

with :math:`\bar t_i` the patch's tumour area fraction and :math:`\bar m_i` its mean mimic intensity.
So at 20x a mimic moves along :math:`e_M \perp e_T` and tumour along :math:`e_T` (told apart), while at
5x both move along :math:`e_T` (confused), and a small metastasis is diluted by :math:`\bar t_i`.

**Within-slide coherence (a modelling assumption).** A metastasis is clonal: the tumour cells of one
slide share a morphology (growth pattern, nuclear grade, stroma) that differs from another patient's
tumour; the tumour-mimicking benign tissue of one slide (its germinal centres, its sinus histiocytes)
also looks alike. So, beyond the population-wide directions, each slide ``s`` draws its own unit
directions :math:`c_T^{(s)}, c_M^{(s)}` (uniform on the sphere orthogonal to :math:`e_T, e_M`, afresh per
slide, so no fixed direction gives them away) and its tumour and mimic tissue carry them at both
resolutions, with the norm of the patch noise times ``coherence`` (:math:`\kappa`):

.. math::
    u_c \mathrel{+}= \kappa\sigma_{hr}\sqrt d\,(t_c\, c_T^{(s)} + m_c\, c_M^{(s)}), \qquad
    z_i \mathrel{+}= \kappa\sigma_{lr}\sqrt d\,(\bar t_i\, c_T^{(s)} + \bar m_i\, c_M^{(s)})

With :math:`\kappa = 1` (the default, chosen from this assumption before any agent was scored) a
fully tumorous patch's own morphology is as strong, in norm, as its encoder noise: invisible to a
model that looks at one patch along fixed directions, but patches of one lesion resemble each other
(and not the slide's mimics) at 5x, which is what SASHA's targeted state update exploits. Its
projections on :math:`e_T, e_M` (what the population-wide signals are) are unchanged, and
micro-metastases stay diluted by :math:`\bar t_i`. :math:`\kappa = 0` is ``synth-c16-incoherent``.

The simulated vision-language view (``views["vlm"]``, width ``e``) has two fixed unit text anchors
:math:`\tau_0` ("normal lymph node tissue"), :math:`\tau_1` ("metastatic breast carcinoma in lymph
node") and a fixed map :math:`A` (K x e) of phenotypes; each low-res patch embedding is

.. math::
    v_i = \mathrm{normalise}\big(A^\top \bar w_i + \tfrac{1}{2}(\tau_0+\tau_1)
          + \ell_i(\tau_1 - \tau_0) + \sigma_v\xi_i\big),\quad
    \ell_i = \lambda_T \sqrt{\bar t_i}\,(1 + 0.3\eta_i) + \lambda_M \bar m_i

Feature noise :math:`\varepsilon` is i.i.d. uniform with mean 0 and sd 1 per dimension (fast to draw;
its projection on any direction is near-normal), :math:`\gamma, g, \xi, \eta` are standard normal, drawn from the slide's own seed
in separate streams for ``Z``, ``U`` and the VLM view, so ``U`` can be regenerated exactly on every
load and skipped when not needed.
"""

from __future__ import annotations

import numpy as np

from wsigym.data.synth.config import SynthConfig
from wsigym.data.synth.layout import K_CHILD, SlideLayout

CLASS_DESCRIPTIONS = ("normal lymph node tissue", "metastatic breast carcinoma in lymph node")
_ENCODER_KEY = 0x5C16
_STREAM_STAIN, _STREAM_Z, _STREAM_U, _STREAM_VLM, _STREAM_LESION = 0, 1, 2, 3, 4


class FeatureModel:
    """The fixed simulated encoder of one ``(config, seed)`` and the per-slide feature draws."""

    def __init__(self, config: SynthConfig, seed: int) -> None:
        self.config = config
        self.seed = int(seed)
        d, k = config.dim, config.n_phenotypes
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _ENCODER_KEY]))
        q, _ = np.linalg.qr(rng.standard_normal((d, min(d, k + 3))))
        q = q.T.astype(np.float32)  # orthonormal rows
        self.e_tumour, self.e_mimic, e_bg = q[0], q[1], q[2]
        protos = q[3 : 3 + k] if k + 3 <= d else rng.standard_normal((k, d)).astype(np.float32) / np.sqrt(d)
        self.prototypes = (config.phenotype_scale * protos).astype(np.float32)  # (K, d)
        self.background = (config.phenotype_scale * e_bg).astype(np.float32)
        self.offset = (0.5 * rng.standard_normal(d)).astype(np.float32)
        e = config.vlm_dim
        anchors = rng.standard_normal((2, e))
        anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
        self.text_anchors = anchors.astype(np.float32)  # (2, e)
        self.vlm_map = (rng.standard_normal((k, e)) / np.sqrt(e) * 2.0).astype(np.float32)

    def _rng(self, slide_key: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(
            np.random.SeedSequence([self.seed, _ENCODER_KEY, int(slide_key), stream])
        )

    def stain(self, slide_key: int) -> np.ndarray:
        """``(d,)`` the slide's stain/batch offset ``s``."""
        cfg = self.config
        rng = self._rng(slide_key, _STREAM_STAIN)
        g = rng.standard_normal(cfg.dim).astype(np.float32)
        return cfg.stain_shift * g + np.float32(cfg.stain_tumour_axis * rng.standard_normal()) * self.e_tumour

    def lesion_directions(self, slide_key: int) -> np.ndarray:
        """``(2, d)`` the slide's unit tumour and mimic morphology directions, orthogonal to ``e_T, e_M``."""
        rng = self._rng(slide_key, _STREAM_LESION)
        c = rng.standard_normal((2, self.config.dim))
        shared = np.stack([self.e_tumour, self.e_mimic]).astype(np.float64)  # orthonormal rows
        c -= (c @ shared.T) @ shared
        return (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)

    def _coherence_scale(self, noise_sd: float) -> float:
        return float(self.config.coherence * noise_sd * np.sqrt(self.config.dim))

    def lr_features(self, layout: SlideLayout, slide_key: int) -> np.ndarray:
        """``Z (N, d)`` float32."""
        cfg = self.config
        on = layout.hr_mask.astype(np.float32)  # (N, 16)
        w_mean = np.einsum("nc,nck->nk", on, layout.phenotype.astype(np.float32)) / K_CHILD
        off = 1.0 - on.mean(axis=1)
        t = layout.tumour_fraction()
        m = layout.mimic.astype(np.float32).mean(axis=1)
        rng = self._rng(slide_key, _STREAM_Z)
        z = self._noise(rng, (layout.n, cfg.dim), cfg.lr_noise)
        z += w_mean @ self.prototypes
        z += off[:, None] * self.background
        z += (cfg.lr_tumour_signal * t + cfg.mimic_lr_signal * m)[:, None].astype(np.float32) * self.e_tumour
        if cfg.coherence > 0:
            lesion = np.stack([t, m], axis=1).astype(np.float32) * self._coherence_scale(cfg.lr_noise)
            z += lesion @ self.lesion_directions(slide_key)
        z += self.offset + self.stain(slide_key)
        return z

    def hr_features(self, layout: SlideLayout, slide_key: int) -> np.ndarray:
        """``U (N, 16, d)`` float32: one ``(16N, K+4) @ (K+4, d)`` product for the means plus noise."""
        cfg = self.config
        n, d, k = layout.n, cfg.dim, cfg.n_phenotypes
        on = layout.hr_mask.reshape(-1, 1).astype(np.float32)
        lesion = cfg.coherence > 0
        design = np.empty((n * K_CHILD, k + 4 + 2 * lesion), dtype=np.float32)
        design[:, :k] = layout.phenotype.reshape(n * K_CHILD, k)
        design[:, :k] *= on
        design[:, k] = cfg.hr_tumour_signal * layout.hr_tumour_fraction().reshape(-1)
        design[:, k + 1] = cfg.mimic_hr_signal * layout.mimic.reshape(-1)
        design[:, k + 2] = 1.0 - on[:, 0]
        design[:, k + 3] = 1.0
        rows = [
            self.prototypes,
            self.e_tumour[None],
            self.e_mimic[None],
            self.background[None],
            (self.offset + self.stain(slide_key))[None],
        ]
        if lesion:
            scale = self._coherence_scale(cfg.hr_noise)
            design[:, k + 4] = scale * layout.hr_tumour_fraction().reshape(-1)
            design[:, k + 5] = scale * layout.mimic.reshape(-1)
            rows.append(self.lesion_directions(slide_key))
        basis = np.concatenate(rows).astype(np.float32)
        u = self._noise(self._rng(slide_key, _STREAM_U), (n * K_CHILD, d), cfg.hr_noise)
        u += design @ basis
        return u.reshape(n, K_CHILD, d)

    @staticmethod
    def _noise(rng: np.random.Generator, shape: tuple[int, int], sd: float) -> np.ndarray:
        """i.i.d. uniform noise with mean 0 and standard deviation ``sd`` (uniform is ~5x faster than
        normal draws; every projection onto a direction of R^d is a sum of d terms, hence near-normal)."""
        x = rng.random(shape, dtype=np.float32)
        x -= np.float32(0.5)
        x *= np.float32(sd * np.sqrt(12.0))
        return x

    def vlm_features(self, layout: SlideLayout, slide_key: int) -> np.ndarray:
        """``(N, e)`` float32 unit-norm simulated vision-language patch embeddings."""
        cfg = self.config
        rng = self._rng(slide_key, _STREAM_VLM)
        w_mean = layout.phenotype.astype(np.float32).mean(axis=1)
        t = layout.tumour_fraction()
        m = layout.mimic.astype(np.float32).mean(axis=1)
        lean = (
            cfg.vlm_tumour_lean * np.sqrt(t) * (1.0 + 0.3 * rng.standard_normal(layout.n))
            + cfg.vlm_mimic_lean * m
        )
        a0, a1 = self.text_anchors
        v = w_mean @ self.vlm_map + 0.5 * (a0 + a1) + lean[:, None].astype(np.float32) * (a1 - a0)
        v += cfg.vlm_noise * rng.standard_normal(v.shape).astype(np.float32)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
