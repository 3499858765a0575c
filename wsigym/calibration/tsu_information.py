r"""What the state update tells HAFED: measured on a dataset with per-patch ground truth.

Three measurements, each run with the environment's own update rules
(:data:`wsigym.envs.state_update.UPDATE_RULES`) on the frozen HAFED / ``f_S`` an environment uses:

**Same-kind rate** (:func:`update_agreement`). From a fresh state, zoom one anchor patch ``a`` and
take the rows the TSU writes, ``C_new(a)``. Each patch has a *kind*: ``tumour`` (tumour area > 0),
``mimic`` (tumour-mimicking benign tissue, where the dataset records it) or ``other``. The rate is

.. math:: r_k = \operatorname{mean}_{a \text{ of kind } k}\;
          \frac{|\{ i \in C_{new}(a) : \text{kind}(i) = k \}|}{|C_{new}(a)|}

next to the base rate of kind ``k`` among the same slides' patches (what a random row would give).
The same pairs give the error of the written rows against the oracle ``V(i)`` (mean squared error per
dimension, ``||x - V(i)||^2 / d``): ``f_S`` (the TSU), ``copy Z`` (no update: the row keeps ``Z(i)``)
and ``copy V(a)``; by kind of the updated row.

**Fixed-agent table** (:func:`fixed_agent_table`). Agents whose zooms do not depend on the state:
``random`` (a seeded uniform order over the slide's patches), ``attention-topk`` (HAFED's attention on
the low-res state, highest first) and ``oracle`` (ground-truth tumour fraction, highest first). Each
zooms the first ``T = max(1, ceil(budget N))`` patches of its order; the state after those zooms is
built under each update rule and classified by HAFED, so the rules differ only in the state, never in
the zooms. The TSU and no-update states are built step by step with the rule functions. The global
rule rewrites every unzoomed row from the latest zoom only, so its final state is one application of
the rule at the last zoom to the state where the earlier zooms hold ``V`` (tested equal to stepping).

Each row also splits the positive slides by whether the zooms reached tumour (at least one zoomed patch
with tumour area): the share that did and HAFED's mean ``P(tumour)`` on each group. A state update can
only move the table through these two groups, so the split shows where a rule's gain (or its absence)
comes from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from wsigym.calibration.tables import KINDS
from wsigym.envs.slide_source import SlideSource, budget_steps
from wsigym.envs.state_update import UPDATE_RULES, StateChange, ZoomBatchState
from zoo.metrics import classification_metrics

AGENTS = ("random", "attention-topk", "oracle")
RULES = ("tsu", "global", "none")


@dataclass(frozen=True)
class UpdateSettings:
    """The transition an environment applies: frozen ``f_S``, threshold ``tau``, ``|cos|`` or signed."""

    tsu: torch.nn.Module
    tau: float
    absolute_cosine: bool


def patch_kinds(dataset: Any, slide_id: str, tumour: np.ndarray) -> np.ndarray:
    """``(N,)`` int kind index into :data:`KINDS` of every patch of a slide.

    ``tumour (N,)`` is the ground-truth tumour fraction; mimic tissue comes from ``dataset.layout``
    where the dataset has it (synth-c16), else no patch is a mimic.
    """
    kinds = np.where(tumour > 0, 1, 0)
    layout = getattr(dataset, "layout", None)
    if callable(layout):
        mimic = np.asarray(layout(slide_id).mimic, dtype=np.float32).mean(axis=1)
        kinds = np.where((kinds == 0) & (mimic > 0), 2, kinds)
    return kinds


def fresh_state(z: Tensor, copies: int) -> ZoomBatchState:
    """``copies`` environments on one slide ``z (N, d)``, every row still low-res."""
    return ZoomBatchState.of_slides([z] * copies)


def stacked_states(st: ZoomBatchState) -> Tensor:
    """The states ``(E, N, d)`` of environments on one slide."""
    return torch.stack([st.rows(e) for e in range(len(st.z))])


def _tsu_change(st: ZoomBatchState, anchors: Tensor, v: Tensor, update: UpdateSettings) -> StateChange:
    active = torch.ones(len(anchors), dtype=torch.bool)
    return UPDATE_RULES["tsu"](
        st, anchors, active, v[anchors], update.tsu, update.tau, update.absolute_cosine
    )


@torch.no_grad()
def update_agreement(
    source: SlideSource,
    update: UpdateSettings,
    anchors_per_kind: int = 8,
    positive_only: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Same-kind rate and row errors of one TSU zoom from a fresh state (module docstring).

    Per slide (tumour slides only with ``positive_only``), up to ``anchors_per_kind`` anchors of each
    kind are drawn with a seeded generator. Returns ``{"slides", "anchors": {kind: count}, "rows_per_zoom":
    {kind: mean}, "same_kind_rate": {kind: r_k}, "base_rate": {kind}, "error": {kind of the updated row:
    {"tsu", "copy_z", "copy_v_a", "rows"}}}``; kinds with no anchor or no row get NaN.
    """
    rng = np.random.default_rng(seed)
    same = {k: [] for k in KINDS}
    sizes = {k: [] for k in KINDS}
    base = {k: [] for k in KINDS}
    err: dict[str, dict[str, list[Tensor]]] = {k: {"tsu": [], "copy_z": [], "copy_v_a": []} for k in KINDS}
    slides = 0
    for index, slide_id in enumerate(tqdm(source.slide_ids, desc="TSU agreement", disable=not progress)):
        if positive_only and int(source.labels[index]) != 1:
            continue
        rows = source.rows(index)
        z, v = source.z[rows].float(), source.v[rows].float()
        kinds = patch_kinds(source.dataset, slide_id, source.tumour[rows].cpu().numpy())
        chosen = [
            rng.choice(
                np.flatnonzero(kinds == k), size=min(anchors_per_kind, int((kinds == k).sum())), replace=False
            )
            for k in range(len(KINDS))
        ]
        anchors = np.concatenate(chosen).astype(np.int64)
        if not len(anchors):
            continue
        slides += 1
        for k, name in enumerate(KINDS):
            base[name].append(float(np.mean(kinds == k)))
        st = fresh_state(z, len(anchors))
        anchor_t = torch.as_tensor(anchors)
        change = _tsu_change(st, anchor_t, v, update)
        written = len(change.row) - len(anchors)  # the zoomed rows come last
        env, row, new = change.env[:written], change.row[:written], change.new[:written]
        anchor_kind = kinds[anchors]
        row_kind = kinds[row.numpy()]
        for e in range(len(anchors)):
            mine = (env == e).numpy()
            name = KINDS[anchor_kind[e]]
            sizes[name].append(int(mine.sum()))
            if mine.any():
                same[name].append(float(np.mean(row_kind[mine] == anchor_kind[e])))
        d = z.shape[1]
        for k, name in enumerate(KINDS):
            sel = torch.as_tensor(row_kind == k)
            if not sel.any():
                continue
            target = v[row[sel]]
            err[name]["tsu"].append(((new[sel] - target) ** 2).sum(-1) / d)
            err[name]["copy_z"].append(((z[row[sel]] - target) ** 2).sum(-1) / d)
            err[name]["copy_v_a"].append(((v[anchor_t[env[sel]]] - target) ** 2).sum(-1) / d)

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else math.nan

    errors: dict[str, dict[str, float]] = {}
    for name in KINDS:
        parts = err[name]
        count = int(sum(len(p) for p in parts["tsu"]))
        errors[name] = {key: float(torch.cat(p).mean()) if p else math.nan for key, p in parts.items()}
        errors[name]["rows"] = count
    return {
        "slides": slides,
        "anchors": {k: len(sizes[k]) for k in KINDS},
        "rows_per_zoom": {k: mean(sizes[k]) for k in KINDS},
        "same_kind_rate": {k: mean(same[k]) for k in KINDS},
        "base_rate": {k: mean(base[k]) for k in KINDS},
        "error": errors,
    }


@torch.no_grad()
def zoom_orders(
    source: SlideSource, index: int, hafed: torch.nn.Module, seeds: Sequence[int]
) -> dict[tuple[str, int], np.ndarray]:
    """Zoom orders ``(N,)`` of each fixed agent on slide ``index``: ``{(agent, seed): order}``.

    ``random`` has one order per seed (a permutation drawn from ``(seed, slide index)``); the
    deterministic agents one order, stored under seed ``-1``. Ties in the oracle's tumour fraction
    (every patch of a negative slide) keep patch order, as :class:`wsigym.agents.baselines.Oracle`.
    """
    rows = source.rows(index)
    n = source.n_list[index]
    attention = hafed.classify(source.z[rows].float()[None])["attention"][0].cpu().numpy()
    tumour = source.tumour[rows].cpu().numpy()
    orders = {
        ("attention-topk", -1): np.argsort(-attention, kind="stable"),
        ("oracle", -1): np.argsort(-np.nan_to_num(tumour, nan=0.0), kind="stable"),
    }
    for seed in seeds:
        orders[("random", seed)] = np.random.default_rng([int(seed), index]).permutation(n)
    return orders


def _final_states(
    z: Tensor, v: Tensor, orders: Tensor, steps: Sequence[int], rule: str, update: UpdateSettings
) -> dict[int, Tensor]:
    """States ``(E, N, d)`` after the first ``T`` zooms of each order ``orders (E, >= max T)``, per ``T``."""
    copies = orders.shape[0]
    active = torch.ones(copies, dtype=torch.bool)
    out: dict[int, Tensor] = {}
    if rule == "global":
        for t in steps:
            st = fresh_state(z, copies)
            earlier = orders[:, : t - 1]
            env = torch.arange(copies).unsqueeze(1).expand_as(earlier)
            flat = st.slots.flat(env, earlier)
            st.state[flat] = v[earlier]
            st.visited[flat] = True
            st.updated[flat] = True
            last = orders[:, t - 1]
            UPDATE_RULES["global"](st, last, active, v[last], update.tsu, update.tau, update.absolute_cosine)
            out[t] = stacked_states(st)
        return out
    st = fresh_state(z, copies)
    fn = UPDATE_RULES[rule]
    for t in range(max(steps)):
        a = orders[:, t]
        fn(st, a, active, v[a], update.tsu, update.tau, update.absolute_cosine)
        if t + 1 in steps:
            out[t + 1] = stacked_states(st)
    return out


@torch.no_grad()
def fixed_agent_table(
    source: SlideSource,
    hafed: torch.nn.Module,
    update: UpdateSettings,
    budgets: Sequence[float] = (0.1, 0.2),
    seeds: Sequence[int] = (0, 1, 2),
    rules: Sequence[str] = RULES,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """HAFED's test metrics after the same zooms under each update rule (module docstring).

    Returns one row per ``(agent, rule, budget)``: ``{"agent", "rule", "budget", "seeds", "mean": metrics,
    "std": metrics}`` with :func:`zoo.metrics.classification_metrics` keys; deterministic agents have
    one seed and std 0.
    """
    hafed = hafed.eval()
    probs: dict[tuple[str, int, str, float], list[np.ndarray]] = {}
    hits: dict[tuple[str, int, float], list[bool]] = {}
    labels = []
    for index in tqdm(range(len(source.slide_ids)), desc="fixed agents", disable=not progress):
        rows = source.rows(index)
        z, v = source.z[rows].float(), source.v[rows].float()
        n = source.n_list[index]
        orders = zoom_orders(source, index, hafed, seeds)
        keys = list(orders)
        steps = sorted({budget_steps(n, b) for b in budgets})
        order_t = torch.as_tensor(np.stack([orders[k][: max(steps)] for k in keys]))
        labels.append(int(source.labels[index]))
        tumour = np.nan_to_num(source.tumour[rows].cpu().numpy(), nan=0.0) > 0
        for j, key in enumerate(keys):
            for budget in budgets:
                zoomed = order_t[j, : budget_steps(n, budget)].numpy()
                hits.setdefault((*key, budget), []).append(bool(tumour[zoomed].any()))
        for rule in rules:
            states = _final_states(z, v, order_t, steps, rule, update)
            for budget in budgets:
                logits = hafed.classify(states[budget_steps(n, budget)])["logits"]
                p = torch.softmax(logits.float(), -1).cpu().numpy().astype(np.float64)
                for j, (agent, seed) in enumerate(keys):
                    probs.setdefault((agent, seed, rule, budget), []).append(p[j])
    y = np.asarray(labels)
    table = []
    for agent in AGENTS:
        agent_seeds = list(seeds) if agent == "random" else [-1]
        for rule in rules:
            for budget in budgets:
                per_seed = [
                    classification_metrics(np.stack(probs[(agent, s, rule, budget)]), y) for s in agent_seeds
                ]
                keys_m = per_seed[0].keys()
                table.append(
                    {
                        "agent": agent,
                        "rule": rule,
                        "budget": float(budget),
                        "seeds": len(agent_seeds),
                        "mean": {k: float(np.mean([m[k] for m in per_seed])) for k in keys_m},
                        "std": {k: float(np.std([m[k] for m in per_seed])) for k in keys_m},
                        "positives": _positives_by_hit(
                            [np.stack(probs[(agent, s, rule, budget)])[:, 1] for s in agent_seeds],
                            [np.asarray(hits[(agent, s, budget)]) for s in agent_seeds],
                            y,
                        ),
                    }
                )
    return table


def _positives_by_hit(p_tumour: list[np.ndarray], hit: list[np.ndarray], y: np.ndarray) -> dict[str, float]:
    """Positive slides split by whether the zooms reached tumour (pooled over seeds).

    ``p_tumour`` and ``hit`` hold one ``(S,)`` array per seed: HAFED's ``P(tumour)`` and whether at
    least one zoomed patch has tumour area. Returns the share of positive slides with a hit and the mean
    ``P(tumour)`` with and without one (NaN when a group is empty).
    """
    p = np.concatenate([q[y == 1] for q in p_tumour])
    h = np.concatenate([q[y == 1] for q in hit])

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if len(values) else math.nan

    return {"hit_rate": mean(h.astype(np.float64)), "p_hit": mean(p[h]), "p_miss": mean(p[~h])}


@torch.no_grad()
def reference_metrics(source: SlideSource, hafed: torch.nn.Module) -> dict[str, dict[str, float]]:
    """HAFED on the low-res state (``no-zoom``, budget 0) and on ``V`` (``full``, every patch zoomed)."""
    probs: dict[str, list[np.ndarray]] = {"no-zoom": [], "full": []}
    for index in range(len(source.slide_ids)):
        rows = source.rows(index)
        for key, x in (("no-zoom", source.z[rows]), ("full", source.v[rows])):
            logits = hafed.eval().classify(x.float()[None])["logits"]
            probs[key].append(torch.softmax(logits.float(), -1)[0].cpu().numpy().astype(np.float64))
    y = np.asarray([int(label) for label in source.labels])
    return {key: classification_metrics(np.stack(p), y) for key, p in probs.items()}


def from_env(env: Any) -> tuple[SlideSource, torch.nn.Module, UpdateSettings]:
    """The source, frozen HAFED and transition of a ``WSIZoom`` environment (or its vector form)."""
    base = getattr(env, "unwrapped", env)
    batch = getattr(base, "batch", base)
    config = batch.config
    return (
        batch.source,
        batch.hafed,
        UpdateSettings(batch.tsu, float(config.tau), bool(config.absolute_cosine)),
    )
