"""Learning curves of ``wsigym train ppo`` runs: one small JSON per run, and a figure of several runs.

A run folder logs its training to TensorBoard (``tb/``, SB3's logger: one point per rollout) and its
validation passes to ``eval/evaluations.json`` (:class:`wsigym.agents.ppo.ValidationCallback`). Both live in
``runs/``, which a new machine does not have, so :func:`read_curves` gathers what a figure needs into one
JSON (``curves.json``, a few tens of kB for a SASHA-scale run) that the reproduction's committed record keeps
(:mod:`wsigym.agents.reproduction`):

==============  ===================================================================================
key             value
==============  ===================================================================================
``training``    per TensorBoard tag of :data:`TRAINING_TAGS`: ``{"timesteps": [...], "values": [...]}``
                (one point per rollout; SB3's ``rollout/*`` are means over its last 100 episodes)
``validation``  the validation history: one dict per pass (``timesteps``, ``accuracy``, ``auc``,
                ``f1``, ``nll``, ``criterion`` = ``(2 - AUC - F1) + NLL``, ``tumour_hits``, ...)
==============  ===================================================================================

A resumed run logs the timesteps between its last checkpoint and the moment it was killed twice (the killed
process had logged them too); per timestep the later value is kept, the one the finished run stands on.

:func:`draw_curves` plots runs side by side: the training reward per step (``ep_rew_mean / ep_len_mean``;
under SASHA's reward, the mean ``-CE`` of HAFED after a zoom, comparable across budgets), the validation AUC,
and the validation criterion (lower is better; the kept policy is the lowest). CLI: ``wsigym curves RUN ...
--out curves.png`` (a run folder or a ``curves.json`` each).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wsigym.errors import DataError
from wsigym.io import atomic_write, atomic_write_json

#: ``curves.json``: what :func:`read_curves` returns, as the reproduction's record keeps it.
CURVES = "curves.json"
#: TensorBoard tags kept, by the name used in ``curves.json``.
TRAINING_TAGS = {
    "return": "rollout/ep_rew_mean",
    "episode_length": "rollout/ep_len_mean",
    "entropy_loss": "train/entropy_loss",
}
VALIDATION_HISTORY = Path("eval") / "evaluations.json"
TENSORBOARD_DIR = "tb"


def _scalars(tb_dir: Path) -> dict[str, dict[int, tuple[float, float]]]:
    """``{tag: {step: (wall_time, value)}}`` of every event file under ``tb_dir``; per step the latest write."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, tuple[float, float]]] = {tag: {} for tag in TRAINING_TAGS.values()}
    for events in sorted(tb_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        have = set(acc.Tags().get("scalars", []))
        for tag, points in out.items():
            if tag in have:
                for e in acc.Scalars(tag):
                    if e.step not in points or points[e.step][0] <= e.wall_time:
                        points[e.step] = (e.wall_time, float(e.value))
    return out


def read_curves(run_dir: str | Path) -> dict[str, Any]:
    """The learning curves of one run folder (module docstring).

    Raises:
        DataError: when ``run_dir`` has neither TensorBoard logs nor a validation history.
    """
    run_dir = Path(run_dir)
    tb_dir, history_path = run_dir / TENSORBOARD_DIR, run_dir / VALIDATION_HISTORY
    if not tb_dir.is_dir() and not history_path.is_file():
        raise DataError(
            run_dir,
            f"not a `wsigym train ppo` run folder (expected {TENSORBOARD_DIR}/ or {VALIDATION_HISTORY})",
        )
    training: dict[str, dict[str, list[float]]] = {}
    if tb_dir.is_dir():
        by_tag = _scalars(tb_dir)
        for name, tag in TRAINING_TAGS.items():
            steps = sorted(by_tag[tag])
            training[name] = {"timesteps": steps, "values": [by_tag[tag][s][1] for s in steps]}
    validation: list[dict[str, Any]] = []
    if history_path.is_file():
        try:
            validation = json.loads(history_path.read_text())["history"]
        except (ValueError, KeyError) as e:
            raise DataError(history_path, f"expected {{'history': [...]}} ({e})") from None
    return {"training": training, "validation": validation}


def write_curves(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """:func:`read_curves` of ``run_dir`` written to ``path`` (default ``run_dir/curves.json``), atomically."""
    return atomic_write_json(Path(path) if path is not None else Path(run_dir) / CURVES, read_curves(run_dir))


def load_curves(source: str | Path) -> dict[str, Any]:
    """The curves of a run folder (read now) or of a ``curves.json`` file (read back).

    Raises:
        DataError: naming the path, when it is neither.
    """
    source = Path(source)
    if source.is_dir():
        return read_curves(source)
    try:
        curves = json.loads(source.read_text())
    except (OSError, ValueError) as e:
        raise DataError(source, f"expected a run folder or a {CURVES} file ({e})") from None
    if not isinstance(curves, dict) or not {"training", "validation"} <= set(curves):
        raise DataError(source, f"a {CURVES} file has the keys 'training' and 'validation'")
    return curves


def reward_per_step(curves: Mapping[str, Any]) -> tuple[list[int], list[float]]:
    """``(timesteps, ep_rew_mean / ep_len_mean)`` at the rollouts that logged both."""
    ret, length = curves["training"].get("return"), curves["training"].get("episode_length")
    if not ret or not length:
        return [], []
    lengths = dict(zip(length["timesteps"], length["values"]))
    pairs = [(s, v / lengths[s]) for s, v in zip(ret["timesteps"], ret["values"]) if lengths.get(s)]
    return [s for s, _ in pairs], [v for _, v in pairs]


def draw_curves(runs: Mapping[str, Mapping[str, Any]], path: str | Path, *, title: str | None = None) -> Path:
    """A PNG of ``{label: curves}``: training reward per step, validation AUC and validation criterion
    against timesteps (module docstring), one line per run; written atomically.

    Raises:
        ValueError: when ``runs`` is empty.
    """
    if not runs:
        raise ValueError("draw_curves: no runs to draw")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for label, curves in runs.items():
        steps, reward = reward_per_step(curves)
        (line,) = axes[0].plot(steps, reward, lw=0.8, label=label)
        history = curves["validation"]
        t = [row["timesteps"] for row in history]
        colour = line.get_color()
        for ax, key in ((axes[1], "auc"), (axes[2], "criterion")):
            values = [row.get(key) for row in history]
            values = [math.nan if v is None else v for v in values]
            ax.plot(t, values, marker="o", ms=3, lw=1.0, color=colour, label=label)
    for ax, ylabel in zip(
        axes,
        (
            "training reward per step (mean of the last 100 episodes)",
            "validation AUC",
            "validation criterion (lower is better)",
        ),
    ):
        ax.set_xlabel("timesteps")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return out


def add_subcommand(sub: Any) -> None:
    """``wsigym curves RUN [RUN ...] --out curves.png``."""
    p = sub.add_parser(
        "curves",
        help="learning curves of PPO runs (training reward, validation AUC and criterion) as a PNG",
    )
    p.add_argument("runs", nargs="+", help=f"`wsigym train ppo` run folders or {CURVES} files")
    p.add_argument("--out", default="curves.png", help="the PNG to write (default: %(default)s)")
    p.add_argument("--json", action="store_true", help=f"also write each run folder's {CURVES} into it")
    p.add_argument("--title", default=None)
    p.set_defaults(func=_run)


def _label(source: Path) -> str:
    return source.parent.name if source.name == CURVES else source.name


def _run(args: argparse.Namespace) -> int:
    runs: dict[str, dict[str, Any]] = {}
    for source in map(Path, args.runs):
        label = _label(source) if _label(source) not in runs else str(source)
        runs[label] = load_curves(source)
        if args.json and source.is_dir():
            atomic_write_json(source / CURVES, runs[label])
    print(f"wrote {draw_curves(runs, args.out, title=args.title)}")
    return 0
