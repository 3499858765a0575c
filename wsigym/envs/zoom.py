"""``WSIZoom-v0``: SASHA's where-to-zoom MDP on one whole-slide image per episode (SASHA's transition by default)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from gymnasium.error import ResetNeeded

from wsigym.envs.options import ZoomOptions, zoom_options
from wsigym.envs.render import render_episode
from wsigym.envs.zoom_batch import ZoomBatch, coerce_action, observation_space, resolve_arguments


class WSIZoomEnv(gym.Env):
    r"""Choose which low-resolution patches of a slide to zoom into, under a budget.

    ## Description

    A slide is ``N`` low-res tissue patches with features ``Z (N, d)``. The state starts as
    ``S_0 = Z``. Zooming into patch ``a`` reveals its high-res row ``V(a)`` (HAFED level 1 on the
    ``k`` high-res children) and, with the Targeted State Update (TSU), updates the not-yet-updated
    patches whose state looks like ``a``'s. A frozen HAFED classifies the state at every
    step; the agent is rewarded for making it confident in the true label. This is SASHA's MDP
    (Tarun G et al., "SASHA: Sequential Attention-based Sampling for Histopathological Analysis",
    NeurIPS 2025, arXiv:2507.05077; official code github.com/coglabiisc/SASHA) as a Gymnasium
    environment, with the pitfalls of that public code fixed (one budget rule, the same masks in
    rollout and update, no bootstrapping past the budget).

    ## Action Space

    ``Discrete(max_patches)``: the index of the patch to zoom. Slides with ``N < max_patches`` are
    padded. The legal actions are exposed in all three conventions: :meth:`action_masks` (bool, for
    sb3-contrib's ``MaskablePPO``), ``info["action_mask"]`` (int8, Gymnasium style) and the
    observation key ``"action_mask"``. A patch is legal when it is real and not zoomed yet (and, with
    ``mask_updated=True``, not TSU-updated either).

    An action must be an integer: a Python or numpy integer, or a 0-d / 1-element integer array;
    floats, strings and bools raise ``TypeError`` (nothing is rounded). An index outside
    ``[0, max_patches)`` raises ``ValueError``. What an *illegal* index of the space (a padding index
    ``>= N``, an already zoomed patch) does is ``illegal_action``:

    - ``"remap"`` (**the default**): the first legal patch in the cyclic order ``c, c+1, ..., N-1, 0,
      ..., c-1`` from ``c = a mod N`` is zoomed instead (:meth:`ZoomBatch.legalise
      <wsigym.envs.zoom_batch.ZoomBatch.legalise>`);
    - ``"noop"``: nothing is zoomed, one budget step is spent, and the reward is the rule's reward
      for an unchanged state minus :data:`~wsigym.envs.zoom_batch.ILLEGAL_ACTION_PENALTY` (1.0);
    - ``"raise"``: ``ValueError`` naming the patch (the strict mode for debugging masked agents).

    Why ``"remap"`` by default: the action space is all of ``Discrete(P)``, and mask-unaware tools
    sample it uniformly (Gymnasium's and SB3's ``check_env``, plain SB3 ``PPO`` / ``A2C`` / ``DQN``);
    on synth-c16 ~74% of those samples are illegal. Remapped, every step zooms a real patch, so such
    agents see the environment's real dynamics and an episode always lasts its ``T`` zooms; masked
    agents never send an illegal action and behave exactly as with ``"raise"``. ``info`` tells
    what happened: ``zoomed`` (the patch zoomed, -1 for a no-op) and ``illegal_action`` (bool).

    ## Observation Space

    A ``Dict`` (``P = max_patches``, ``d`` = feature width):

    - ``"state"``: ``Box(-F, F, (P*d,), float32)`` with ``F`` the largest float32 (any finite value), the state ``S_t`` flattened row-major
      (``obs["state"].reshape(env.max_patches, env.dim)``); padding rows are 0. Flat because SB3's
      ``check_env`` warns on any Box that is neither 1-D nor an image, and a ``(1, P, d)`` "image"
      would be mis-handled. ``env.dim`` is ``d``; ``env.max_patches`` is ``P``.

    **Padding.** ``P`` defaults to the largest slide of the whole dataset, over every split and fold
    (:func:`wsigym.envs.padding.dataset_max_patches`), so environments on every split share one
    space and a policy trained on one split predicts on another. ``max_patches`` is recorded in
    ``env.spec.kwargs``. A smaller ``max_patches`` (down to the largest slide of the split) shrinks
    the observation for that split only.
    - ``"patch_mask"``: ``MultiBinary(P)`` int8, 1 for a real patch, 0 for padding.
    - ``"visited"``: ``MultiBinary(P)`` int8, 1 for a zoomed patch.
    - ``"updated"``: ``MultiBinary(P)`` int8, 1 for a zoomed or state-updated (TSU) patch.

    **What the agent sees** (``agent_view``). ``"state"`` (the default): the rows above are ``S_t``, the
    state the classifier reads. ``"lowres"``: ``"state"`` is ``Z`` at every step and ``"updated"``
    equals ``"visited"``, so the agent sees only its own picks, while the classifier and the reward
    still read ``S_t``: what SASHA's official global-update environment (``envs/WSI_env.py``) hands its
    agent. The structured PPO path then stores no changed row but the zoomed one, so a policy under
    the global rule trains at the cost of the no-update rule.
    - ``"coords"``: ``Box(0, 1, (P*2,), float32)``, patch corners ``(x, y)`` flattened row-major
      (``reshape(P, 2)``), normalised by the slide's extent (one scale for both axes); padding 0.
    - ``"budget"``: ``Box(0, 1, (1,), float32)``, remaining fraction of the zoom budget ``T``.
    - ``"action_mask"``: ``MultiBinary(P)`` int8, 1 where the patch may be zoomed now.

    ## Transition

    With ``a`` the zoomed patch (``update="tsu"``, the default; SASHA's step, ``envs/WSI_cosine_env.py``):
    ``C = {i valid : |cos(S_t(i), S_t(a))| >= tau}`` (signed ``cos`` when ``absolute_cosine=False``),
    ``C_new = C \ ({a} U updated)``, ``S(i) <- f_S([V(a), S_t(a), S_t(i)])`` for ``i`` in ``C_new``,
    ``S(a) <- V(a)``, ``updated <- updated U C U {a}``. Each row is TSU-updated at most once (so
    ``S_t(i) = Z(i)`` for every ``i`` in ``C_new``); zoomed rows always hold ``V``; the anchor row
    ``S_t(a)`` is a TSU output when ``a`` was updated by an earlier zoom. Tested against a
    transcription of SASHA's step (``tests/envs/test_zoom.py``).

    **What is SASHA's and what is not.** SASHA's: the rule above, ``tau = 0.95``, ``|cos|``, the order
    ``[V(a), S_t(a), S_t(i)]``, ``f_S`` as SASHA's ``FGlobal`` when the TSU config says
    ``residual: false`` (:mod:`zoo.models.tsu`), the ``-CE`` reward on logits, masking zoomed patches
    only. ``tau`` and ``absolute_cosine`` default to the TSU config's ``tau`` and ``similarity``, so a
    TSU trained by :mod:`zoo.train_tsu`'s defaults gives SASHA's ``|cos| >= 0.95``; the
    ``tsu-synth-c16`` weights shipped so far were trained with signed cosine and the residual ``f_S``
    (not SASHA's) and are used as trained. Not reproduced: SASHA's freeze once every patch is zoomed
    or updated (later zooms stop writing ``V(a)`` there), its train/inference budget mismatch, and the
    bugs of its global-update environment (:mod:`wsigym.envs.state_update` says why).
    Variants: ``update="tsu-lowres"`` (anchor from the low-res row: ``cos(Z_i, Z_a)`` and
    ``f_S([V(a), Z(a), Z(i)])``, the inputs ``f_S`` is trained on; v0.1's default),
    ``update="global"`` (``WSIZoomGlobal-v0``: every not-yet-zoomed row becomes
    ``f_S([V(a), Z(a), Z(i)])`` after every zoom; this project's reconstruction of RLogist's global
    update with the same ``f_S``) and ``update="none"`` (``WSIZoomNoUpdate-v0``: only ``S(a) <- V(a)``).
    See :mod:`wsigym.envs.state_update`.

    ## Rewards

    ``CE_t = CE(y, HAFED.classify(S_t))`` on logits. ``reward="ce"`` (SASHA's default):
    ``r = -CE_{t+1}`` every step; ``"delta_ce"``: ``r = CE_t - CE_{t+1}``; ``"delta_margin"``: the gain
    in HAFED's log-odds of the true class (does not saturate once the slide is classified; not SASHA's);
    ``"evidence"``: HAFED's probability of the label on the zoomed patch's high-res row alone, minus
    its mean over the slide's patches (the evidence the zoom reveals; not SASHA's, cached slides only);
    ``"terminal"``: 0 except ``-CE_T`` at the last step; ``"hit"`` (a diagnostic, not from HAFED): 1 when the zoomed patch holds
    tumour by the ground truth, else 0. The classifier is maintained incrementally
    (:mod:`wsigym.envs.classifier`), equal to a full ``classify`` to float tolerance.

    ## Starting State

    ``reset(seed=...)`` draws a slide of the split uniformly with ``self.np_random``;
    ``options={"slide_id": id}`` (or ``{"slide_index": k}``) picks one. ``S_0 = Z``, nothing zoomed.

    ## Episode End

    The budget is ``T = max(1, ceil(budget * N))`` zooms for every slide (SASHA trains with ``ceil``
    but infers with ``int``, which can be 0; here one rule everywhere, ``T <= N``). After the ``T``-th
    step the episode ends with ``terminated=True`` (``budget_end="terminate"``, the default: the
    remaining budget is part of the observation, so the end is part of the MDP and must not be
    bootstrapped; SASHA's fixed GAE also bootstraps 0) or ``truncated=True``
    (``budget_end="truncate"``). It also terminates early if no legal action is left (possible only
    with ``mask_updated=True``). Calling :meth:`step` after the end raises
    :class:`EpisodeEnded` (a ``gymnasium.error.ResetNeeded``, as Gymnasium's ``OrderEnforcing``
    raises before the first reset): call :meth:`reset` first.

    ## Info

    ``reset`` and ``step`` return ``prediction`` (int), ``probability`` ``(C,)`` float32, ``label``,
    ``zooms`` (budget steps spent), ``budget_steps`` (``T``), ``ce``, ``slide_id``, ``action_mask``
    ``(P,)`` int8; ``step`` adds ``zoomed`` (the patch zoomed, -1 for a no-op), ``illegal_action``
    (bool), ``tsu_updates`` (rows changed besides the zoomed one) and, when the slide has ground-truth
    tumour fractions, ``hit_tumour`` (bool: the zoomed patch has tumour fraction > 0) and
    ``tumour_fraction``.

    ## Arguments

    The settings are one :class:`~wsigym.envs.options.ZoomOptions` (its defaults are the ones
    below): pass ``options=ZoomOptions(...)``, keyword arguments (``gym.make("WSIZoom-v0",
    budget=0.1)``) or both (keyword arguments override fields of ``options``). An unknown keyword
    raises ``TypeError`` naming it and the valid names; a bad value raises ``ValueError``.
    ``env.options`` holds the settings as given, ``env.config`` resolved (``tau``, ``max_patches``...).

    - ``dataset=None``: a registered name, any folder the data layer reads, a ``SlideDataset``, or
      :class:`~wsigym.envs.live_source.LiveSlides` (see Live slides) (``None``: ``"synth-c16"``).
    - ``split="train"``, ``fold=0``: which slides.
    - ``budget=0.2``: zoom budget as a fraction of ``N`` (``0.1`` for SASHA-0.1), in ``(0, 1]``.
    - ``tau=None``: cosine threshold of the TSU, a finite number in ``[-1, 1]`` (``None``: the TSU
      config's ``tau``, 0.95).
    - ``update="tsu"``: ``"tsu"`` (SASHA's), ``"tsu-lowres"``, ``"global"`` or ``"none"`` (see Transition).
    - ``reward="ce"``: one of :data:`wsigym.envs.reward.REWARDS` (``"ce"``, ``"delta_ce"``,
      ``"delta_margin"``, ``"evidence"``, ``"terminal"``, ``"hit"``).
    - ``max_patches=None``: padded patch count ``P`` (``None``: the largest ``N`` of the dataset, see
      Padding; live slides: the largest of the given slides).
    - ``illegal_action="remap"``: ``"remap"``, ``"noop"`` or ``"raise"`` (see Action Space).
    - ``agent_view="state"``: ``"state"`` or ``"lowres"`` (see Observation Space).
    - ``hafed="hafed-synth-c16"``, ``tsu="tsu-synth-c16"``: pretrained names, Hub repos, folders or
      model instances (moved to ``device``, put in eval mode).
    - ``mask_updated=False``: also mask TSU-updated patches (the paper is ambiguous; SASHA's code masks
      zoomed patches only).
    - ``absolute_cosine=None``: ``|cos| >= tau`` (SASHA's code) instead of ``cos >= tau``;
      ``None`` follows the TSU config's ``similarity`` (``abs_cosine``, SASHA's, for newly trained
      weights; signed cosine for the ``tsu-synth-c16`` weights shipped so far).
    - ``budget_end="terminate"``: how the budget ends an episode (see Episode End).
    - ``device="cpu"``: torch device of the state and models (HAFED, ``f_S``).
    - ``progress=True``: progress bars while ``V`` of the split is computed (on first use, then read from
      the disk cache, :mod:`wsigym.envs.precompute_cache`) and read.

    Arguments of this class, not of the options:

    - ``copy_obs=True``: return fresh arrays; ``False`` shares ``state`` with the CPU buffer the
      next step overwrites (faster; as ``SyncVectorEnv(copy=False)``).
    - ``render_mode=None`` or ``"rgb_array"``: see :meth:`render`. There is no ``"human"`` window:
      constructing with it raises ``ValueError``; ``gym.make(..., render_mode="human")`` wraps the
      ``rgb_array`` frames in Gymnasium's ``HumanRendering``, which needs ``pygame``.

    ## Live slides

    ``gym.make("WSIZoom-v0", dataset=LiveSlides(slides, labels, encoder), hafed=..., tsu=...)`` reads
    whole-slide images instead of precomputed features (SASHA's inference path,
    :mod:`wsigym.envs.live_source`; the vector env and :func:`wsigym.evaluate.evaluate` take the same
    ``dataset``): the tissue and the patch grid of every slide are planned at construction, ``Z`` is
    encoded at the first reset on a slide (or read from ``cache_dir``), and each zoom reads the ``k``
    high-res children of the chosen patch from the slide, encodes them and aggregates them with HAFED
    level 1 into ``V(a)``. Same spaces, transitions, rewards and info. ``split`` and ``fold`` are not
    used; ``max_patches=None`` is the largest of the given slides. The settings of
    :class:`~wsigym.envs.live_source.LiveSlides`:

    - ``slides``: a folder, a slide file, or a list of files / ``SyntheticSlide`` (ids = file stems).
    - ``labels``: ``{slide_id: class name or index}`` or a ``slide_id,label`` CSV.
    - ``encoder``: a ``PatchEncoder`` or a spec (``"timm:vit_small_patch16_224"``); HAFED's and the
      TSU's ``in_dim`` must equal its ``dim``.
    - ``mpp=None``: microns per level-0 px for all slides or ``{slide_id: mpp}``; a slide without
      mpp or objective-power metadata raises a ``DataError`` asking for it.
    - ``class_names=None``, ``lr_mag=5``, ``hr_mag=20``, ``patch_size=256``, ``min_tissue=0.25``,
      ``tissue_kwargs=None``.
    - ``cache_dir=None``: a TRIDENT job folder for the plans and ``Z`` (None: memory only).
    - ``truth=None``: ``{slide_id: callable(coords, size_level0) or (N,) array}`` tumour fractions
      for ``hit_tumour`` (a ``SyntheticSlide`` brings its own).
    - ``remember_zooms=False``: keep ``V(a)`` in memory for later episodes on the same slide.
    - ``batch_size=32``: images per encoder call; ``memory_slides=64``: slides whose ``Z`` stay in memory.

    The keyword path of earlier versions still works and builds the same ``LiveSlides``:
    ``gym.make("WSIZoom-v0", slides=..., labels=..., encoder=..., hafed=..., tsu=...)`` (with
    ``dataset=`` too raises ``ValueError``).

    ``render()`` then draws on the slide's real thumbnail.

    Seeding: all randomness is the slide choice, drawn from ``self.np_random``.

    ## Version History

    - v0 (v0.2, constructor): the settings are one ``ZoomOptions`` (``options=`` or keyword arguments,
      which are now keyword-only; an unknown one raises ``TypeError``), and live slides are
      ``dataset=LiveSlides(...)`` (the ``slides=`` keywords still work). The MDP is unchanged.

    - v0 (v0.2, SASHA-faithful transition): ``update="tsu"`` takes similarity and the ``f_S`` anchor
      input from the current state row ``S_t(a)``, as SASHA's code; new TSU weights default to SASHA's
      ``f_S`` (LayerNorm MLP) and ``|cos|``, which the environment follows. The previous rule is
      ``update="tsu-lowres"``. Trajectories differ from v0.1 only after a zoom of a TSU-updated patch.
    - v0 (v0.1): first release; ``update="tsu"`` anchored on the low-res row ``Z(a)``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 4}
    _spec: EnvSpec | None = None

    def __init__(
        self,
        *,
        options: ZoomOptions | None = None,
        copy_obs: bool = True,
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        check_render_mode(render_mode, self.metadata["render_modes"])
        #: the settings as given (:class:`~wsigym.envs.options.ZoomOptions`); ``config`` holds them resolved.
        self.options = zoom_options(options, kwargs, also=("copy_obs", "render_mode"))
        source, hafed_model, tsu_model, config = resolve_arguments(self.options)
        self.config = config
        self.hafed, self.tsu = hafed_model, tsu_model
        self.source = source
        self.batch = ZoomBatch(source, hafed_model, tsu_model, config, num_envs=1)
        self.max_patches = config.max_patches
        self.dim = source.dim
        self.copy_obs = copy_obs
        self.render_mode = render_mode
        self.observation_space = observation_space(self.max_patches, self.dim)
        self.action_space = spaces.Discrete(self.max_patches)
        self._started = False
        self._ended = False

    @property
    def spec(self) -> EnvSpec | None:
        """The registration spec (set by ``gym.make``), with the resolved ``max_patches`` in its kwargs."""
        return self._spec

    @spec.setter
    def spec(self, value: EnvSpec | None) -> None:
        if value is not None and value.kwargs.get("max_patches") is None:
            value = dataclasses.replace(value, kwargs={**value.kwargs, "max_patches": self.max_patches})
        self._spec = value

    @property
    def slide_ids(self) -> list[str]:
        """Slide ids of the split, in split order."""
        return list(self.source.slide_ids)

    @property
    def slide_id(self) -> str:
        """Id of the current episode's slide."""
        return self.source.slide_ids[int(self.batch.slide[0])]

    def _obs(self) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.batch.observation(copy=self.copy_obs).items()}

    def _info(self) -> dict[str, Any]:
        raw = self.batch.infos()
        return {
            "prediction": int(raw["prediction"][0]),
            "probability": raw["probability"][0],
            "label": int(raw["label"][0]),
            "zooms": int(raw["zooms"][0]),
            "budget_steps": int(raw["budget_steps"][0]),
            "ce": float(raw["ce"][0]),
            "slide_id": self.slide_id,
            "action_mask": raw["action_mask"][0],
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode on a random slide of the split (or ``options["slide_id"|"slide_index"]``)."""
        super().reset(seed=seed)
        self.batch.load([0], [choose_slide(self.np_random, len(self.source), self.source, options)])
        self._started = True
        self._ended = False
        return self._obs(), self._info()

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Zoom into patch ``action`` (an illegal one is handled by ``illegal_action``).

        Raises:
            TypeError: for an action that is not an integer (see Action Space).
            ValueError: for an index outside the action space, or an illegal one with
                ``illegal_action="raise"``.
            EpisodeEnded: when called before :meth:`reset` or after the episode ended.
        """
        if not self._started:
            raise EpisodeEnded("Cannot call WSIZoomEnv.step() before calling reset()")
        if self._ended:
            raise EpisodeEnded(
                "Cannot call WSIZoomEnv.step() after the episode ended (terminated or truncated): "
                "call reset() first"
            )
        out, zoomed, illegal = self.batch.act(np.array([coerce_action(action)]), np.array([True]))
        info = self._info()
        info["zoomed"] = int(zoomed[0])
        info["illegal_action"] = bool(illegal[0])
        info["tsu_updates"] = int(out["tsu_updates"][0])
        if out["has_truth"][0]:
            info["hit_tumour"] = bool(out["hit_tumour"][0])
            info["tumour_fraction"] = float(self.batch.tumour_np[0, int(zoomed[0])])
        terminated, truncated = bool(out["terminated"][0]), bool(out["truncated"][0])
        self._ended = terminated or truncated
        return self._obs(), float(out["reward"][0]), terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        """Legal actions ``(max_patches,)`` bool, for sb3-contrib's ``MaskablePPO``."""
        return self.batch.action_masks()[0]

    def attention(self) -> np.ndarray:
        """HAFED's branch-averaged attention on the current state ``(max_patches,)``."""
        return self.batch.attention()[0]

    def render(self) -> np.ndarray | None:
        """``rgb_array``: an ``H x W x 3`` uint8 image of the slide grid (see :func:`wsigym.envs.render.render_episode`):
        tissue, zoomed patches numbered in order, TSU-updated patches, HAFED's current attention and
        the ground-truth tumour outline when known. ``None`` without a render mode."""
        if self.render_mode is None:
            gym.logger.warn("WSIZoomEnv.render() called without a render_mode; pass render_mode='rgb_array'")
            return None
        if not self._started:
            raise RuntimeError("WSIZoomEnv.render() called before reset()")
        return render_episode(self.batch, 0, title=self.slide_id, class_names=self.source.class_names)


class EpisodeEnded(ResetNeeded, RuntimeError):
    """``step()`` before the first ``reset()`` or after the episode ended (Gymnasium's ``ResetNeeded``)."""


def check_render_mode(render_mode: str | None, modes: Sequence[str]) -> None:
    """Raise one clear ``ValueError`` for a render mode the environments do not have.

    Raises:
        ValueError: naming the mode and what to use instead.
    """
    if render_mode is None or render_mode in modes:
        return
    hint = (
        " (WSIZoom opens no window: render_mode='rgb_array' returns the frame as an array, "
        "show it with e.g. matplotlib's imshow)"
        if render_mode == "human"
        else ""
    )
    raise ValueError(f"render_mode must be None or one of {list(modes)}, got {render_mode!r}{hint}")


def choose_slide(rng: np.random.Generator, count: int, source: Any, options: dict[str, Any] | None) -> int:
    """The slide position of a new episode: ``options["slide_id"]`` / ``["slide_index"]`` or a uniform draw."""
    if options:
        if options.get("slide_id") is not None:
            return source.index_of(str(options["slide_id"]))
        if options.get("slide_index") is not None:
            return source.index_of(int(options["slide_index"]))
    return int(rng.integers(count))
