"""The environment options as command-line flags, shared by ``wsigym env`` and ``wsigym train ppo|evaluate``.

:func:`add_env_arguments` adds one flag per :class:`~wsigym.envs.options.ZoomOptions` field
(``--budget``, ``--tau``, ``--reward``, ``--device``, ...; its default shown in the help, stated only
in ``ZoomOptions``) and the ``--live-*`` flags of live slides (``--live-slides``, ``--live-labels``,
``--live-encoder``, ...: :class:`~wsigym.envs.live_source.LiveSlides`, in place of ``--dataset``); :func:`env_kwargs_from_args` turns the parsed flags that were given into keyword
arguments for the environment, :func:`options_from_args` into a ``ZoomOptions``. A flag left out is
absent from the keyword arguments, so a recipe's or the registered id's value stays in force.

Not flags: ``update`` (the env id picks the rule: ``--env WSIZoomGlobal-v0``) and ``progress``
(each command's ``--no-progress``). ``--device`` is the environment's device: where the state, HAFED and
``f_S`` run (a policy's device is a separate flag of the commands that train one).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wsigym.envs.options import AGENT_VIEWS, BUDGET_ENDS, ILLEGAL_ACTIONS, ZoomOptions, zoom_options
from wsigym.envs.reward import REWARDS

#: The dataset splits a command may name.
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Flag:
    """One ``ZoomOptions`` field as a flag: its type or choices, and what it means."""

    name: str
    help: str
    type: Any = str
    choices: tuple[str, ...] | None = None
    boolean: bool = False
    #: ``"live-"`` for a field of :class:`~wsigym.envs.live_source.LiveSlides`.
    prefix: str = ""

    @property
    def flag(self) -> str:
        """``--[prefix]name-with-dashes``."""
        return "--" + self.prefix + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        """The attribute of the parsed namespace (prefixed: a command's own ``--split`` stays its own)."""
        return "option_" + self.prefix.replace("-", "_") + self.name


FLAGS: tuple[Flag, ...] = (
    Flag("dataset", "registered dataset name or dataset folder"),
    Flag("split", "split of the slides", choices=SPLITS),
    Flag("fold", "fold of the split", type=int),
    Flag("budget", "zoom budget as a fraction of a slide's patches, in (0, 1]", type=float),
    Flag("tau", "TSU cosine threshold in [-1, 1] (default: the TSU config's)", type=float),
    Flag("reward", "reward rule", choices=REWARDS),
    Flag("max_patches", "padded patch count P (default: the largest slide of the dataset)", type=int),
    Flag("hafed", "HAFED: pretrained name, Hub repo or folder"),
    Flag("tsu", "TSU f_S: pretrained name, Hub repo or folder"),
    Flag("mask_updated", "also mask TSU-updated patches", boolean=True),
    Flag("absolute_cosine", "TSU similarity |cos| >= tau (default: the TSU config's)", boolean=True),
    Flag("budget_end", "how the last budget step ends an episode", choices=BUDGET_ENDS),
    Flag("illegal_action", "what an illegal action does", choices=ILLEGAL_ACTIONS),
    Flag(
        "agent_view",
        "what the agent sees: the state S_t, or Z at every step (SASHA's global env)",
        choices=AGENT_VIEWS,
    ),
    Flag("device", "torch device of the environment: the state, HAFED and f_S (e.g. cuda)"),
)

#: Live slides (:class:`~wsigym.envs.live_source.LiveSlides`) as ``--live-*`` flags, instead of ``--dataset``;
#: a flag left out takes the ``LiveSlides`` default.
LIVE_FLAGS: tuple[Flag, ...] = tuple(
    Flag(name, help, type=kind, boolean=kind is bool, prefix="live-")
    for name, help, kind in (
        ("slides", "whole-slide images read live, a folder or a slide file (instead of --dataset)", str),
        ("labels", "live slides: their slide_id,label CSV", str),
        ("encoder", "live slides: the patch encoder spec (timm:NAME or open_clip:NAME)", str),
        ("mpp", "live slides: microns per level-0 px, for slides that lack it", float),
        ("lr_mag", "live slides: magnification of the state", float),
        ("hr_mag", "live slides: magnification of a zoom", float),
        ("patch_size", "live slides: px per patch", int),
        ("min_tissue", "live slides: tissue fraction to keep a patch", float),
        ("cache_dir", "live slides: TRIDENT job folder caching the patch plans and Z", str),
        ("batch_size", "live slides: images per encoder call", int),
        ("remember_zooms", "live slides: keep V(a) in memory across episodes", bool),
        ("memory_slides", "live slides: slides whose Z stay in memory", int),
    )
)


def add_env_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, skip: Iterable[str] = ()
) -> None:
    """Add a flag per environment option to ``parser`` (all but the ``skip`` field names).

    Every flag defaults to ``None`` (not given); the help shows the :class:`ZoomOptions` default.
    ``parser`` may be an argument group.

    Raises:
        ValueError: ``skip`` names something that is not a flag here.
    """
    skip = set(skip)
    unknown = sorted(skip - {f.name for f in FLAGS})
    if unknown:
        raise ValueError(
            f"skip names {unknown}, which are not env flags; the flags are {[f.name for f in FLAGS]}"
        )
    defaults = ZoomOptions()
    for f in FLAGS:
        if f.name in skip:
            continue
        default = defaults.dataset_or_default if f.name == "dataset" else getattr(defaults, f.name)
        text = f.help if default is None else f"{f.help} (default {default})"
        _add(parser, f, text)
    if "dataset" not in skip:
        for f in LIVE_FLAGS:
            _add(parser, f, f.help)


def _add(parser: argparse.ArgumentParser | argparse._ArgumentGroup, f: Flag, text: str) -> None:
    if f.boolean:
        parser.add_argument(
            f.flag, dest=f.dest, action=argparse.BooleanOptionalAction, default=None, help=text
        )
    else:
        parser.add_argument(f.flag, dest=f.dest, type=f.type, choices=f.choices, default=None, help=text)


def env_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The environment flags given on the command line, as the environment's keyword arguments.

    The ``--live-*`` flags come as the live-slide keywords (``slides=``, ``labels=``, ``encoder=``...),
    which the environment builds into ``dataset=LiveSlides(...)`` (:func:`~wsigym.envs.options.zoom_options`);
    every value is a plain string or number, so the keyword arguments can be recorded as JSON.
    """
    return {
        f.name: getattr(args, f.dest)
        for f in (*FLAGS, *LIVE_FLAGS)
        if getattr(args, f.dest, None) is not None
    }


def options_from_args(args: argparse.Namespace) -> ZoomOptions:
    """:class:`ZoomOptions` of the parsed flags (the defaults where a flag was left out).

    Raises:
        ValueError: an invalid value (see :class:`ZoomOptions`), ``--live-*`` flags without
            ``--live-slides`` or with ``--dataset``.
    """
    return zoom_options(None, env_kwargs_from_args(args))
