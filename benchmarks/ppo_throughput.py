"""PPO training throughput on synth-c16: env-only stepping vs SB3's plain buffer vs the structured path.

One run, side by side, each case in a fresh process (so its start-up and peak memory are its own):

(a) ``env``: the vector env (``n_envs``) stepped by a random masked agent, no observation built
    (``observe=False``: what the structured learner reads), ``env+obs`` with the padded
    observations every other agent gets, and ``env, sasha recipe (2 envs)`` at the ``sasha`` recipe's
    own two environments (fewer environments per vector step amortise less of its fixed cost);
(b) ``plain``: ``MaskablePPO`` on SB3's rollout buffer of padded observations (``--path plain``);
(c) ``segments``: the structured path (``--path segments``, the default of ``wsigym train ppo``).

for the ``sasha-sb3`` recipe (named ``sasha`` before the faithful one; with SASHA's actor width 128 and 4 PPO epochs),
``evidence-bandit`` and the faithful ``sasha`` recipe (``wsigym train ppo``'s default: 2 environments,
whole-episode rollouts, 4 full-batch epochs, state tokens),
plus ``sasha`` with SASHA's own actor/critic tokens (the state row alone, ``--tokens state``) and
rollouts of 256 steps per environment (segments about one episode long, as SASHA's update on whole
episodes). Reported per case: timesteps per second, seconds from process start to the first step,
peak RSS, and the split of the learning time into env / rollout policy / update. The first case runs
on an empty cache folder (cold: synth-c16 and the per-slide precomputation are built), the others on
the filled one (warm).

Run: ``.venv/bin/python benchmarks/ppo_throughput.py`` (``--help``: timesteps, threads, device,
``--readme`` to rewrite the README's table). Writes ``--out`` (JSON) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from wsigym.io import atomic_write_json

START = time.perf_counter()

#: name -> (kind, recipe, overrides of the recipe)
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "env (cold cache)": ("env", "sasha-sb3", {}),
    "env": ("env", "sasha-sb3", {}),
    "env+obs": ("env+obs", "sasha-sb3", {}),
    # the faithful recipe's own 2 environments (whole-episode rollouts): what its learner steps
    "env, sasha recipe (2 envs)": ("env", "sasha", {"n_envs": 2}),
    "plain sasha": ("train", "sasha-sb3", {"path": "plain", "hidden": 128, "n_envs": 4, "n_steps": 32}),
    "segments sasha": ("train", "sasha-sb3", {"path": "segments", "hidden": 128}),
    "segments sasha, state tokens, 256-step rollouts": (
        "train",
        "sasha-sb3",
        {"path": "segments", "hidden": 128, "tokens": "state", "n_steps": 256, "batch_size": 1024},
    ),
    "plain evidence-bandit": ("train", "evidence-bandit", {"path": "plain"}),
    # the faithful recipe (state tokens, 2 envs, whole-episode rollouts, 4 full-batch epochs); its plain
    # counterpart keeps 32-step rollouts, since whole episodes of padded observations would need ~11 GB
    "sasha recipe, plain, 32-step rollouts": (
        "train",
        "sasha",
        {"path": "plain", "n_envs": 2, "rollout_episodes": False, "n_steps": 32, "batch_size": 64},
    ),
    "sasha recipe, segments": ("train", "sasha", {"path": "segments", "n_envs": 2}),
    "segments evidence-bandit": ("train", "evidence-bandit", {"path": "segments"}),
}


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GB (Linux)


def run_case(name: str, timesteps: int, n_envs: int, device: str) -> dict[str, Any]:
    """One case in this process (the child's side)."""
    import numpy as np
    import torch
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    from wsigym.agents.ppo import _split_env, episode_rollout, make_model
    from wsigym.agents.recipes import ppo_config
    from wsigym.agents.segment_ppo import vector_env_of

    kind, recipe, overrides = CASES[name]
    overrides = {"n_envs": n_envs, "device": device, **overrides}
    if device != "cpu":
        overrides["env_kwargs"] = {"device": device}
    config = ppo_config(recipe, **overrides)
    venv = _split_env(config, "train", config.n_envs, config.seed, progress=False)
    config = episode_rollout(config, venv)  # as train_ppo: whole-episode rollouts where the recipe asks
    out: dict[str, Any] = {"case": name, "recipe": recipe, "n_envs": config.n_envs}
    if kind.startswith("env"):
        vector = vector_env_of(venv)
        vector.observe = kind == "env+obs"
        rng = np.random.default_rng(0)
        venv.reset()
        out["first_step_seconds"] = time.perf_counter() - START
        t0 = time.perf_counter()
        steps = 0
        while steps * venv.num_envs < timesteps:
            masks = venv.action_masks()
            actions = np.array([rng.choice(np.flatnonzero(m)) for m in masks])
            venv.step(actions)
            steps += 1
        seconds = time.perf_counter() - t0
        out.update(timesteps=steps * venv.num_envs, seconds=seconds, env_seconds=seconds)
    else:
        env: Any = VecMonitor(venv)
        if config.normalize_reward:
            env = VecNormalize(env, norm_obs=False, norm_reward=True, gamma=config.gamma)
        model = make_model(config, env)
        timers = {"env": 0.0, "update": 0.0}

        def timed(fn: Any, key: str) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                t = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    timers[key] += time.perf_counter() - t

            return wrapper

        venv.step_wait = timed(venv.step_wait, "env")  # type: ignore[method-assign]
        model.train = timed(model.train, "update")  # type: ignore[method-assign]
        out["first_step_seconds"] = time.perf_counter() - START
        t0 = time.perf_counter()
        model.learn(timesteps)
        seconds = time.perf_counter() - t0
        out.update(
            timesteps=int(model.num_timesteps),
            seconds=seconds,
            env_seconds=timers["env"],
            update_seconds=timers["update"],
            policy_seconds=seconds - timers["env"] - timers["update"],
            path=config.path,
            tokens=config.tokens,
            hidden=config.hidden,
            n_steps=config.n_steps,
            n_epochs=config.n_epochs,
        )
    out["timesteps_per_second"] = out["timesteps"] / out["seconds"]
    out["peak_rss_gb"] = _peak_rss_gb()
    out["torch_threads"] = torch.get_num_threads()
    return out


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | timesteps/s | s to first step | peak RSS GB | env / policy / update s | timesteps |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | failed: {r['error']} | | | | |")
            continue
        split = f"{r['env_seconds']:.1f} / {r.get('policy_seconds', 0.0):.1f} / {r.get('update_seconds', 0.0):.1f}"
        lines.append(
            f"| {r['case']} | {r['timesteps_per_second']:.1f} | {r['first_step_seconds']:.1f} | "
            f"{r['peak_rss_gb']:.2f} | {split} | {r['timesteps']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timesteps", type=int, default=4096, help="timesteps per training/env case")
    parser.add_argument("--plain-timesteps", type=int, default=256, help="timesteps of the plain cases")
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per case")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), metavar="CASE")
    parser.add_argument(
        "--cache", default=None, help="WSIGYM_CACHE for the runs (default: a new temp folder)"
    )
    parser.add_argument("--out", default="benchmarks/results/ppo_throughput.json")
    parser.add_argument("--readme", default=None, help="rewrite this README's ppo-throughput section")
    parser.add_argument(
        "--from-json",
        nargs="+",
        default=None,
        metavar="FILE",
        help="measure nothing: print (and with --readme, write) the table of saved result files",
    )
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.case is not None:  # child
        import torch

        torch.set_num_threads(args.threads)
        plain = CASES[args.case][2].get("path") == "plain"
        row = run_case(args.case, args.plain_timesteps if plain else args.timesteps, args.n_envs, args.device)
        atomic_write_json(args.result, row)
        return 0

    if args.from_json:
        return _render_saved(args.from_json, args.readme)

    cache = args.cache or tempfile.mkdtemp(prefix="wsigym-bench-cache-")
    rows = []
    for name in args.cases:
        with tempfile.NamedTemporaryFile(suffix=".json") as result:
            cmd = [
                sys.executable,
                __file__,
                "--case",
                name,
                "--result",
                result.name,
                "--threads",
                str(args.threads),
            ]
            cmd += ["--timesteps", str(args.timesteps), "--plain-timesteps", str(args.plain_timesteps)]
            cmd += ["--n-envs", str(args.n_envs), "--device", args.device]
            env = {**os.environ, "WSIGYM_CACHE": cache, "OMP_NUM_THREADS": str(args.threads)}
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                rows.append({"case": name, "error": tail[0][:200]})
            else:
                rows.append(json.loads(Path(result.name).read_text()))
            print(_markdown(rows[-1:]).splitlines()[-1], flush=True)
            _write(args, rows, argv)
    _write(args, rows, argv, final=True)
    return 0


def _render_saved(files: list[str], readme: str | None) -> int:
    """One table per saved run (``benchmarks/results/*.json``), each with its command and machine."""
    parts = []
    for name in files:
        record = json.loads(Path(name).read_text())
        note = ", ".join(f"{k} = {v:.2f}" for k, v in record["summary"].items())
        parts.append(
            f"{_markdown(record['cases'])}\n\n`{record['command']}`: {record['cpu_count']} CPU cores visible, "
            f"{record['threads']} torch threads per case, device {record['device']}, torch {record['torch']}"
            f"{'; ' + note if note else ''}."
        )
    text = "\n\n".join(parts)
    print(text)
    if readme:
        from wsigym.readme_sections import replace_section

        replace_section(readme, "ppo-throughput", text)
    return 0


def _write(
    args: argparse.Namespace, rows: list[dict[str, Any]], argv: list[str] | None, final: bool = False
) -> None:
    """Write the JSON (after every case, so a cut-short run keeps what it measured); with ``final``
    print the table and rewrite the README section."""
    rate = {r["case"]: r["timesteps_per_second"] for r in rows if "error" not in r}
    ratios = {
        "segments / plain, sasha": ("segments sasha", "plain sasha"),
        "segments / plain, evidence-bandit": ("segments evidence-bandit", "plain evidence-bandit"),
        "state-token segments / plain sasha": (
            "segments sasha, state tokens, 256-step rollouts",
            "plain sasha",
        ),
        "state-token segments / env": ("segments sasha, state tokens, 256-step rollouts", "env"),
        "segments sasha / env": ("segments sasha", "env"),
        "sasha recipe: segments / plain": ("sasha recipe, segments", "sasha recipe, plain, 32-step rollouts"),
        "sasha recipe: segments / env": ("sasha recipe, segments", "env"),
        "sasha recipe: segments / env at its 2 envs": (
            "sasha recipe, segments",
            "env, sasha recipe (2 envs)",
        ),
    }
    summary = {k: rate[a] / rate[b] for k, (a, b) in ratios.items() if a in rate and b in rate}
    import torch

    record = {
        "cases": rows,
        "summary": summary,
        "threads": args.threads,
        "device": args.device,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        # the home folder as $HOME: the record names no path of the machine it ran on
        "command": " ".join(
            ["benchmarks/ppo_throughput.py", *(argv if argv is not None else sys.argv[1:])]
        ).replace(str(Path.home()), "$HOME"),
    }
    out = atomic_write_json(args.out, record)
    if not final:
        return
    table = _markdown(rows)
    note = ", ".join(f"{k} = {v:.2f}" for k, v in summary.items())
    print(f"\n{table}\n\n{note}\n(written to {out})")
    if args.readme:
        from wsigym.readme_sections import replace_section

        caption = (
            f"`{record['command']}` on {record['cpu_count']} CPU cores, {args.threads} torch threads per case, "
            f"device {args.device}, torch {record['torch']}; {note}."
        )
        replace_section(args.readme, "ppo-throughput", f"{table}\n\n{caption}")


if __name__ == "__main__":
    sys.exit(main())
