"""``wsigym train ppo``, ``wsigym evaluate`` and ``wsigym demo``.

- ``wsigym train ppo --env WSIZoom-v0 --dataset synth-c16 --out runs/ppo-WSIZoom-v0`` trains MaskablePPO
  (:func:`wsigym.agents.ppo.train_ppo`) with SB3's progress bar, TensorBoard logs, checkpoints and the
  validation callback; the run folder is the publishable policy folder. ``--seeds``/``--recipes``/``--updates``
  sweep: one such run per combination, one after another or as Ray Tune trials (``--backend ray``).
- ``wsigym evaluate --agent random --agent runs/ppo-WSIZoom-v0 ...`` runs the protocol
  (:func:`wsigym.evaluate.evaluate`) and writes a Markdown table and a JSON file; ``--all`` runs the full
  protocol (every baseline, the policy, both ablations) and can rewrite the README's results section;
  ``--card`` writes the policy folder's Hub card; ``--push REPO`` publishes it; ``--backend ray
  [--address A]`` runs one Ray task per (agent, budget, seed) (:mod:`wsigym.distributed.evaluation`).
- ``wsigym demo``: a short warm-started PPO run on synth-c16, then the evaluation table.

The environment flags (``--dataset``, ``--budget``, ``--reward``, ``--device``, ...) are the shared ones of
:mod:`wsigym.envs.option_flags`, as in ``wsigym env``. ``--device`` is the environment's device (the state,
HAFED and ``f_S``) in every command; ``train ppo --policy-device`` is the PPO policy's (default: ``--device``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from wsigym.distributed.cluster import add_backend_arguments, connect_from_args
from wsigym.envs.option_flags import add_env_arguments, env_kwargs_from_args, options_from_args
from wsigym.envs.options import OPTION_NAMES

DEMO_TIMESTEPS = 512
DEMO_SLIDES = 4

#: ``train ppo`` options that map one-to-one onto a :class:`~wsigym.agents.recipes.PPOConfig` field.
_NUMERIC_FLAGS = {
    "--timesteps": "total_timesteps",
    "--n-envs": "n_envs",
    "--n-steps": "n_steps",
    "--batch-size": "batch_size",
    "--epochs": "n_epochs",
    "--lr": "learning_rate",
    "--ent-coef": "ent_coef",
    "--gamma": "gamma",
    "--gae-lambda": "gae_lambda",
    "--clip-range": "clip_range",
    "--vf-coef": "vf_coef",
    "--max-grad-norm": "max_grad_norm",
    "--hidden": "hidden",
    "--eval-freq": "eval_freq",
    "--eval-slides": "eval_slides",
    "--checkpoint-freq": "checkpoint_freq",
}
_FLAG_NOTES = {
    "--gamma": "discount (SASHA: 1.0)",
    "--max-grad-norm": "clip of the joint actor+critic gradient norm (SASHA: 0.5)",
    "--hidden": "actor attention width (None: HAFED's attn_dim)",
    "--eval-slides": "validation slides per evaluation (None: all)",
    "--eval-freq": "timesteps, or 'pass': once per pass over the training slides (the sasha recipe's)",
    "--checkpoint-freq": "SB3 zips every that many timesteps, or 'pass'",
}


def _frequency(text: str) -> int | str:
    """A ``--eval-freq`` / ``--checkpoint-freq`` value: timesteps, or ``pass`` (once per pass over the slides)."""
    from wsigym.agents.schedule import PER_PASS

    if text == PER_PASS:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of timesteps or {PER_PASS!r}, got {text!r}"
        ) from None


def _train_parser(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``train`` command's own subparsers (shared with other areas that add ``train <model>``)."""
    train = sub.choices.get("train") if hasattr(sub, "choices") else None
    if train is None:
        train = sub.add_parser("train", help="train a model or agent")
        train._wsigym_sub = train.add_subparsers(dest="model", required=True)  # type: ignore[attr-defined]
    if not hasattr(train, "_wsigym_sub"):
        train._wsigym_sub = train.add_subparsers(dest="model", required=True)  # type: ignore[attr-defined]
    return train._wsigym_sub  # type: ignore[attr-defined]


def _env_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The env flags given (:mod:`wsigym.envs.option_flags`), always with the fold and, unless the
    slides are live (``--live-slides``), the dataset: a run records them."""
    given = env_kwargs_from_args(args)
    options = options_from_args(args)
    named = {} if options.live else {"dataset": options.dataset_or_default}
    return {**named, "fold": options.fold, **given}


def _evaluate_env(args: argparse.Namespace) -> tuple[Any, int, dict[str, Any]]:
    """``evaluate``'s ``dataset`` (a name, folder or ``LiveSlides``) and ``fold``, and the other env
    keyword arguments of the flags."""
    options = options_from_args(args)
    rest = {
        k: v
        for k, v in env_kwargs_from_args(args).items()
        if k in OPTION_NAMES and k not in ("dataset", "fold")
    }
    return options.dataset_or_default, options.fold, rest


def _common_env(p: argparse.ArgumentParser, skip: tuple[str, ...]) -> None:
    p.add_argument(
        "--env",
        default="WSIZoom-v0",
        help="registered env id, which picks the state update (WSIZoom-v0, WSIZoomGlobal-v0, ...)",
    )
    group = p.add_argument_group(
        "environment (wsigym.envs.options.ZoomOptions; left out: the recipe's, else the env's default)"
    )
    add_env_arguments(group, skip=skip)


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``train ppo``, ``evaluate``, ``demo`` and ``protocol`` on the ``wsigym`` parser."""
    from wsigym.agents.policy import TOKENS
    from wsigym.agents.recipes import RECIPES, TRAINING_PATHS, PPOConfig
    from wsigym.envs.state_update import UPDATE_RULES

    d = PPOConfig()
    p = _train_parser(sub).add_parser(
        "ppo",
        help="train a MaskablePPO zoom policy (sb3-contrib)",
        description="Options left out take the recipe's value, else PPOConfig's default (shown).",
    )
    _common_env(p, skip=("split",))
    p.add_argument("--out", default=None, help="run folder (becomes the publishable policy folder)")
    p.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its latest checkpoint, with its saved settings "
        "(--timesteps may raise the total; other options are not allowed)",
    )
    p.add_argument(
        "--recipe",
        default="sasha",
        choices=tuple(RECIPES),
        help="named settings (wsigym.agents.recipes.RECIPES): 'sasha' (default: SASHA's agent and PPO loop), "
        "'sasha-sb3' (SASHA's settings adapted to short CPU runs) or 'evidence-bandit' (the shipped policy)",
    )
    for flag, name in _NUMERIC_FLAGS.items():
        kind = float if isinstance(getattr(d, name), float) else int
        if name in ("eval_freq", "checkpoint_freq"):
            kind = _frequency
        note = f"{_FLAG_NOTES[flag]}; " if flag in _FLAG_NOTES else ""
        p.add_argument(
            flag, type=kind, default=None, help=f"{note}PPOConfig.{name} (default {getattr(d, name)})"
        )
    p.add_argument(
        "--normalize-advantage",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="SB3's per-minibatch advantage standardisation (default on; with rare rewards it rescales noise)",
    )
    p.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=None, help="default on")
    p.add_argument(
        "--standardise",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="standardise the state rows per observation in the policy (needs --no-warm-start; default off)",
    )
    p.add_argument(
        "--tokens",
        default=None,
        choices=TOKENS,
        help="what the policy reads per patch: the state row and 6 context channels, or the row alone "
        "(SASHA's actor; no per-step work on unchanged rows) (default state+context)",
    )
    p.add_argument(
        "--path",
        default=None,
        choices=TRAINING_PATHS,
        help="'segments': episodes stored as changed rows, policy evaluated once per row version (fast); "
        "'plain': SB3's buffer of padded observations (same loss) (default segments)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--policy-device",
        default=None,
        help="torch device of the PPO policy and its updates (default: --device, the env's)",
    )
    p.add_argument("--no-progress", action="store_true")
    sweep = p.add_argument_group(
        "sweeps",
        "--seeds/--recipes/--updates (or --backend ray) run one normal run per combination, "
        "in --out/<recipe>[-<update>]-seed<N>, and write --out/sweep.json",
    )
    sweep.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds")
    sweep.add_argument("--recipes", nargs="+", default=None, choices=tuple(RECIPES), help="recipes")
    sweep.add_argument(
        "--updates",
        nargs="+",
        default=None,
        choices=tuple(UPDATE_RULES),
        help="state-update rules (env update=)",
    )
    sweep.add_argument(
        "--threads-per-trial", type=int, default=None, help="torch threads (and Ray CPUs) of one run"
    )
    add_backend_arguments(sweep)
    p.set_defaults(func=_train_ppo)

    e = sub.add_parser("evaluate", help="the evaluation protocol (any agent, budgets, seeds)")
    _common_env(e, skip=("split", "budget"))
    e.add_argument(
        "--agent",
        action="append",
        default=[],
        help="baseline name (random, attention-topk, attention-greedy, coverage, oracle, no-zoom, full-hafed), "
        "policy folder or registered name / Hub repo of a policy; repeat for several",
    )
    e.add_argument("--policy", default=None, help="policy folder/name evaluated as 'ppo' (with --all)")
    e.add_argument("--all", action="store_true", help="full protocol: every baseline, the policy, ablations")
    e.add_argument("--no-ablation", action="store_true", help="with --all: skip the state-update ablation")
    e.add_argument(
        "--ablation-budgets",
        type=float,
        nargs="+",
        default=None,
        help="with --all: ablation budgets (default: --budgets)",
    )
    e.add_argument(
        "--ablation-slides",
        type=int,
        default=None,
        help="with --all: the ablation uses the first N slides (the global update is slow on CPU)",
    )
    e.add_argument("--split", default="test")
    e.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.2])
    e.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    e.add_argument("--max-slides", type=int, default=None, help="only the first N slides of the split")
    e.add_argument(
        "--slides", default=None, help="comma-separated slide ids of the split to evaluate (in that order)"
    )
    e.add_argument("--sample", type=int, default=None, metavar="K", help="K slides drawn at random (--seed)")
    e.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    e.add_argument("--out", default="results", help="folder for results.md / results.json")
    e.add_argument("--readme", default=None, help="replace the results section of this README")
    e.add_argument("--card", action="store_true", help="write the policy folder's Hub card")
    e.add_argument("--push", default=None, metavar="REPO", help="publish the policy folder to this Hub repo")
    e.add_argument("--no-progress", action="store_true")
    add_backend_arguments(e)
    e.set_defaults(func=_evaluate)

    x = sub.add_parser(
        "sb3-export",
        help="write a policy folder's slim SB3 zip, rl-zoo3 config.yml/env_kwargs.yml, mean_reward and replay",
    )
    x.add_argument("folder", help="policy folder (policy.json + policy.safetensors)")
    x.add_argument("--split", default="test", help="split of the mean_reward episodes and the replay")
    x.add_argument("--episodes", type=int, default=10, help="episodes of mean_reward (rl-zoo3: 10)")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--no-replay", action="store_true", help="skip replay.gif")
    x.add_argument("--card", action="store_true", help="re-render README.md from results.json + sb3.json")
    x.add_argument("--no-progress", action="store_true")
    x.set_defaults(func=_sb3_export)

    m = sub.add_parser("demo", help="short PPO run on synth-c16, then the evaluation table")
    add_env_arguments(m.add_argument_group("environment"), skip=("split", "budget"))
    m.add_argument("--timesteps", type=int, default=DEMO_TIMESTEPS)
    m.add_argument("--max-slides", type=int, default=DEMO_SLIDES, help="test slides in the table (0: all)")
    m.add_argument("--out", default="runs/demo")
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(func=_demo)

    from wsigym.agents.protocol_record import add_subcommand as add_protocol

    add_protocol(sub)
    from wsigym.agents.reproduction import add_subcommand as add_reproduce

    add_reproduce(sub)
    from wsigym.agents.learning_curves import add_subcommand as add_curves

    add_curves(sub)


def _resume_config(args: argparse.Namespace) -> Any:
    """The saved :class:`PPOConfig` of ``--resume RUN_DIR`` (``--timesteps`` may raise the total)."""
    from wsigym.agents.recipes import PPOConfig
    from wsigym.agents.resume import saved_config

    if args.out is not None and Path(args.out) != Path(args.resume):
        raise ValueError("--resume RUN_DIR continues RUN_DIR: leave out --out (or give the same folder)")
    record = saved_config(args.resume)
    placeholders = [k for k, v in record["env_kwargs"].items() if isinstance(v, str) and v.startswith("<")]
    if placeholders:
        raise ValueError(
            f"--resume {args.resume}: the run was started from Python with objects in env_kwargs "
            f"({', '.join(placeholders)}); resume it with train_ppo(config, run_dir, resume=True)"
        )
    if args.timesteps is not None:
        record["total_timesteps"] = args.timesteps
    return PPOConfig.from_dict(record)


def _ppo_config(args: argparse.Namespace, point: dict[str, Any] | None = None) -> Any:
    """The PPOConfig of ``train ppo``'s options, with a sweep point's ``seed``/``recipe``/``update``."""
    from wsigym.agents.recipes import ppo_config

    point = point or {}
    env_kwargs = _env_kwargs(args)
    if point.get("update") is not None:
        env_kwargs["update"] = point["update"]
    overrides: dict[str, Any] = {
        "env_id": args.env,
        "env_kwargs": env_kwargs,
        "seed": point.get("seed", args.seed),
        "device": _policy_device(args),
    }
    for flag, name in _NUMERIC_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            overrides[name] = value
    for name in ("normalize_advantage", "warm_start", "standardise", "tokens", "path"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    try:
        return ppo_config(point.get("recipe", args.recipe), **overrides)
    except ValueError as exc:
        raise SystemExit(f"wsigym train ppo: {exc}") from None


def _policy_device(args: argparse.Namespace) -> str:
    """``--policy-device``, else ``--device`` (the env's), else the env's default device."""
    return str(args.policy_device or options_from_args(args).device)


def _ppo_sweep_trial(args: argparse.Namespace, point: dict[str, Any]) -> dict[str, float]:
    """One trial of a ``train ppo`` sweep: a normal run in ``--out/<trial name>``; its last validation."""
    from wsigym.agents.ppo import train_ppo
    from wsigym.distributed.sweeps import trial_name

    if args.threads_per_trial:
        import torch

        torch.set_num_threads(args.threads_per_trial)
    run_dir = Path(args.out).resolve() / trial_name(point)
    train_ppo(_ppo_config(args, point), run_dir, progress=False)
    record = json.loads((run_dir / "train.json").read_text())
    last = record["validation"][-1] if record["validation"] else {}
    metrics = {k: float(v) for k, v in last.items() if isinstance(v, int | float) and k != "timesteps"}
    return {"timesteps": float(record["timesteps"]), **metrics}


def _train_ppo(args: argparse.Namespace) -> int:
    from wsigym.agents.ppo import train_ppo

    sweep = bool(args.seeds or args.recipes or args.updates or args.backend == "ray")
    if args.resume is not None and sweep:
        raise ValueError("--resume continues one run: leave out --seeds/--recipes/--updates/--backend ray")
    if args.resume is not None:
        config = _resume_config(args)
        print(f"wsigym train ppo: resuming {args.resume} to {config.total_timesteps} timesteps")
        train_ppo(config, args.resume, progress=not args.no_progress, resume=True)
        record = json.loads((Path(args.resume) / "train.json").read_text())
        print(f"trained to {record['timesteps']} timesteps; policy in {args.resume}")
        return 0
    if args.out is None:
        raise ValueError("wsigym train ppo needs --out RUN_DIR (or --resume RUN_DIR)")
    if sweep:
        return _sweep_ppo(args)
    config = _ppo_config(args)
    print(
        f"wsigym train ppo: recipe {args.recipe!r}, {config.path!r} path "
        f"({'episodes stored as changed rows' if config.path == 'segments' else 'SB3 padded observations'}), "
        f"tokens {config.tokens!r}, {config.total_timesteps} timesteps"
    )
    t0 = time.perf_counter()
    train_ppo(config, args.out, progress=not args.no_progress)
    record = json.loads((Path(args.out) / "train.json").read_text())
    last = record["validation"][-1] if record["validation"] else {}
    accuracy, auc = (
        float("nan") if last.get(k) is None else last[k] for k in ("accuracy", "auc")
    )  # null: NaN
    print(
        f"trained {record['timesteps']} timesteps in {time.perf_counter() - t0:.0f} s; "
        f"validation accuracy {accuracy:.3f}, AUC {auc:.3f}; "
        f"policy in {args.out} (TensorBoard: tensorboard --logdir {args.out}/tb)"
    )
    return 0


def _sweep_ppo(args: argparse.Namespace) -> int:
    """``train ppo --seeds/--recipes/--updates``: one run per point (:mod:`wsigym.distributed.sweeps`)."""
    import functools

    from wsigym.distributed.sweeps import grid_points, run_sweep

    connect_from_args(args)
    grid = {
        "recipe": args.recipes or [args.recipe],
        "update": args.updates or [None],
        "seed": args.seeds or [args.seed],
    }
    for point in grid_points(grid):
        _ppo_config(args, point)  # every point's settings are checked before any run starts
    t0 = time.perf_counter()
    record = run_sweep(
        functools.partial(_ppo_sweep_trial, args),
        grid,
        args.out,
        backend=args.backend,
        name="train-ppo",
        resources={"cpu": args.threads_per_trial or 1, "gpu": 1.0 if _uses_cuda(args) else 0.0},
    )
    print(
        f"wsigym train ppo: {len(record)} runs in {time.perf_counter() - t0:.0f} s ({args.backend} backend)"
    )
    for trial in record:
        m = trial["metrics"]
        print(
            f"  {Path(args.out) / trial['run']}: validation accuracy {m.get('accuracy', float('nan')):.3f}, "
            f"AUC {m.get('auc', float('nan')):.3f}"
        )
    print(f"sweep record {Path(args.out) / 'sweep.json'} (TensorBoard: tensorboard --logdir {args.out})")
    return 0


def _uses_cuda(args: argparse.Namespace) -> bool:
    """Whether the env or the policy of ``train ppo`` runs on a CUDA device."""
    return any(str(d).startswith("cuda") for d in (options_from_args(args).device, _policy_device(args)))


def _evaluate(args: argparse.Namespace) -> int:
    from wsigym.agents.benchmark import run_protocol
    from wsigym.evaluate import evaluate
    from wsigym.io import atomic_write_text

    out = Path(args.out)
    progress = not args.no_progress
    dataset, fold, kwargs = _evaluate_env(args)
    if (args.card or args.push) and not args.policy:
        raise SystemExit("wsigym evaluate: --card/--push need --policy FOLDER")
    if args.all and (args.slides or args.sample):
        raise SystemExit(
            "wsigym evaluate: --slides/--sample select slides without --all (--all takes --max-slides)"
        )
    connect_from_args(args)
    if args.all:
        protocol = run_protocol(
            policy=args.policy,
            dataset=dataset,
            split=args.split,
            budgets=args.budgets,
            seeds=args.seeds,
            env_kwargs=kwargs,
            max_slides=args.max_slides,
            out=out,
            readme=args.readme,
            ablation=not args.no_ablation,
            ablation_budgets=args.ablation_budgets,
            ablation_slides=args.ablation_slides,
            progress=progress,
            backend=args.backend,
        )
        print(protocol.markdown)
        _card_and_push(args, protocol.main)
        return 0
    agents = list(args.agent) + ([args.policy] if args.policy else [])
    if not agents:
        raise SystemExit("wsigym evaluate: give at least one --agent (or --policy, or --all)")
    names = [("ppo" if args.policy and a == args.policy else str(a)) for a in agents]
    report = evaluate(
        agents,
        env_id=args.env,
        dataset=dataset,
        split=args.split,
        fold=fold,
        budgets=args.budgets,
        seeds=args.seeds,
        env_kwargs=kwargs,
        max_slides=args.max_slides,
        slides=[s for s in args.slides.split(",") if s] if args.slides else None,
        sample=args.sample,
        sample_seed=args.seed,
        names=names,
        progress=progress,
        backend=args.backend,
    )
    out.mkdir(parents=True, exist_ok=True)
    report.to_json(out / "results.json")
    text = report.caption() + "\n\n" + report.to_markdown() + "\n"
    atomic_write_text(out / "results.md", text)
    print(text)
    _card_and_push(args, report)
    return 0


def _sb3_export(args: argparse.Namespace) -> int:
    from wsigym.agents.publish import RESULTS_NAME, write_card
    from wsigym.agents.sb3_export import export_sb3
    from wsigym.evaluate import EvalReport

    summary = export_sb3(
        args.folder,
        split=args.split,
        n_eval_episodes=args.episodes,
        seed=args.seed,
        replay=not args.no_replay,
        progress=not args.no_progress,
    )
    print(
        f"wrote {Path(args.folder) / summary['zip']}, config.yml, env_kwargs.yml"
        + (", replay.gif" if not args.no_replay else "")
        + f"; mean_reward {summary['mean_reward']:.2f} +/- {summary['std_reward']:.2f} "
        f"over {summary['n_eval_episodes']} {summary['split']} episodes"
    )
    if args.card:
        report = EvalReport.from_json(Path(args.folder) / RESULTS_NAME)
        print(f"wrote {write_card(args.folder, report)}")
    return 0


def _card_and_push(args: argparse.Namespace, report: Any) -> None:
    """``--card``: write the policy folder's Hub card from ``report``; ``--push REPO``: also publish it."""
    if not (args.card or args.push):
        return
    from wsigym.agents.publish import publish, write_card

    write_card(args.policy, report, repo_id=args.push)
    print(f"wrote the Hub card of {args.policy}")
    if args.push:
        sha = publish(args.policy, args.push)
        print(f"pushed {args.policy} to {args.push} ({sha})")


def _demo(args: argparse.Namespace) -> int:
    from wsigym.agents.ppo import train_ppo
    from wsigym.agents.recipes import PPOConfig
    from wsigym.evaluate import evaluate

    progress = not args.no_progress
    env_kwargs = _env_kwargs(args)
    dataset, fold, eval_kwargs = _evaluate_env(args)
    config = PPOConfig(
        env_kwargs=env_kwargs,
        total_timesteps=args.timesteps,
        n_envs=4,
        n_steps=32,
        batch_size=64,
        eval_freq=args.timesteps,
        eval_slides=2,
        checkpoint_freq=args.timesteps,
    )
    print(
        f"wsigym demo: MaskablePPO on WSIZoom-v0 / {dataset}, {args.timesteps} timesteps from the "
        "HAFED-attention warm start (a short run, not the benchmark; first use computes the zoom oracle V)"
    )
    t0 = time.perf_counter()
    train_ppo(config, args.out, progress=progress)
    print(f"trained in {time.perf_counter() - t0:.0f} s; policy in {args.out}")
    max_slides = args.max_slides or None
    from wsigym.agents.benchmark import full_protocol_agents

    agents, names = full_protocol_agents(args.out)
    report = evaluate(
        agents,
        dataset=dataset,
        split="test",
        fold=fold,
        budgets=(0.1, 0.2),
        seeds=(0,),
        env_kwargs=eval_kwargs,
        max_slides=max_slides,
        names=names,
        progress=progress,
    )
    subset = f"first {report.slides} test slides" if max_slides else "all test slides"
    print(f"\nEvaluation ({subset}, 1 seed; the full protocol is `wsigym evaluate --all`):\n")
    print(report.caption())
    print(report.to_markdown())
    return 0
