"""The ``zoo`` command: list, pull, push, inspect, train and tabulate zoo models.

- ``zoo list``                               registered names, their repo ids and where they are available
- ``zoo pull NAME_OR_REPO [--revision R]``   download into the Hub cache (prints the folder)
- ``zoo push DIR REPO_ID``                   upload a model folder (checked first) or any artefact folder
- ``zoo info NAME_OR_REPO_OR_PATH``          config, parameter count and card metrics
- ``zoo train ARCH --dataset NAME_OR_FOLDER ...``  train, evaluate and save (config + weights + card)
- ``zoo train ARCH --dataset D --cv K [--repeats R]``  stratified K-fold cross-validation
- ``zoo train ARCH [ARCH ...] --seeds S [S ...] --dataset D [--backend ray [--address A]]``  a sweep: one
  run per family and seed, one after another or as Ray Tune trials (:mod:`wsigym.distributed.sweeps`)
- ``zoo results DIR... [--out FILE]``        results table of training runs (mean ± std for CV folders)

Global options: ``zoo --threads N`` (torch CPU threads), ``zoo --quiet`` (no progress bars), ``zoo --debug``
(the traceback of an error; otherwise an error prints one line naming the file, key or argument, exit
status 2). Hub calls wait at most ``$ZOO_HUB_TIMEOUT`` seconds (default 30) for each network operation.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsigym.distributed.cluster import add_backend_arguments


def _parse_value(text: str) -> Any:
    """``key=value`` values: JSON when it parses (numbers, booleans, lists, null), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items: Sequence[str] | None, option: str = "--config") -> dict[str, Any]:
    """``["hidden=256", "gated=false"]`` -> ``{"hidden": 256, "gated": False}``.

    Raises:
        ValueError: for an item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} expects key=value, got {item!r}")
        out[key.strip()] = _parse_value(value.strip())
    return out


def _cmd_list(args: argparse.Namespace) -> int:
    from zoo import hub
    from zoo.pretrained import PRETRAINED, hub_org

    rows = []
    for name in hub.list_pretrained():
        entry = PRETRAINED[name]
        if entry.is_shipped():
            where = "shipped"
        elif hub.cached_revision(entry.repo_id()):
            where = "cached"
        else:
            where = "hub"
        rows.append((name, entry.architecture, entry.dataset, entry.repo_id(), where))
    widths = [max(len(r[i]) for r in [("name", "arch", "dataset", "repo", "where"), *rows]) for i in range(5)]
    header = ("name", "arch", "dataset", "repo", "where")
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    print(f"\norganisation: {hub_org()} (set ZOO_HUB_ORG to change)")
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    from zoo import hub

    print(hub.pull(args.name, revision=args.revision))
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from zoo import hub

    sha = hub.push_folder(args.folder, args.repo_id, commit_message=args.message, private=args.private)
    print(f"pushed {args.folder} to {args.repo_id} @ {sha}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from zoo import cards, hub

    folder, entry = hub.resolve(args.name, args.revision)
    info: dict[str, Any] = {"source": args.name, "folder": str(folder)}
    if entry is not None:
        info["registered"] = {"repo_id": entry.repo_id(), "dataset": entry.dataset, "kind": entry.kind}
    if (folder / hub.CONFIG_NAME).is_file() and (entry is None or entry.kind == "mil"):
        model = hub.load_folder(folder, expected_architecture=entry.architecture if entry else None)
        info["config"] = model.config_dict()
        info["parameters"] = model.num_parameters()
    card = folder / hub.CARD_NAME
    if card.is_file():
        try:
            info["card_metrics"] = cards.card_metrics(card.read_text())
        except cards.CardError as e:
            info["card_metrics"] = f"unreadable card: {e}"
    print(json.dumps(info, indent=2, default=str))
    return 0


def _clip_text_setup(args: argparse.Namespace, dataset: Any) -> Any:
    """``zoo train wisefuse --clip``: a setup hook that sets the class text embeddings from open_clip."""
    if args.clip is None:
        return None
    if args.arch != "wisefuse":
        raise SystemExit(f"zoo train: --clip is for wisefuse only, not {args.arch}")
    import torch

    from zoo.models.wisefuse import load_class_descriptions, text_embeddings_from_open_clip

    clip: Any = args.clip
    if clip.endswith(".json") and Path(clip).is_file():  # an open_clip model config (embed_dim, ...)
        try:
            clip = json.loads(Path(clip).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SystemExit(f"zoo train: --clip {args.clip}: not valid JSON ({err})") from err
    descriptions = load_class_descriptions(args.descriptions)
    torch.manual_seed(args.seed)  # only matters for a config without pretrained weights (tests)
    text = text_embeddings_from_open_clip(
        clip, descriptions, args.clip_pretrained, class_names=list(dataset.class_names)
    )
    return lambda model: model.set_text_embeddings(text)


def _fold_trainer(args: argparse.Namespace, overrides: dict[str, Any], fit_kwargs: dict[str, Any]) -> Any:
    """``train(dataset, out_dir, fold, seed) -> Path``: one run of ``args.arch`` (any family)."""

    def train(dataset: Any, out: Path, fold: int, seed: int) -> Path:
        if args.arch == "tsu":
            from zoo.train_tsu import train_and_save_tsu

            if not args.hafed:
                raise SystemExit("zoo train tsu needs --hafed NAME_OR_FOLDER (a trained HAFED)")
            unsupported = [k for k in ("selection", "patience") if k in fit_kwargs]
            if unsupported:
                raise ValueError(
                    f"--{unsupported[0]}: tsu keeps the epoch with the lowest validation MSE (no rule to choose)"
                )
            return train_and_save_tsu(
                args.hafed, dataset, out, fold=fold, seed=seed, **overrides, **fit_kwargs
            )
        if args.arch == "lrmil":
            from zoo import hub
            from zoo.train import save_run
            from zoo.train_lrmil import fit_lrmil

            teacher = hub.load(args.teacher) if args.teacher else None
            result = fit_lrmil(dataset, teacher, fold=fold, seed=seed, config=overrides, **fit_kwargs)
            return save_run(result, out, architecture="lrmil", dataset=dataset, fold=fold, seed=seed)
        from zoo.train import train_and_save

        return train_and_save(
            args.arch,
            dataset,
            out_dir=out,
            fold=fold,
            seed=seed,
            config=overrides,
            setup=_clip_text_setup(args, dataset),
            **fit_kwargs,
        )

    return train


def _train_setup(args: argparse.Namespace) -> tuple[Any, dict[str, Any], dict[str, Any], str, Any]:
    """``(dataset, model overrides, fit kwargs, out folder, trainer)`` of ``zoo train``'s options for
    one family ``args.arch``."""
    import dataclasses

    from wsigym.data.formats import open_dataset
    from zoo.registry import model_class

    reader_kwargs: dict[str, Any] = {}
    if args.format:
        reader_kwargs["format"] = args.format
    if args.labels:
        reader_kwargs["labels"] = args.labels
    reader_kwargs.update(parse_overrides(args.reader, option="--reader"))
    dataset = open_dataset(args.dataset, **reader_kwargs)
    overrides = parse_overrides(args.config)
    if args.dropout is not None:
        fields = {f.name for f in dataclasses.fields(model_class(args.arch).config_class)}
        if "dropout" not in fields:
            raise ValueError(f"--dropout: {args.arch} has no dropout (its config has no 'dropout' field)")
        overrides["dropout"] = args.dropout
    out = args.out or f"runs/{args.arch}-{Path(str(args.dataset)).name}" + (
        f"-cv{args.cv}" if args.cv else ""
    )
    fit_kwargs: dict[str, Any] = {"progress": not args.quiet}
    for key in ("epochs", "lr", "weight_decay", "patience", "selection", "max_slides"):
        if getattr(args, key) is not None:
            fit_kwargs[key] = getattr(args, key)
    return dataset, overrides, fit_kwargs, out, _fold_trainer(args, overrides, fit_kwargs)


def _cmd_train(args: argparse.Namespace) -> int:
    families = list(dict.fromkeys(args.arch))
    if len(families) > 1 or args.seeds or args.backend == "ray":
        return _sweep_train(args, families)
    args.arch = families[0]
    dataset, overrides, fit_kwargs, out, train = _train_setup(args)
    if args.cv is None:
        if args.repeats != 1 or args.val_fraction is not None or args.standardise:
            raise ValueError("--repeats, --val-fraction and --standardise need --cv K")
        print(f"saved {train(dataset, Path(out), args.fold, args.seed)}")
        return 0
    from zoo.crossval import cross_validate
    from zoo.results import results_table

    path = cross_validate(
        dataset,
        lambda ds, run_dir, seed: train(ds, run_dir, 0, seed),
        out,
        k=args.cv,
        repeats=args.repeats,
        seed=args.seed,
        val_fraction=args.val_fraction or 0.0,
        standardise=args.standardise,
        settings={
            "arch": args.arch,
            "config": overrides,
            **{k: v for k, v in fit_kwargs.items() if k != "progress"},
        },
    )
    print(results_table([path]), end="")
    print(f"saved {path} ({args.cv} folds x {args.repeats} repeat(s))")
    return 0


def _sweep_trial(args: argparse.Namespace, out: Path, point: dict[str, Any]) -> dict[str, float]:
    """One run of a ``zoo train`` sweep, in ``out/<family>-seed<N>``; its validation and test metrics."""
    import copy

    from wsigym.distributed.sweeps import trial_name

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    one = copy.copy(args)
    one.arch, one.seed, one.quiet = point["family"], point["seed"], True
    dataset, _, _, _, train = _train_setup(one)
    run = train(dataset, out / trial_name(point), args.fold, point["seed"])
    record = json.loads((Path(run) / "metrics.json").read_text(encoding="utf-8"))
    return {
        f"{part}_{k}": float(v)
        for part in ("val", "test")
        for k, v in (record.get(part) or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _sweep_train(args: argparse.Namespace, families: list[str]) -> int:
    """``zoo train FAMILY [FAMILY ...] [--seeds S ...] [--backend ray]``: one run per (family, seed)."""
    import functools

    from wsigym.distributed.cluster import connect_from_args
    from wsigym.distributed.sweeps import run_sweep

    if args.cv is not None:
        raise ValueError(
            "--cv runs its own folds: sweep one family and seed at a time (no --seeds, one ARCH)"
        )
    connect_from_args(args)
    out = Path(args.out or f"runs/sweep-{Path(str(args.dataset)).name}").resolve()
    grid = {"family": families, "seed": args.seeds or [args.seed]}
    record = run_sweep(
        functools.partial(_sweep_trial, args, out),
        grid,
        out,
        backend=args.backend,
        name="zoo-train",
        resources={"cpu": args.threads or 1},
    )
    from zoo.results import results_table

    print(results_table([out / trial["run"] for trial in record]), end="")
    print(f"saved {len(record)} runs under {out} ({args.backend} backend; sweep record {out / 'sweep.json'})")
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from wsigym.io import atomic_write_text
    from wsigym.readme_sections import replace_section
    from zoo.results import results_table

    table = results_table(args.dirs)
    text = table if isinstance(table, str) else str(table)
    if args.out:
        atomic_write_text(Path(args.out), text if text.endswith("\n") else text + "\n")
        print(f"wrote {args.out}")
    if args.readme:
        replace_section(args.readme, "zoo", text)
        print(f"updated the zoo section of {args.readme}")
    if not args.out and not args.readme:
        print(text)
    return 0


TRAIN_DESCRIPTION = """Train ARCH on a dataset (its --fold split, or --cv K folds) and save each run folder:
config + weights + card, metrics.json, and test_predictions.csv (slide_id, label, prob_<class>).

Model selection (--selection): after each validated epoch the rule ranks the epoch, and the weights of
the best one are restored before testing:
  loss     lowest validation NLL (default; continuous, so it does not saturate on 5-20 validation bags)
  auc      highest validation AUC, ties to the lower validation NLL
  f1+auc   highest validation F1 + AUC (ACMIL/ASMIL), ties to the lower validation NLL
  last     the last epoch
Remaining ties go to the later epoch. An EMPTY validation split means "last" whatever the rule (use it
to train on train+val). --patience N stops after N validated epochs without a newly selected one.

Cross-validation (--cv K [--repeats R]): stratified folds from the labels, deterministic given --seed;
fold f of repeat r trains with seed + r*K + f into OUT/r<r>-f<f>/, and OUT/cv.json holds the folds and
mean +- std of the test metrics (also: zoo results OUT)."""


def _positive_int(option: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} expects an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{option} must be >= 1, got {value}")
        return value

    return parse


def apply_global_options(args: argparse.Namespace) -> None:
    """``--threads``: ``torch.set_num_threads``; ``--quiet`` is read by the subcommands."""
    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)


def build_parser() -> argparse.ArgumentParser:
    from zoo.registry import list_architectures
    from zoo.train import SELECTION_RULES

    parser = argparse.ArgumentParser(prog="zoo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=_positive_int("--threads"),
        default=None,
        help="torch CPU threads (default: torch's); use 1 when other jobs share the cores",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error instead of one line"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered pretrained names")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("pull", help="download a registered name or repo into the Hub cache")
    p.add_argument("name", metavar="NAME_OR_REPO")
    p.add_argument("--revision", default=None, help="branch or commit sha")
    p.set_defaults(func=_cmd_pull)

    p = sub.add_parser("push", help="upload a folder to a Hub repo (created if needed)")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("repo_id", metavar="REPO_ID")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("info", help="config, parameters and card metrics of a model")
    p.add_argument("name", metavar="NAME_OR_REPO_OR_PATH")
    p.add_argument("--revision", default=None)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "train",
        help="train a model family on a dataset and save it",
        description=TRAIN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "arch",
        nargs="+",
        choices=list_architectures(),
        help="model family; several (or --seeds, or --backend ray) make a sweep: one run per family and "
        "seed in --out/<family>-seed<N>, plus --out/sweep.json",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="sweep: one run per seed")
    p.add_argument("--dataset", required=True, help="named dataset (synth-c16) or a features folder")
    p.add_argument(
        "--format", default=None, help="folder layout (clam, trident, sasha, native); default: detected"
    )
    p.add_argument("--labels", default=None, help="labels CSV (slide_id,label)")
    p.add_argument(
        "--reader",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="dataset reader options, e.g. hr_root=/features/20x patch_size_level0=2048 (JSON values)",
    )
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override the family recipe")
    p.add_argument("--lr", type=float, default=None, help="override the family recipe's learning rate")
    p.add_argument(
        "--weight-decay", type=float, default=None, help="override the recipe's AdamW weight decay"
    )
    p.add_argument(
        "--dropout", type=float, default=None, help="model dropout (families whose config has 'dropout')"
    )
    p.add_argument(
        "--selection",
        choices=SELECTION_RULES,
        default=None,
        help="model-selection rule (default: the family recipe's, 'loss' for all but lrmil's 'auc'); "
        "see the rule above. An empty validation split always means 'last'",
    )
    p.add_argument(
        "--patience",
        type=_positive_int("--patience"),
        default=None,
        help="stop after this many validated epochs without a newly selected epoch (default: the recipe's)",
    )
    p.add_argument(
        "--max-slides",
        type=_positive_int("--max-slides"),
        default=None,
        help="quick runs: at most this many slides of each split (a seeded subset)",
    )
    p.add_argument(
        "--cv",
        type=int,
        default=None,
        metavar="K",
        help="stratified K-fold cross-validation over all slides (ignores the dataset's splits and --fold)",
    )
    p.add_argument(
        "--repeats", type=_positive_int("--repeats"), default=1, help="--cv: repeats with new folds"
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="--cv: stratified fraction of each training part held out for validation (default 0: "
        "no validation split, so the last epoch is kept)",
    )
    p.add_argument(
        "--standardise",
        action="store_true",
        help="--cv: standardise features per fold with mean/std fitted on its training part only "
        "(off by default; saved as standardisation.json in each run folder)",
    )
    p.add_argument("--out", default=None, help="output folder (default runs/<arch>-<dataset>)")
    p.add_argument("--hafed", default=None, help="tsu only: the trained HAFED (name, repo or folder)")
    p.add_argument(
        "--teacher",
        default=None,
        help="lrmil only: the trained high-res teacher (name, repo or folder; e.g. ABMIL with view=hr)",
    )
    p.add_argument(
        "--clip",
        default=None,
        help="wisefuse only: open_clip model for the class text embeddings (a config name, hf-hub:ID, "
        "local-dir:PATH or a model-config .json); default: the dataset's own (synth-c16's simulated VLM)",
    )
    p.add_argument(
        "--clip-pretrained", default=None, help="wisefuse only: open_clip pretrained tag or checkpoint path"
    )
    p.add_argument(
        "--descriptions",
        default="camelyon16",
        help="wisefuse only, with --clip: class descriptions (a shipped set name or a JSON file)",
    )
    p.add_argument(
        "--config", nargs="*", default=[], metavar="KEY=VALUE", help="model config overrides (JSON values)"
    )
    add_backend_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("results", help="results table of training run folders")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    p.add_argument("--out", default=None, help="write the table to this file")
    p.add_argument("--readme", default=None, help="replace the <!-- results:zoo --> section of this README")
    p.set_defaults(func=_cmd_results)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zoo`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    apply_global_options(args)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:  # bad input, files, the Hub: one line (ZooLoadError is a ValueError)
        if args.debug:
            raise
        print(f"zoo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
