r"""SASHA's experiment on a dataset: the policies to train, training them across sessions, the protocol record.

**The plan** (:func:`sasha_plan`), every policy trained with ``--recipe sasha`` and SASHA's reward (``ce``):

- *main rows*: the TSU rule at budgets 10% and 20%, one policy per training seed, at SASHA's scale;
- *ablation*: one policy per update rule (TSU, global, none) at 20%, per training seed, all at one common
  scale ``ablation_passes`` (a TSU ablation run at SASHA's scale is the main run itself).

**Scale.** SASHA trains 15 passes over the training slides with 2 episodes per slide
(``step6_rl_training.py``; ``config/camelyon_rl_config.yml``), so a run of ``passes`` passes at budget ``b`` is
``passes * 2 * sum_slides ceil(b * N)`` timesteps (:func:`sasha_timesteps`; 993,060 at 10% and 1,982,970 at 20%
on synth-c16's 243 training slides), validated once per pass as SASHA does. Each row of the table states the
compute it used.

**Running** (:func:`run_plan`, ``wsigym reproduce run``). The runs are worked through in plan order; a run is a
normal ``wsigym train ppo`` folder ``out/<name>/`` (TensorBoard logs, checkpoints, ``best/``) plus
``evaluation.json``: its greedy policy on the full test split at its budget and under its rule
(:func:`wsigym.evaluate.evaluate`, episode seed 0). A run with ``evaluation.json`` is done; one with a
resumable checkpoint continues from it (:mod:`wsigym.agents.resume`), so a run longer than a session goes on
in the next one; any other starts afresh. Each run is held under a file lock while a process works on it, so
starting the same command once per core runs that many runs at a time (a lock dies with its process). The
untrained comparisons (random, attention-top-k, full-resolution HAFED; episode seeds 0-2) and the shipped
evidence-reward policy are evaluated once, into ``out/baselines.json`` and ``out/evidence.json``.

**What outlives the machine.** A session's machine (with ``out``) may be gone by the next session, so each finished
evaluation is also copied into the repository's record, ``<results>/<dataset>/reproduce/`` (:func:`record_dir`:
``<name>/reproduce.json``, ``<name>/evaluation.json`` and ``<name>/curves.json`` per run, ``baselines.json``,
``evidence.json``; a few kB each, committed), with the evaluated policy itself (``<name>/policy.safetensors`` +
``policy.json``, ~0.9 MB; ``<results>/<dataset>/reproduce/<name>`` loads with
:func:`wsigym.agents.saved_policy.load_policy`), so a finished policy can be analysed on any machine. A run or
comparison found there is done and is not trained or evaluated again. ``curves.json`` (:mod:`wsigym.agents.learning_curves`) holds the run's training and validation
curves, so ``report`` also draws ``<results>/<dataset>/reproduce/learning-curves.png`` from the record alone.

**Unfinished runs outlive the machine too.** While a run trains, the record also holds ``<name>/unfinished/``: its
latest resumable checkpoint, best policy so far, validation history and TensorBoard logs
(:func:`wsigym.agents.resume.export_run`, refreshed after every checkpoint; ~4 MB). A machine without the run folder
continues the run from there (:func:`wsigym.agents.resume.import_run`), so a run may span sessions on different
machines; ``unfinished/`` is removed when the run is evaluated. ``wsigym reproduce carry`` exports the runs of
``out`` that are not finished (e.g. those started by code older than this).

**The record** (:func:`collect_protocol`, ``wsigym reproduce report``): every finished evaluation becomes
:class:`~wsigym.agents.protocol_record.TrainedRun` rows, written as ``<results>/<dataset>/protocol.json``
and its README table (:mod:`wsigym.agents.protocol_record`). Unfinished runs are listed, never guessed.
"""

from __future__ import annotations

import argparse
import math
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import filelock

from wsigym.agents.learning_curves import CURVES, draw_curves, load_curves, write_curves
from wsigym.agents.schedule import SASHA_EPISODES, SASHA_PASSES, pass_timesteps
from wsigym.cachedir import lock_path
from wsigym.envs.options import DEFAULT_DATASET
from wsigym.io import atomic_write, atomic_write_json

#: Shipped weak-supervision policy, evaluated as a second, labelled row.
EVIDENCE_POLICY = "ppo-WSIZoom-v0"
#: Budgets at which the comparisons are always evaluated (SASHA-0.1 and SASHA-0.2), whichever rows a process runs.
REFERENCE_BUDGETS = (0.1, 0.2)
EVALUATION = "evaluation.json"
BASELINES = "baselines.json"
EVIDENCE = "evidence.json"
#: The planned run and its compute, written into the run folder before training starts.
RUN_RECORD = "reproduce.json"
#: Folder of the committed record under ``<results>/<dataset>/`` (:func:`record_dir`).
RECORD_FOLDER = "reproduce"
#: The record's copy of a run that is not finished yet (module docstring).
UNFINISHED = "unfinished"
#: The figure ``report`` draws into the record from every run's ``curves.json``.
CURVES_FIGURE = "learning-curves.png"
#: Environment options of each rule. SASHA's global-update environment (``envs/WSI_env.py``) hands its agent
#: ``Z`` at every step, so the global row's agent sees ``Z`` too (``agent_view="lowres"``); the classifier and
#: the reward read the updated state as under every rule.
RULE_OPTIONS: dict[str, dict[str, str]] = {
    "tsu": {"update": "tsu"},
    "global": {"update": "global", "agent_view": "lowres"},
    "none": {"update": "none"},
}


@dataclass(frozen=True)
class PlannedRun:
    """One policy of the plan: ``--recipe sasha`` under ``update`` at ``budget`` for ``passes`` passes."""

    update: str
    budget: float
    seed: int
    passes: float

    @property
    def env_options(self) -> dict[str, str]:
        """The environment options of its rule (:data:`RULE_OPTIONS`)."""
        return RULE_OPTIONS.get(self.update, {"update": self.update})

    @property
    def name(self) -> str:
        """Folder name, e.g. ``tsu-20pct-15p-seed0``."""
        return f"{self.update}-{round(self.budget * 100)}pct-{self.passes:g}p-seed{self.seed}"


def sasha_plan(
    seeds: Sequence[int] = (0, 1, 2),
    *,
    passes: float = SASHA_PASSES,
    ablation_passes: float | None = None,
    budgets: Sequence[float] = (0.1, 0.2),
    ablation_budget: float = 0.2,
    updates: Sequence[str] = ("tsu", "global", "none"),
    rows: Sequence[str] = ("main", "ablation"),
) -> list[PlannedRun]:
    """The runs of the experiment, seed by seed (a first seed gives every row before a second starts); within
    a seed the main TSU rows come first, then the ablation rules; a run in both lists appears once. ``rows``
    keeps the ``"main"`` rows, the ``"ablation"`` or both; ``ablation_passes`` defaults to ``passes``."""
    ablation_passes = passes if ablation_passes is None else ablation_passes
    for name, value in (("passes", passes), ("ablation_passes", ablation_passes)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(
                f"{name} must be a positive number of passes over the training slides, got {value!r}"
            )
    if not seeds:
        raise ValueError("seeds: give at least one training seed")
    plan: list[PlannedRun] = []
    for seed in seeds:
        runs = (
            [PlannedRun("tsu", b, seed, passes) for b in sorted(budgets, reverse=True)]
            if "main" in rows
            else []
        )
        if "ablation" in rows:
            runs += [PlannedRun(u, ablation_budget, seed, ablation_passes) for u in updates]
        for run in runs:
            if run not in plan:
                plan.append(run)
    return plan


def sasha_timesteps(
    budget_steps: Sequence[int], passes: float, episodes: int = SASHA_EPISODES
) -> tuple[int, int]:
    """``(total_timesteps, timesteps_per_pass)`` of ``passes`` passes, ``episodes`` episodes per slide, given
    each training slide's episode length ``ceil(budget * N)``."""
    per_pass = pass_timesteps(budget_steps, episodes)
    return max(1, math.ceil(passes * per_pass)), per_pass


def _train_steps(dataset: Any, budget: float, env_kwargs: dict[str, Any]) -> list[int]:
    """Episode length of each training slide at ``budget`` (reads the cached per-slide records)."""
    import gymnasium as gym

    kwargs = {**env_kwargs, "progress": False}
    env = gym.make("WSIZoom-v0", dataset=dataset, split="train", budget=budget, **kwargs)
    try:
        return list(env.unwrapped.source.budget_steps(budget))
    finally:
        env.close()


def compute_note(run: PlannedRun, timesteps: int, slides: int) -> str:
    """What a run costs, in words (the table's ``compute`` column)."""
    passes = f"{run.passes:g} pass" + ("" if run.passes == 1 else "es")
    return f"{passes} x {slides} slides x {SASHA_EPISODES} episodes = {timesteps:,} timesteps"


@contextmanager
def claim(path: Path) -> Iterator[bool]:
    """Hold ``path``'s lock file (``.<name>.lock`` beside it) if no other process does; yields whether it did."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_path(path)))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def record_dir(results: str | Path, dataset: Any = DEFAULT_DATASET) -> Path:
    """The committed record of finished runs: ``<results>/<dataset>/reproduce/`` (module docstring)."""
    return Path(results) / str(getattr(dataset, "name", dataset)) / RECORD_FOLDER


def _finished(out: Path, record: Path | None, relative: str) -> Path | None:
    """Where ``relative`` (e.g. ``<name>/evaluation.json``) is: the record first, then ``out``; None if neither."""
    for root in (record, out):
        if root is not None and (root / relative).is_file():
            return root / relative
    return None


def _keep(out: Path, record: Path | None, relatives: Sequence[str]) -> None:
    """Copy finished files from ``out`` into the record (atomically: temp file, then rename), unless the
    record already holds the same bytes."""
    if record is None:
        return
    for relative in relatives:
        target = record / relative
        if target.is_file() and target.read_bytes() == (out / relative).read_bytes():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp, source=out / relative: shutil.copyfile(source, tmp))


def train_and_evaluate(
    run: PlannedRun,
    out: Path,
    *,
    dataset: Any = DEFAULT_DATASET,
    env_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    record: Path | None = None,
    callbacks: Sequence[Any] = (),
) -> Path:
    """Train ``run`` into ``out/<name>`` (continuing from its checkpoint when there is one) and evaluate it.
    ``env_kwargs`` (``hafed``, ``tsu``, ...) go to the training and the evaluation environments. With a
    ``record`` folder (:func:`record_dir`), a run found there is done, a run unfinished there continues from
    its copy when ``out`` has none, and a run training here keeps its copy there (module docstring).
    ``callbacks``: more SB3 callbacks for the training.

    Returns:
        the path of its ``evaluation.json``.
    """
    from wsigym.agents.ppo import train_ppo
    from wsigym.agents.recipes import ppo_config
    from wsigym.agents.resume import LATEST, RESUME_DIR, ExportCheckpoints, import_run
    from wsigym.agents.saved_policy import POLICY_CONFIG, POLICY_WEIGHTS
    from wsigym.evaluate import evaluate

    env_kwargs = dict(env_kwargs or {})
    folder = out / run.name
    files = [f"{run.name}/{RUN_RECORD}", f"{run.name}/{EVALUATION}", f"{run.name}/{CURVES}"]
    files += [f"{run.name}/{POLICY_WEIGHTS}", f"{run.name}/{POLICY_CONFIG}"]  # the evaluated policy
    carried = record / run.name / UNFINISHED if record is not None else None
    done = _finished(out, record, files[1])
    if done is not None:
        if (
            folder / EVALUATION
        ).is_file():  # finished on this machine: the record gets its files (curves once)
            if not (folder / CURVES).is_file():
                write_curves(folder)
            _keep(out, record, files)
        if carried is not None:
            shutil.rmtree(carried, ignore_errors=True)
        return done
    if not (folder / "train.json").is_file():
        resume = (folder / RESUME_DIR / LATEST).is_file()
        if not resume and carried is not None and carried.is_dir():
            import_run(carried, folder)
            resume = True
            print(f"wsigym reproduce: {run.name} continues from the record's copy ({carried})")
        steps = _train_steps(dataset, run.budget, env_kwargs)
        total, per_pass = sasha_timesteps(steps, run.passes)
        config = ppo_config(
            "sasha",
            env_kwargs={**env_kwargs, **run.env_options, "dataset": dataset, "budget": run.budget},
            seed=run.seed,
            total_timesteps=total,
            eval_freq=min(per_pass, total),
            # one SB3 zip per pass (~24 MB each on synth-c16: the zip stores the P x d observation space);
            # interruption is handled by resume/ (every 10 updates), not by these
            checkpoint_freq=min(per_pass, total),
        )
        if not resume and folder.exists():
            shutil.rmtree(folder)  # started but never checkpointed: nothing to keep
        note = compute_note(run, total, len(steps))
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / RUN_RECORD, {**asdict(run), "timesteps": total, "compute": note})
        print(f"wsigym reproduce: {'resuming' if resume else 'training'} {run.name} ({note})")
        keep = [ExportCheckpoints(folder, carried, (RUN_RECORD,))] if carried is not None else []
        train_ppo(config, folder, progress=progress, resume=resume, callbacks=[*keep, *callbacks])
    print(f"wsigym reproduce: evaluating {run.name} on the test split")
    report = evaluate(
        [str(folder)],
        names=["sasha"],
        dataset=dataset,
        budgets=(run.budget,),
        seeds=(0,),
        env_kwargs={**env_kwargs, **run.env_options},
        progress=progress,
    )
    report.to_json(folder / EVALUATION)
    write_curves(folder)
    _keep(out, record, files)
    if carried is not None:
        shutil.rmtree(carried, ignore_errors=True)
    return _finished(out, record, files[1]) or folder / EVALUATION


def evaluate_references(
    out: Path,
    *,
    dataset: Any = DEFAULT_DATASET,
    budgets: Sequence[float] = (0.1, 0.2),
    env_kwargs: dict[str, Any] | None = None,
    evidence_policy: str | None = EVIDENCE_POLICY,
    progress: bool = True,
    record: Path | None = None,
) -> None:
    """Evaluate the untrained comparisons (3 episode seeds) and the evidence-reward policy (None: skip) once;
    a comparison found in ``record`` (:func:`record_dir`) is not evaluated again."""
    from wsigym.evaluate import evaluate

    jobs: list[tuple[Path, list[str], list[str] | None, tuple[int, ...]]] = [
        (out / BASELINES, ["random", "attention-topk", "full-hafed"], None, (0, 1, 2))
    ]
    if evidence_policy is not None:
        jobs.append((out / EVIDENCE, [evidence_policy], ["ppo (evidence reward)"], (0,)))
    for target, agents, names, seeds in jobs:
        with claim(target) as mine:
            if not mine or _finished(out, record, target.name) is not None:
                if mine and target.is_file():
                    _keep(out, record, [target.name])
                continue
            print(f"wsigym reproduce: evaluating {', '.join(map(str, agents))} on the test split")
            report = evaluate(
                agents,
                names=names,
                dataset=dataset,
                budgets=budgets,
                seeds=seeds,
                env_kwargs=env_kwargs,
                progress=progress,
            )
            report.to_json(target)
            _keep(out, record, [target.name])


def run_plan(
    plan: Sequence[PlannedRun],
    out: str | Path,
    *,
    dataset: Any = DEFAULT_DATASET,
    env_kwargs: dict[str, Any] | None = None,
    evidence_policy: str | None = EVIDENCE_POLICY,
    progress: bool = True,
    record: Path | None = None,
) -> list[str]:
    """Work through ``plan`` (module docstring), skipping runs another process holds; returns the names of the
    runs this call finished or found finished. ``env_kwargs`` go to every environment; ``record``
    (:func:`record_dir`; None: none) is read for finished runs and receives the ones finished here."""
    out = Path(out)
    budgets = sorted(set(REFERENCE_BUDGETS) | {r.budget for r in plan})
    evaluate_references(
        out,
        dataset=dataset,
        budgets=budgets,
        env_kwargs=env_kwargs,
        evidence_policy=evidence_policy,
        progress=progress,
        record=record,
    )
    finished = []
    for run in plan:
        with claim(out / run.name) as mine:
            if mine:
                train_and_evaluate(
                    run, out, dataset=dataset, env_kwargs=env_kwargs, progress=progress, record=record
                )
                finished.append(run.name)
    return finished


def plan_status(
    plan: Sequence[PlannedRun], out: str | Path, record: Path | None = None
) -> list[tuple[str, str]]:
    """``(name, state)`` per run: ``done``, ``trained`` (not evaluated), ``at <k> of <n> timesteps`` (from
    ``out``, else ``(in the record)`` from its unfinished copy) or ``not started`` (``done`` when its
    evaluation is in ``out`` or in the ``record``, :func:`record_dir`)."""
    import json

    from wsigym.agents.resume import STATE, latest_checkpoint
    from wsigym.errors import DataError

    def progress(folder: Path) -> str:
        saved = json.loads((latest_checkpoint(folder) / STATE).read_text())
        return f"at {saved['num_timesteps']:,} of {saved['config']['total_timesteps']:,} timesteps"

    out = Path(out)
    states = []
    for run in plan:
        folder = out / run.name
        if _finished(out, record, f"{run.name}/{EVALUATION}") is not None:
            state = "done"
        elif (folder / "train.json").is_file():
            state = "trained (not evaluated)"
        else:
            try:
                state = progress(folder)
            except DataError:
                state = "not started"
                if record is not None and (record / run.name / UNFINISHED).is_dir():
                    state = f"{progress(record / run.name / UNFINISHED)} (in the record)"
        states.append((run.name, state))
    return states


def carry_unfinished(plan: Sequence[PlannedRun], out: str | Path, record: Path) -> list[str]:
    """Export each run of ``plan`` that has a checkpoint in ``out`` but no evaluation into
    ``record/<name>/unfinished/`` (:func:`wsigym.agents.resume.export_run`); returns their names."""
    from wsigym.agents.resume import export_run

    out = Path(out)
    carried = []
    for run in plan:
        target = record / run.name / UNFINISHED
        if _finished(out, record, f"{run.name}/{EVALUATION}") is None and export_run(
            out / run.name, target, (RUN_RECORD,)
        ):
            carried.append(run.name)
    return carried


def plan_curves(
    plan: Sequence[PlannedRun], out: str | Path, record: Path | None = None
) -> dict[str, dict[str, Any]]:
    """``{name: curves}`` (:mod:`wsigym.agents.learning_curves`) of the plan's finished runs that have a
    ``curves.json``, read from ``record`` (:func:`record_dir`) or else from ``out``, in plan order."""
    out = Path(out)
    curves = {}
    for run in plan:
        evaluated = _finished(out, record, f"{run.name}/{EVALUATION}")
        path = _finished(out, record, f"{run.name}/{CURVES}")
        if evaluated is not None and path is not None:
            curves[run.name] = load_curves(path)
    return curves


def draw_plan_curves(
    plan: Sequence[PlannedRun], out: str | Path, record: Path, *, dataset: Any = DEFAULT_DATASET
) -> Path | None:
    """Draw :func:`plan_curves` into ``record/learning-curves.png``; None (nothing written) without curves."""
    curves = plan_curves(plan, out, record)
    if not curves:
        return None
    name = getattr(dataset, "name", dataset)
    return draw_curves(curves, record / CURVES_FIGURE, title=f"SASHA's recipe on {name}: {len(curves)} runs")


def collect_protocol(
    plan: Sequence[PlannedRun],
    out: str | Path,
    *,
    dataset: Any = DEFAULT_DATASET,
    record: Path | None = None,
) -> dict[str, Any]:
    """The protocol record (:func:`~wsigym.agents.protocol_record.build_protocol`) of every evaluated run of
    ``plan``, the baselines and the evidence-reward policy, each read from ``record`` (:func:`record_dir`) or
    else from ``out``.

    Raises:
        ValueError: when the baselines (which hold full HAFED) are not evaluated yet.
    """
    import json

    from wsigym.agents.protocol_record import FullHafed, build_protocol, runs_from_report
    from wsigym.evaluate import EvalReport

    out = Path(out)
    baselines = _finished(out, record, BASELINES)
    if baselines is None:
        raise ValueError(
            f"{out / BASELINES}: the baselines are not evaluated yet (run `wsigym reproduce run`)"
        )
    runs, full = runs_from_report(
        EvalReport.from_json(baselines),
        recipe=None,
        reward=None,
        update="tsu",
        train_seed=None,
        include_baselines=True,
    )
    for run in plan:
        path = _finished(out, record, f"{run.name}/{EVALUATION}")
        if path is not None:
            note = json.loads((path.parent / RUN_RECORD).read_text())["compute"]
            runs += runs_from_report(
                EvalReport.from_json(path),
                recipe="sasha",
                reward="ce",
                update=run.update,
                train_seed=run.seed,
                compute=note,
            )[0]
    evidence = _finished(out, record, EVIDENCE)
    if evidence is not None:
        runs += runs_from_report(
            EvalReport.from_json(evidence),
            recipe="evidence-bandit",
            reward="evidence",
            update="tsu",
            train_seed=0,
            compute="32,768 timesteps (the shipped policy, trained at 2% budget)",
        )[0]
    return build_protocol(runs, FullHafed(full[:1]), dataset=str(getattr(dataset, "name", dataset)))


def add_subcommand(sub: Any) -> None:
    """``wsigym reproduce {run,status,report}`` (module docstring)."""
    p = sub.add_parser("reproduce", help="SASHA's experiment: train the plan's policies (resumable), report")
    p.add_argument(
        "action",
        choices=("run", "status", "report", "carry"),
        help="run: work through the plan (start once per core); status: where each run is; "
        "report: protocol.json, its table and the learning curves of the finished runs; "
        "carry: copy the unfinished runs' latest checkpoints into the record (run does it by itself)",
    )
    p.add_argument("--out", default="runs/sasha-synth-c16", help="folder of the runs (default: %(default)s)")
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    p.add_argument(
        "--passes",
        type=float,
        default=SASHA_PASSES,
        help="passes over the training slides of the main rows (SASHA: %(default)s)",
    )
    p.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        default=list(REFERENCE_BUDGETS),
        help="budgets of the main rows (default: %(default)s; e.g. 0.1 alone for a lane whose runs fit a session)",
    )
    p.add_argument(
        "--ablation-passes",
        type=float,
        default=None,
        help="common passes of the update-rule ablation (default: --passes)",
    )
    p.add_argument(
        "--updates",
        nargs="+",
        choices=tuple(RULE_OPTIONS),
        default=list(RULE_OPTIONS),
        help="update rules of the ablation, in this order (default: %(default)s)",
    )
    p.add_argument(
        "--rows",
        nargs="+",
        choices=("main", "ablation"),
        default=["main", "ablation"],
        help="which part of the plan (default: both)",
    )
    p.add_argument(
        "--results",
        default="results",
        help="folder of protocol.json and of the committed record of finished runs, <results>/<dataset>/"
        f"{RECORD_FOLDER}/ (default: %(default)s)",
    )
    p.add_argument("--readme", default=None, help="report: also replace <!-- results:sasha-DATASET --> in it")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from wsigym.agents.protocol_record import write_protocol

    plan = sasha_plan(
        args.seeds,
        passes=args.passes,
        ablation_passes=args.ablation_passes,
        budgets=args.budgets,
        updates=args.updates,
        rows=args.rows,
    )
    record = record_dir(args.results, args.dataset)
    if args.action == "run":
        run_plan(plan, args.out, dataset=args.dataset, progress=not args.no_progress, record=record)
    if args.action == "carry":
        for name in carry_unfinished(plan, args.out, record):
            print(f"{name}: copied to {record / name / UNFINISHED}")
    if args.action in ("run", "status", "carry"):
        for name, state in plan_status(plan, args.out, record):
            print(f"{name:32s} {state}")
    if args.action == "report":
        protocol = collect_protocol(plan, args.out, dataset=args.dataset, record=record)
        path = write_protocol(protocol, args.results, readme=args.readme, readme_key=f"sasha-{args.dataset}")
        print(f"wrote {path}")
        figure = draw_plan_curves(plan, args.out, record, dataset=args.dataset)
        if figure is not None:
            print(f"wrote {figure}")
    return 0
