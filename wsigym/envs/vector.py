"""``WSIZoomVectorEnv``: ``B`` zoom episodes stepped at once in torch (CPU or CUDA).

``gym.make_vec("WSIZoom-v0", num_envs=B, vectorization_mode="vector_entry_point", **kwargs)`` returns
it (``WSIZoomGlobal-v0`` / ``WSIZoomNoUpdate-v0`` likewise). It runs the same engine as ``WSIZoom-v0``
(:class:`~wsigym.envs.zoom_batch.ZoomBatch`) on a padded batch: one batched similarity scan, one
batched TSU call over all updated rows, one incremental classifier update and one reward computation
per step, for all ``B`` slides.

Semantics (Gymnasium 1.x):

- ``reset(seed=s)`` seeds sub-environment ``i`` with ``s + i`` (a list of seeds is accepted too), so
  it reproduces ``B`` independent ``WSIZoom-v0`` reset with seeds ``s .. s+B-1``;
  ``options={"reset_mask": (B,) bool}`` resets only those sub-environments; ``options={"slide_ids": [...]}``
  picks the slides.
- Autoreset ``NEXT_STEP`` (``metadata["autoreset_mode"]``): the step after an episode ends resets that
  sub-environment (a new slide drawn from its own generator) and ignores its action; it returns the
  new first observation, reward 0 and ``terminated = truncated = False``.
- ``info`` is a dict of arrays with ``_key`` masks: ``prediction (B,)``, ``probability (B, C)``,
  ``label``, ``zooms``, ``budget_steps``, ``ce``, ``action_mask (B, P)`` always; ``tsu_updates`` for
  the stepped sub-environments; ``hit_tumour``/``tumour_fraction`` where a patch was zoomed on a slide
  with ground truth.
- :meth:`action_masks` returns ``(B, P)`` bool.
- Actions must be an integer array of ``B`` elements (a float array raises ``TypeError``; nothing is
  truncated); illegal ones follow ``illegal_action`` as in ``WSIZoom-v0``, and ``info["zoomed"]`` /
  ``info["illegal_action"]`` say what each stepped sub-environment did.

Observations are numpy (``copy=True`` returns fresh arrays, ``copy=False`` shares the CPU state as
``SyncVectorEnv(copy=False)`` does).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from wsigym.envs.options import ZoomOptions, zoom_options
from wsigym.envs.render import render_episode
from wsigym.envs.zoom import EpisodeEnded, check_render_mode, choose_slide
from wsigym.envs.zoom_batch import ZoomBatch, observation_space, resolve_arguments


class WSIZoomVectorEnv(VectorEnv):
    """``num_envs`` ``WSIZoom`` episodes in one padded torch batch (module docstring).

    Takes the settings of :class:`~wsigym.envs.zoom.WSIZoomEnv` the same way (``options=ZoomOptions(...)``
    and / or keyword arguments, :mod:`wsigym.envs.options`; live slides as ``dataset=LiveSlides(...)``),
    ``copy`` instead of ``copy_obs``, plus ``num_envs``. Observation, action, reward and episode end are
    ``WSIZoom-v0``'s per sub-environment (module docstring for batching and autoreset). ``render()``
    returns the frames of all sub-environments stacked ``(B, H, W, 3)`` (``render_mode="rgb_array"``).
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["rgb_array"],
        "render_fps": 4,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        *,
        options: ZoomOptions | None = None,
        copy: bool = True,
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        check_render_mode(render_mode, self.metadata["render_modes"])
        #: the settings as given (:class:`~wsigym.envs.options.ZoomOptions`); ``config`` holds them resolved.
        self.options = zoom_options(options, kwargs, also=("num_envs", "copy", "render_mode"))
        source, hafed_model, tsu_model, config = resolve_arguments(self.options)
        self.num_envs = int(num_envs)
        self.config = config
        self.hafed, self.tsu, self.source = hafed_model, tsu_model, source
        self.batch = ZoomBatch(source, hafed_model, tsu_model, config, num_envs=self.num_envs)
        self.max_patches, self.dim = config.max_patches, source.dim
        self.copy = copy
        self.render_mode = render_mode
        self.single_observation_space = observation_space(self.max_patches, self.dim)
        self.single_action_space = spaces.Discrete(self.max_patches)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._rngs: list[np.random.Generator] = [seeding.np_random(None)[0] for _ in range(self.num_envs)]
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._started = False
        #: ``False``: ``reset``/``step`` return ``{}`` instead of the observation, for a learner that
        #: reads the engine directly (``batch``, ``batch.last_change``) and never the padded state.
        self.observe = True

    @property
    def slide_ids(self) -> list[str]:
        """Slide ids of the split, in split order."""
        return list(self.source.slide_ids)

    @property
    def np_random_generators(self) -> list[np.random.Generator]:
        """One generator per sub-environment (the slide draws)."""
        return self._rngs

    def _info(self) -> dict[str, Any]:
        raw = self.batch.infos()
        info: dict[str, Any] = {}
        every = np.ones(self.num_envs, dtype=bool)
        for key, value in raw.items():
            info[key] = value
            info[f"_{key}"] = every.copy()
        info["slide_id"] = np.array([self.source.slide_ids[k] for k in self.batch.slide], dtype=object)
        info["_slide_id"] = every.copy()
        return info

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset all (or ``options["reset_mask"]``) sub-environments; seeds ``seed + i``."""
        options = dict(options or {})
        mask = np.asarray(options.pop("reset_mask", np.ones(self.num_envs, dtype=bool)), dtype=bool)
        if mask.shape != (self.num_envs,):
            raise ValueError(f"options['reset_mask'] must have shape ({self.num_envs},), got {mask.shape}")
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"seed must be an int or a list of {self.num_envs} seeds, got {len(seeds)}")
        slide_ids = options.pop("slide_ids", None)
        envs = [int(i) for i in np.flatnonzero(mask)]
        for e in envs:
            if seeds[e] is not None or not self._started:
                self._rngs[e] = seeding.np_random(seeds[e])[0]
        slides = [
            choose_slide(
                self._rngs[e],
                len(self.source),
                self.source,
                {"slide_id": slide_ids[e]} if slide_ids else None,
            )
            for e in envs
        ]
        self.batch.load(envs, slides)
        self._autoreset[envs] = False
        self._started = True
        return self._observation(), self._info()

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every sub-environment; those that ended on the previous step are reset instead.

        Raises:
            TypeError: for actions that are not integers.
            ValueError: for an action outside the action space, or an illegal one with
                ``illegal_action="raise"`` (names the sub-environment).
        """
        if not self._started:
            raise EpisodeEnded("Cannot call WSIZoomVectorEnv.step() before calling reset()")
        resetting = self._autoreset.copy()
        active = ~resetting
        out, zoomed, illegal = self.batch.act(actions, active)
        if resetting.any():
            envs = [int(e) for e in np.flatnonzero(resetting)]
            self.batch.load(envs, [int(self._rngs[e].integers(len(self.source))) for e in envs])
        self._autoreset = out["terminated"] | out["truncated"]
        info = self._info()
        info["tsu_updates"], info["_tsu_updates"] = out["tsu_updates"], active.copy()
        info["zoomed"], info["_zoomed"] = zoomed, active.copy()
        info["illegal_action"], info["_illegal_action"] = illegal, active.copy()
        hit = out["has_truth"]
        if hit.any():
            tumour = self.batch.tumour_np[np.arange(self.num_envs), np.maximum(zoomed, 0)]
            info["hit_tumour"], info["_hit_tumour"] = out["hit_tumour"], hit.copy()
            info["tumour_fraction"] = np.where(hit, np.nan_to_num(tumour), 0.0)
            info["_tumour_fraction"] = hit.copy()
        return self._observation(), out["reward"], out["terminated"], out["truncated"], info

    def _observation(self) -> dict[str, np.ndarray]:
        return self.batch.observation(copy=self.copy) if self.observe else {}

    def action_masks(self) -> np.ndarray:
        """Legal actions ``(B, max_patches)`` bool (for an autoresetting sub-environment: its old episode's)."""
        return self.batch.action_masks()

    def render(self) -> np.ndarray | None:
        """``rgb_array``: the frames of all sub-environments ``(B, H, W, 3)`` (padded to one size)."""
        if self.render_mode is None:
            return None
        frames = [
            render_episode(
                self.batch, e, self.source.slide_ids[int(self.batch.slide[e])], self.source.class_names
            )
            for e in range(self.num_envs)
        ]
        h = max(f.shape[0] for f in frames)
        w = max(f.shape[1] for f in frames)
        out = np.full((len(frames), h, w, 3), 255, dtype=np.uint8)
        for i, f in enumerate(frames):
            out[i, : f.shape[0], : f.shape[1]] = f
        return out
