r"""The zoom MDP of ``B`` slides at once: the engine behind ``WSIZoom-v0`` (``B = 1``) and the vector env.

:class:`ZoomBatch` keeps ``B`` episodes as torch tensors on one device: their state rows packed into one
buffer with their norms and flags (:class:`~wsigym.envs.state_update.ZoomBatchState`), each environment's
low-res rows ``Z`` as its slide source holds them, the incremental HAFED classifier and the per-episode
counters. A step
validates the ``B`` actions, applies the update rule (:mod:`wsigym.envs.state_update`) to all
active episodes at once, updates the classifier sums
(:class:`~wsigym.envs.classifier.IncrementalAttentionClassifier`) and computes the rewards
(:mod:`wsigym.envs.reward`). Both environments are thin wrappers, so they cannot disagree.

**Rows held: the real ones, packed.** Every per-row tensor of the ``B`` episodes (state, norms,
flags, the classifier's row logits) is packed along one axis: each environment owns a slot of its own
slide's rows (:mod:`wsigym.envs.row_slots`), so the ``d``-wide storage and every per-row computation
(similarity scan, classifier, update rules) follow the current slides' real rows, not ``B`` times the
largest of them nor the dataset's largest slide ``P``. ``Z`` is not copied: each environment keeps its
slide's rows as the source holds them. Only what the Gymnasium spaces fix is ``P`` wide: the ``(B, P)``
host masks (the action space is ``Discrete(P)``) and, when someone asks for an observation, its ``state``
buffer ``(B, P*d)``. That buffer is built on the first :meth:`ZoomBatch.observation` and then kept
current row by row (the rows a load or a step writes), so ``observation(copy=False)`` hands it out
without copying the state; a learner that reads the engine directly (the structured PPO path,
``observe=False``) never allocates it.

The observation layout (one episode; :func:`observation_space`):

==================  =========================  ================================================
key                 space                      meaning
==================  =========================  ================================================
``state``           ``Box(-F, F, (P*d,))``     the state ``S_t`` row-major, padding rows 0;
                                               ``obs["state"].reshape(P, d)``
``patch_mask``      ``MultiBinary(P)`` int8    1 for a real patch, 0 for padding
``visited``         ``MultiBinary(P)`` int8    1 for a zoomed patch
``updated``         ``MultiBinary(P)`` int8    1 for a zoomed or state-updated (TSU) patch
``coords``          ``Box(0, 1, (P*2,))``      normalised ``(x, y)`` corners, row-major;
                                               ``obs["coords"].reshape(P, 2)``
``budget``          ``Box(0, 1, (1,))``        remaining fraction of the zoom budget ``T``
``action_mask``     ``MultiBinary(P)`` int8    1 where the patch may be zoomed now
==================  =========================  ================================================

**Why flat.** ``state`` and ``coords`` are per-patch matrices, but they are stored flat: SB3's
``check_env`` warns on any ``Box`` that is neither 1-D nor an image (``len(shape) not in (1, 3)``),
a 3-D ``(1, P, d)`` would be mistaken for an image (channel checks, transposition), and SB3 flattens
Dict entries for its default policies anyway. ``reshape(P, -1)`` is a free view; the per-patch
policy (:mod:`wsigym.agents.policy`) does exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from wsigym.envs.classifier import IncrementalAttentionClassifier
from wsigym.envs.live_source import LiveSlides, LiveSlideSource
from wsigym.envs.options import ZoomOptions
from wsigym.envs.padding import dataset_max_patches
from wsigym.envs.reward import RewardRule, cross_entropy, patch_evidence, reward, reward_rule
from wsigym.envs.slide_source import SlideSource, budget_steps, resolve_model, slide_source
from wsigym.envs.state_update import RULES_WITH_TSU, UPDATE_RULES, StateChange, ZoomBatchState

OBSERVATION_KEYS = ("state", "patch_mask", "visited", "updated", "coords", "budget", "action_mask")
#: Subtracted from the reward of an illegal action under ``illegal_action="noop"``.
ILLEGAL_ACTION_PENALTY = 1.0
#: Bound of the ``state`` Box: any finite float32 (Gymnasium's checker warns on infinite bounds).
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: A zoomed patch counts as a tumour hit when its ground-truth tumour fraction exceeds this.
TUMOUR_HIT_FRACTION = 0.0


def observation_space(max_patches: int, dim: int) -> spaces.Dict:
    """The observation space of one episode (see the module docstring)."""
    p = int(max_patches)
    return spaces.Dict(
        {
            "state": spaces.Box(-FLOAT32_MAX, FLOAT32_MAX, (p * dim,), np.float32),
            "patch_mask": spaces.MultiBinary(p),
            "visited": spaces.MultiBinary(p),
            "updated": spaces.MultiBinary(p),
            "coords": spaces.Box(0.0, 1.0, (p * 2,), np.float32),
            "budget": spaces.Box(0.0, 1.0, (1,), np.float32),
            "action_mask": spaces.MultiBinary(p),
        }
    )


@dataclass
class ZoomConfig:
    """The resolved settings the engine runs on: :class:`~wsigym.envs.options.ZoomOptions` with
    ``tau``, ``absolute_cosine`` and ``max_patches`` filled in from the models and the slides."""

    budget: float
    tau: float
    update: str
    reward: str | RewardRule
    max_patches: int
    mask_updated: bool
    absolute_cosine: bool
    budget_end: str
    illegal_action: str = ZoomOptions.illegal_action
    agent_view: str = ZoomOptions.agent_view


def coerce_action(action: Any) -> int:
    """One action as an ``int``: a Python or numpy integer, or a 0-d / 1-element integer array.

    Raises:
        TypeError: for anything else (floats, strings, bools, arrays of another size or dtype),
            naming what was given; nothing is rounded or parsed.
    """
    if isinstance(action, (bool, np.bool_)):
        raise TypeError(f"action must be an integer patch index, got the bool {action!r}")
    if isinstance(action, (int, np.integer)):
        return int(action)
    if isinstance(action, np.ndarray) and action.size == 1 and action.ndim <= 1:
        if np.issubdtype(action.dtype, np.integer):
            return int(action.reshape(()))
        raise TypeError(f"action must be an integer patch index, got an array of dtype {action.dtype}")
    raise TypeError(
        f"action must be an integer patch index (int, numpy integer or a 1-element integer array), "
        f"got {type(action).__name__} {action!r}"
    )


def coerce_actions(actions: Any, num_envs: int) -> np.ndarray:
    """``num_envs`` actions as int64 ``(B,)`` from an integer array-like of ``B`` elements.

    Raises:
        TypeError: for a float, bool, string or object array (nothing is truncated).
        ValueError: for the wrong number of actions.
    """
    arr = np.asarray(actions)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"actions must be integer patch indices, got an array of dtype {arr.dtype} "
            f"(floats are not truncated: cast with .astype(np.int64) if that is what you mean)"
        )
    if arr.size != num_envs:
        raise ValueError(f"expected {num_envs} actions (one per environment), got shape {arr.shape}")
    return arr.astype(np.int64).reshape(num_envs)


def resolve_arguments(
    options: ZoomOptions,
) -> tuple[SlideSource | LiveSlideSource, torch.nn.Module, torch.nn.Module | None, ZoomConfig]:
    """Load the models and the slides of ``options`` and resolve its ``None`` defaults.

    ``options.dataset`` as :class:`~wsigym.envs.live_source.LiveSlides` reads the slides live
    (``split`` and ``fold`` are not used); ``None`` is :data:`~wsigym.envs.options.DEFAULT_DATASET`.
    The values themselves are checked when ``options`` is built (:class:`ZoomOptions`).

    Raises:
        ValueError: naming the argument and what was expected.
    """
    o = options
    tau, absolute_cosine, max_patches = o.tau, o.absolute_cosine, o.max_patches
    device = torch.device(o.device)
    hafed_key = o.hafed if not isinstance(o.hafed, (str, Path)) else str(o.hafed)
    hafed_model = resolve_model(o.hafed, "hafed", "hafed").to(device).eval()
    tsu_model = None
    if o.update in RULES_WITH_TSU or tau is None or absolute_cosine is None:
        tsu_model = resolve_model(o.tsu, "tsu", "tsu").to(device).eval()
    if tau is None:
        tau = float(tsu_model.config.tau)
    if absolute_cosine is None:
        absolute_cosine = (
            tsu_model is not None and getattr(tsu_model.config, "similarity", "cosine") == "abs_cosine"
        )
    if tsu_model is not None and tsu_model.config.in_dim != hafed_model.config.in_dim:
        raise ValueError(
            f"tsu has in_dim={tsu_model.config.in_dim} but hafed has in_dim={hafed_model.config.in_dim}"
        )
    if isinstance(o.dataset, LiveSlides):
        source: SlideSource | LiveSlideSource = o.dataset.source(hafed_model, device, o.progress)
        where = "of the live slides"
        if max_patches is None:
            max_patches = source.max_n
    else:
        source = slide_source(
            o.dataset_or_default, o.split, o.fold, hafed_model, hafed_key, device, o.progress
        )
        where = f"of split {o.split!r}"
        if max_patches is None:
            max_patches = max(source.max_n, dataset_max_patches(source.dataset))
    if int(max_patches) < source.max_n:
        big = source.slide_ids[int(np.argmax(source.n_list))]
        raise ValueError(
            f"max_patches={max_patches} is smaller than the largest slide {where} "
            f"({big!r} has {source.max_n} patches)"
        )
    config = ZoomConfig(
        budget=float(o.budget),
        tau=float(tau),
        update=o.update,
        reward=o.reward,
        max_patches=int(max_patches),
        mask_updated=bool(o.mask_updated),
        absolute_cosine=bool(absolute_cosine),
        budget_end=o.budget_end,
        illegal_action=o.illegal_action,
        agent_view=o.agent_view,
    )
    return source, hafed_model, tsu_model, config


def _zoomed_rows(
    st: ZoomBatchState, change: StateChange, anchors: torch.Tensor, active: torch.Tensor
) -> StateChange:
    """``change`` as an agent that observes ``Z`` sees it: only the zoomed rows, unchanged in value."""
    env = active.nonzero().squeeze(-1)
    row = anchors[env]
    z = st.lowres_rows(env, row)
    return StateChange(env=env, row=row, old=z, new=z, tsu_count=change.tsu_count)


class ZoomBatch:
    """``B`` zoom episodes stepped together (module docstring).

    Args:
        source: the slides.
        hafed: frozen HAFED (eval mode) on ``source.device``.
        tsu: frozen ``f_S`` (eval mode) or None for ``update="none"``.
        config: resolved options.
        num_envs: ``B``.
    """

    def __init__(
        self,
        source: SlideSource | LiveSlideSource,
        hafed: torch.nn.Module,
        tsu: torch.nn.Module | None,
        config: ZoomConfig,
        num_envs: int,
    ) -> None:
        self.source, self.hafed, self.tsu, self.config = source, hafed, tsu, config
        self.num_envs = b = int(num_envs)
        self.max_patches = p = config.max_patches
        self.dim = d = source.dim
        dev = self.device = source.device
        #: The packed rows of the current episodes (module docstring). On CUDA one product over every
        #: row beats a gathered scan per environment, so only the CPU scans the pending rows.
        self.tensors = ZoomBatchState.empty(b, d, dev, pending=torch.device(dev).type == "cpu")
        self.classifier = IncrementalAttentionClassifier(hafed, b, dev)
        #: The observed ``state`` ``(B, P, d)``, built on the first :meth:`observation` (module docstring).
        self._observed: np.ndarray | None = None
        self.rule = UPDATE_RULES[config.update]
        # host-side per-episode bookkeeping
        self.slide = np.zeros(b, dtype=np.int64)
        self.n = np.zeros(b, dtype=np.int64)
        self.steps_budget = np.ones(b, dtype=np.int64)
        self.zooms = np.zeros(b, dtype=np.int64)
        self.labels = torch.zeros(b, dtype=torch.long, device=dev)
        self.order = np.full((b, p), -1, dtype=np.int64)  # zoom order of each patch, -1 if not zoomed
        self.valid_np = np.zeros((b, p), dtype=np.int8)
        self.visited_np = np.zeros((b, p), dtype=np.int8)
        self.updated_np = np.zeros((b, p), dtype=np.int8)
        self.coords_np = np.zeros((b, p * 2), dtype=np.float32)
        self.tumour_np = np.full((b, p), np.nan, dtype=np.float32)
        self.ce = torch.zeros(b, dtype=torch.float32, device=dev)
        self.logits = torch.zeros(b, hafed.config.num_classes, device=dev)
        #: The reward rule (:mod:`wsigym.envs.reward`); its ``needs`` say which extra inputs to compute.
        self.reward_rule = reward_rule(config.reward)
        self.evidence = self._evidence() if "evidence" in self.reward_rule.needs else None
        #: The rows the last :meth:`step` wrote (torch, on the engine's device): what a learner that
        #: stores episodes as their changed rows reads (:mod:`wsigym.agents.segments`).
        self.last_change: StateChange | None = None
        #: The same rows as the agent observes them: ``last_change`` with ``agent_view="state"``; with
        #: ``"lowres"`` only the zoomed rows (now visited), whose observed value stays ``Z``.
        self.seen_change: StateChange | None = None

    def _evidence(self) -> torch.Tensor:
        """For a reward rule that needs ``"evidence"``: HAFED's probabilities on every oracle row alone
        minus their mean over the row's slide, ``(sum N, C)`` (:func:`~wsigym.envs.reward.patch_evidence`)."""
        if not isinstance(self.source, SlideSource):
            raise ValueError(
                f"reward={self.reward_rule.name!r} needs the oracle rows V of every patch, "
                "which live slides do not precompute"
            )
        n = torch.as_tensor(self.source.n_list, device=self.device)
        slide = torch.repeat_interleave(torch.arange(len(n), device=self.device), n)  # (sum N,)

        def compute() -> torch.Tensor:
            probs = patch_evidence(self.hafed, self.source.v)
            mean = probs.new_zeros(len(n), probs.shape[1]).index_add(0, slide, probs) / n[:, None]
            return probs - mean[slide]

        if getattr(self.source, "content_key", None) is None:  # V not disk-cached: neither is this
            return compute()
        from wsigym.data.content_digest import sha256_hex  # deferred: only the disk-cached path needs it
        from wsigym.envs.precompute_cache import cached_array, module_digest

        key = sha256_hex("evidence", self.source.content_key, module_digest(self.hafed))
        table = cached_array(
            "evidence",
            key,
            (int(n.sum()), int(self.hafed.config.num_classes)),
            lambda: compute().cpu().numpy(),
            f"the evidence table of {self.source.dataset.name}/{self.source.split}",
        )
        return torch.as_tensor(table, device=self.device)

    # ------------------------------------------------------------------ episodes
    @torch.no_grad()
    def load(self, envs: list[int], slides: list[int]) -> None:
        """Start new episodes: environment ``envs[j]`` on slide position ``slides[j]``."""
        if not envs:
            return
        src, t = self.source, self.tensors
        episodes = [src.episode_arrays(k) for k in slides]  # (Z, coords, tumour) each
        if "hit" in self.reward_rule.needs:
            for k, (_, _, tumour) in zip(slides, episodes, strict=True):
                if not np.isfinite(np.asarray(tumour, dtype=np.float32)).all():
                    name = src.slide_ids[k] if hasattr(src, "slide_ids") else f"#{k}"
                    raise ValueError(
                        f"reward={self.reward_rule.name!r} needs tumour ground truth, and slide {name!r} has none"
                    )
        relocation = t.load(envs, [z for z, _, _ in episodes])
        if relocation is not None:
            self.classifier.relocate(relocation)
        for e, k, (z, coords, tumour) in zip(envs, slides, episodes, strict=True):
            n, previous = src.n_list[k], int(self.n[e])
            self.n[e] = n
            self.slide[e] = k
            if self._observed is not None:  # the rows this episode observes now
                self._observed[e, n:previous] = 0.0
                self._observed[e, :n] = z.cpu().numpy()
            self.steps_budget[e] = budget_steps(n, self.config.budget)
            self.zooms[e] = 0
            self.labels[e] = src.labels[k]
            self.order[e] = -1
            self.valid_np[e] = 0
            self.valid_np[e, :n] = 1
            self.visited_np[e] = 0
            self.updated_np[e] = 0
            self.coords_np[e] = 0.0
            self.coords_np[e, : 2 * n] = coords.reshape(-1)
            self.tumour_np[e] = np.nan
            self.tumour_np[e, :n] = tumour
        idx = torch.as_tensor(envs, dtype=torch.long, device=self.device)
        self.classifier.refresh(idx, t)
        logits = self.classifier.logits()
        self.logits[idx] = logits[idx]
        self.ce[idx] = cross_entropy(logits[idx], self.labels[idx])

    def action_masks(self) -> np.ndarray:
        """Legal actions ``(B, P)`` bool: real, not zoomed (and not updated with ``mask_updated``)."""
        taken = self.updated_np if self.config.mask_updated else self.visited_np
        return (self.valid_np == 1) & (taken == 0)

    def _where(self, e: int) -> str:
        return f" (environment {e})" if self.num_envs > 1 else ""

    def check_range(self, actions: np.ndarray, active: np.ndarray) -> None:
        """Raise ``ValueError`` for an action of an ``active`` episode outside ``Discrete(P)``."""
        outside = active & ((actions < 0) | (actions >= self.max_patches))
        if outside.any():
            e = int(np.flatnonzero(outside)[0])
            raise ValueError(f"action {actions[e]} is outside Discrete({self.max_patches}){self._where(e)}")

    def check_actions(self, actions: np.ndarray, active: np.ndarray) -> None:
        """Raise ``ValueError`` for an action that is not a legal patch index of its episode (the first
        such environment is named)."""
        self.check_range(actions, active)
        legal = self.action_masks()[np.arange(self.num_envs), np.where(active, actions, 0)]
        bad = active & ~legal
        if not bad.any():
            return
        e = int(np.flatnonzero(bad)[0])
        a, where = actions[e], self._where(e)
        if not self.valid_np[e, a]:
            raise ValueError(
                f"action {a} is a padding index{where}: the slide has {self.n[e]} patches (0..{self.n[e] - 1})"
            )
        what = "already zoomed" if self.visited_np[e, a] else "already updated (mask_updated=True)"
        raise ValueError(f"action {a}: patch {a} is {what}{where}; see action_masks() / info['action_mask']")

    def legalise(self, actions: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply ``config.illegal_action`` to int64 ``actions (B,)`` of the ``active`` episodes.

        Returns ``(actions, illegal)``: the actions to zoom (remapped under ``"remap"``) and a bool
        ``(B,)`` mask of the active episodes whose action was illegal. An index outside
        ``[0, P)`` is not an action of the space and raises under every option.

        **Remap rule.** An illegal action ``a`` becomes the first legal patch in the cyclic order
        ``c, c+1, ..., N-1, 0, ..., c-1`` with ``c = a mod N`` (``N`` the slide's real patches): a
        padding index folds onto the slide, a zoomed patch moves to the next unzoomed one.

        Raises:
            ValueError: for an index outside the action space, or any illegal action under
                ``illegal_action="raise"`` (:meth:`check_actions`).
        """
        if self.config.illegal_action == "raise":
            self.check_actions(actions, active)
            return actions, np.zeros(self.num_envs, dtype=bool)
        self.check_range(actions, active)
        legal = self.action_masks()
        illegal = active & ~legal[np.arange(self.num_envs), np.where(active, actions, 0)]
        if self.config.illegal_action == "remap" and illegal.any():
            actions = actions.copy()
            for e in np.flatnonzero(illegal):
                choices = np.flatnonzero(legal[e])
                start = actions[e] % self.n[e]
                actions[e] = choices[np.searchsorted(choices, start) % len(choices)]
        return actions, illegal

    @torch.no_grad()
    def skip(self, skipped: np.ndarray) -> dict[str, np.ndarray]:
        """The illegal actions of ``illegal_action="noop"``: nothing is zoomed, one budget step is spent.

        The reward is the rule's reward for an unchanged state (``-CE_t`` for ``"ce"``, 0 for the
        ``delta_*``, ``"evidence"`` and ``"hit"`` rules, ``-CE_T`` at the end for ``"terminal"``)
        minus :data:`ILLEGAL_ACTION_PENALTY`. ``zooms`` counts the spent budget steps, no-ops included.
        Returns the arrays of :meth:`step`.
        """
        b = self.num_envs
        out = {
            "reward": np.zeros(b, dtype=np.float64),
            "terminated": np.zeros(b, dtype=bool),
            "truncated": np.zeros(b, dtype=bool),
            "hit_tumour": np.zeros(b, dtype=bool),
            "has_truth": np.zeros(b, dtype=bool),
            "tsu_updates": np.zeros(b, dtype=np.int64),
        }
        if not skipped.any():
            return out
        idx = np.flatnonzero(skipped)
        self.zooms[idx] += 1
        budget_done = skipped & (self.zooms >= self.steps_budget)
        if self.config.budget_end == "terminate":
            out["terminated"] = budget_done
        else:
            out["truncated"] = budget_done
        dev = self.device
        zeros = torch.zeros(b, device=dev)
        r = reward(
            self.reward_rule,
            self.logits,
            self.logits,
            self.labels,
            torch.as_tensor(budget_done, device=dev),
            hit=zeros.bool(),
            evidence=zeros,
        )
        out["reward"] = np.where(skipped, r.double().cpu().numpy() - ILLEGAL_ACTION_PENALTY, 0.0)
        return out

    def act(self, actions: Any, active: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """One step of the environments' contract: coerce, apply ``illegal_action``, then zoom.

        Returns ``(out, actions, illegal)``: :meth:`step`'s arrays (merged with :meth:`skip`'s for
        no-ops), the int64 actions zoomed (remapped ones included; -1 for a no-op or an inactive
        episode) and the bool mask of illegal actions.
        """
        actions = coerce_actions(actions, self.num_envs)
        active = np.asarray(active, dtype=bool).reshape(self.num_envs)
        actions, illegal = self.legalise(actions, active)  # what remains to zoom is legal
        if self.config.illegal_action != "noop":
            out = self._zoom(actions, active)
            return out, np.where(active, actions, -1), illegal
        zoom = active & ~illegal
        out = self._zoom(np.where(zoom, actions, 0), zoom)
        skipped = self.skip(active & illegal)
        for key, value in skipped.items():
            out[key] = np.where(illegal, value, out[key])
        return out, np.where(zoom, actions, -1), illegal

    def step(self, actions: np.ndarray, active: np.ndarray) -> dict[str, np.ndarray]:
        """Zoom ``actions[e]`` in every ``active`` episode ``e``.

        Returns numpy arrays ``(B,)``: ``reward``, ``terminated``, ``truncated``, ``hit_tumour``
        (bool), ``has_truth`` (bool), ``tsu_updates`` (rows updated by the rule); inactive entries are 0.

        Raises:
            ValueError: for an illegal action (padding index, already zoomed patch).
        """
        actions = coerce_actions(actions, self.num_envs)
        active = np.asarray(active, dtype=bool).reshape(self.num_envs)
        self.check_actions(actions, active)
        return self._zoom(actions, active)

    @torch.no_grad()
    def _zoom(self, actions: np.ndarray, active: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`step` for int64 ``actions`` already checked legal."""
        self.last_change = self.seen_change = None  # a step with no active episode writes no row
        out = {
            "reward": np.zeros(self.num_envs, dtype=np.float64),
            "terminated": np.zeros(self.num_envs, dtype=bool),
            "truncated": np.zeros(self.num_envs, dtype=bool),
            "hit_tumour": np.zeros(self.num_envs, dtype=bool),
            "has_truth": np.zeros(self.num_envs, dtype=bool),
            "tsu_updates": np.zeros(self.num_envs, dtype=np.int64),
        }
        if not active.any():
            return out
        t, src, dev = self.tensors, self.source, self.device
        act_idx = np.flatnonzero(active)
        anchors_np = np.where(active, actions, 0)
        anchors = torch.as_tensor(anchors_np, device=dev)
        active_t = torch.as_tensor(active, device=dev)
        v_anchor = src.oracle(self.slide[act_idx], actions[act_idx])  # cached rows, or read live
        change = self.rule(
            t,
            anchors,
            active_t,
            v_anchor,
            self.tsu,
            tau=self.config.tau,
            absolute_cosine=self.config.absolute_cosine,
        )
        self.last_change = change
        self.seen_change = (
            change if self.config.agent_view == "state" else _zoomed_rows(t, change, anchors, active_t)
        )
        self.classifier.update(change, t)
        logits = self.classifier.logits()
        ce_after = cross_entropy(logits, self.labels)
        # bookkeeping on the host
        self.order[act_idx, actions[act_idx]] = self.zooms[act_idx]
        self.zooms[act_idx] += 1
        self.visited_np[act_idx, actions[act_idx]] = 1
        changed = change.env.cpu().numpy(), change.row.cpu().numpy()
        self.updated_np[changed] = 1  # the rows a rule writes are the rows it marks updated
        if self._observed is not None and self.config.agent_view == "state":  # Z rows do not change
            self._observed[changed] = change.new.cpu().numpy()
        no_legal = ~self.action_masks().any(axis=1)
        budget_done = self.zooms >= self.steps_budget
        done = active & (budget_done | no_legal)
        if self.config.budget_end == "terminate":
            out["terminated"] = done
        else:
            out["truncated"] = active & budget_done
            out["terminated"] = active & no_legal & ~budget_done
        tumour = self.tumour_np[np.arange(self.num_envs), anchors_np]
        out["has_truth"] = active & np.isfinite(tumour)
        out["hit_tumour"] = out["has_truth"] & (tumour > TUMOUR_HIT_FRACTION)  # NaN compares False
        hit = torch.as_tensor(out["hit_tumour"], device=dev) if "hit" in self.reward_rule.needs else None
        evidence = None
        if self.evidence is not None:  # the zoomed rows' centred evidence for the slide label
            flat = torch.as_tensor(src.offsets_list_np[self.slide] + anchors_np, device=dev)
            evidence = self.evidence[flat, self.labels]
        done_t = torch.as_tensor(done, device=dev)
        r = reward(self.reward_rule, self.logits, logits, self.labels, done_t, hit, evidence)
        out["reward"] = np.where(active, r.double().cpu().numpy(), 0.0)
        out["tsu_updates"] = np.where(active, change.tsu_count.cpu().numpy(), 0)
        keep = active_t.unsqueeze(-1)
        self.logits = torch.where(keep, logits, self.logits)
        self.ce = torch.where(active_t, ce_after, self.ce)
        return out

    # ------------------------------------------------------------------ views
    def observation(self, copy: bool = True) -> dict[str, np.ndarray]:
        """Batched observation ``{key: (B, ...)}`` (module docstring). ``copy=False`` may share memory
        with the engine's observation buffers, which the next step overwrites."""
        b = self.num_envs
        lowres = self.config.agent_view == "lowres"
        if self._observed is None:  # built once, then kept current by load() and step()
            t = self.tensors
            self._observed = np.zeros((b, self.max_patches, self.dim), dtype=np.float32)
            for e, n in enumerate(self.n.tolist()):
                self._observed[e, :n] = (t.z[e] if lowres else t.rows(e)).cpu().numpy()
        state_np = self._observed.reshape(b, -1)
        if copy:  # np.zeros is calloc'd: only the real rows are written, the padding stays zero pages
            state_np = np.zeros(state_np.shape, dtype=state_np.dtype)
            for e, n in enumerate(self.n.tolist()):
                state_np[e, : n * self.dim] = self._observed[e, :n].reshape(-1)
        taken = self.updated_np if self.config.mask_updated else self.visited_np
        remaining = (self.steps_budget - self.zooms) / self.steps_budget
        return {
            "state": state_np,
            "patch_mask": self.valid_np.copy() if copy else self.valid_np,
            "visited": self.visited_np.copy(),
            "updated": (self.visited_np if lowres else self.updated_np).copy(),
            "coords": self.coords_np.copy() if copy else self.coords_np,
            "budget": np.clip(remaining, 0.0, 1.0).astype(np.float32).reshape(b, 1),
            "action_mask": (self.valid_np & (1 - taken)).astype(np.int8),
        }

    def infos(self) -> dict[str, np.ndarray]:
        """Per-episode facts ``{key: (B, ...)}``: prediction, probability, label, zooms, budget_steps, ce."""
        probs = torch.softmax(self.logits.float(), dim=-1).cpu().numpy()
        return {
            "prediction": probs.argmax(-1).astype(np.int64),
            "probability": probs.astype(np.float32),
            "label": self.labels.cpu().numpy(),
            "zooms": self.zooms.copy(),
            "budget_steps": self.steps_budget.copy(),
            "ce": self.ce.double().cpu().numpy(),
            "action_mask": self.observation_masks(),
        }

    def observation_masks(self) -> np.ndarray:
        """``action_mask`` as int8 ``(B, P)``."""
        return self.action_masks().astype(np.int8)

    def attention(self) -> np.ndarray:
        """HAFED's branch-averaged attention on the current states ``(B, P)``."""
        return self.classifier.attention(self.tensors, self.max_patches).cpu().numpy()
