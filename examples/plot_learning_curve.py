"""Write examples/learning_curve.png: a PPO run's validation metrics, tumour hits and training return.

Reads ``<run>/train.json`` (the validation callback's history: greedy, masked policy on the
validation split) and the TensorBoard scalar ``rollout/ep_rew_mean`` (training episodes) under
``<run>/tb``.

Run from the repository root::

    .venv/bin/python examples/plot_learning_curve.py runs/ppo-WSIZoom-v0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent


def tensorboard_scalar(folder: Path, tag: str) -> tuple[list[int], list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps: list[int] = []
    values: list[float] = []
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            for e in acc.Scalars(tag):
                steps.append(e.step)
                values.append(e.value)
    return steps, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder written by `wsigym train ppo`")
    parser.add_argument("--out", default=str(ROOT / "examples" / "learning_curve.png"))
    args = parser.parse_args()
    run = Path(args.run)
    if (run / "train.json").is_file():
        record = json.loads((run / "train.json").read_text())
    else:  # a run still going (or stopped): the validation callback's file
        record = {"validation": json.loads((run / "eval" / "evaluations.json").read_text())["history"]}
    history = [
        {k: float("nan") if v is None else v for k, v in h.items()} for h in record["validation"]
    ]  # null: NaN
    t = [h["timesteps"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("accuracy", "auc", "f1"):
        if all(key in h for h in history):
            ax1.plot(t, [h[key] for h in history], marker="o", label=f"val {key.replace('_', ' ')}")
    ax1.set_xlabel("timesteps")
    ax1.set_title(f"validation ({len(history)} evaluations, greedy + masks)")
    ax1.legend()
    ax1.grid(alpha=0.3)
    reward = record.get("config", {}).get("env_kwargs", {}).get("reward", "ce")
    steps, values = tensorboard_scalar(run / "tb", "rollout/ep_rew_mean")
    if steps:
        ax2.plot(steps, values, color="tab:blue", label=f"train episode return (reward {reward!r})")
    ax2.set_ylabel("training episode return", color="tab:blue")
    hits = ax2.twinx()  # its own scale: a fraction of the zooms
    if all("tumour_hits" in h for h in history):
        hits.plot(
            t, [h["tumour_hits"] for h in history], color="tab:red", marker="o", label="val tumour hits"
        )
    hits.set_ylabel("validation tumour hits (fraction of zooms)", color="tab:red")
    ax2.set_xlabel("timesteps")
    ax2.set_title("training return / validation tumour hits")
    lines = ax2.get_legend_handles_labels()
    more = hits.get_legend_handles_labels()
    ax2.legend(lines[0] + more[0], lines[1] + more[1])
    ax2.grid(alpha=0.3)
    if "config" in record:
        cfg = record["config"]
        title = (
            f"MaskablePPO on {cfg['env_id']} ({cfg['env_kwargs'].get('dataset', 'synth-c16')}), "
            f"reward {reward!r}, budget {cfg['env_kwargs'].get('budget')}, "
            f"{record['timesteps']} timesteps in {record['train_seconds'] / 60:.1f} min, "
            f"{record['torch_threads']} thread{'s' if record['torch_threads'] != 1 else ''}"
        )
    else:
        title = f"MaskablePPO, run in progress: {t[-1]} timesteps, {history[-1]['wall_seconds'] / 60:.1f} min"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
