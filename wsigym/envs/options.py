"""``ZoomOptions``: the settings of a zoom environment, with their defaults stated once.

Both environments (:class:`~wsigym.envs.zoom.WSIZoomEnv`, :class:`~wsigym.envs.vector.WSIZoomVectorEnv`),
the engine (:func:`~wsigym.envs.zoom_batch.resolve_arguments`) and both command lines
(:mod:`wsigym.envs.option_flags`) take their settings from this one object. An environment accepts
``options=ZoomOptions(...)``, keyword arguments (``gym.make("WSIZoom-v0", budget=0.1)``), or both:
keyword arguments override the fields of ``options`` (so a registered id's ``update=`` wins).

The slides come through ``dataset``: a registered name, a folder, a ``SlideDataset``, or
:class:`~wsigym.envs.live_source.LiveSlides` for whole-slide images read live. The live-slide keyword
arguments of earlier versions (``slides=``, ``labels=``, ``encoder=``, ...) still work: they build the
same ``LiveSlides`` (:func:`zoom_options`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from wsigym.envs.reward import RewardRule, reward_rule
from wsigym.envs.state_update import UPDATE_RULES

if TYPE_CHECKING:
    from wsigym.data.dataset import SlideDataset
    from wsigym.envs.live_source import LiveSlides

#: The dataset of ``dataset=None``.
DEFAULT_DATASET = "synth-c16"
BUDGET_ENDS = ("terminate", "truncate")
#: What an illegal action of the action space does (see ``ZoomBatch.act``); the first is the default.
ILLEGAL_ACTIONS = ("remap", "noop", "raise")
#: What the agent observes of the state (the environment's docstring, Observation Space); the first is the default.
AGENT_VIEWS = ("state", "lowres")


@dataclass(frozen=True)
class ZoomOptions:
    """The settings of a zoom environment (the environment's docstring says what each does).

    Attributes:
        dataset: a registered name, a folder the data layer reads, a ``SlideDataset`` or
            :class:`~wsigym.envs.live_source.LiveSlides` (``None``: :data:`DEFAULT_DATASET`).
        split, fold: which slides (not used by live slides).
        budget: zoom budget as a fraction of the ``N`` patches, in ``(0, 1]``.
        tau: cosine threshold of the TSU in ``[-1, 1]`` (``None``: the TSU config's ``tau``).
        update: one of :data:`~wsigym.envs.state_update.UPDATE_RULES`.
        reward: a name of :data:`~wsigym.envs.reward.REWARDS` or a ``RewardRule``.
        max_patches: padded patch count ``P`` (``None``: the largest slide of the dataset).
        hafed, tsu: pretrained names, Hub repos, folders or model instances.
        mask_updated: also mask TSU-updated patches.
        absolute_cosine: ``|cos| >= tau`` (``None``: the TSU config's ``similarity``).
        budget_end: ``"terminate"`` or ``"truncate"`` after the last budget step.
        illegal_action: one of :data:`ILLEGAL_ACTIONS`.
        agent_view: one of :data:`AGENT_VIEWS`: the state ``S_t`` the classifier reads, or ``Z`` at every step.
        device: torch device of the state and the models (HAFED, ``f_S``).
        progress: progress bars while the oracle ``V`` is computed or read.

    Raises:
        ValueError: naming the field and what was expected (checked at construction).
    """

    dataset: str | Path | SlideDataset | LiveSlides | None = None
    split: str = "train"
    fold: int = 0
    budget: float = 0.2
    tau: float | None = None
    update: str = "tsu"
    reward: str | RewardRule = "ce"
    max_patches: int | None = None
    hafed: Any = "hafed-synth-c16"
    tsu: Any = "tsu-synth-c16"
    mask_updated: bool = False
    absolute_cosine: bool | None = None
    budget_end: str = "terminate"
    illegal_action: str = ILLEGAL_ACTIONS[0]
    agent_view: str = AGENT_VIEWS[0]
    device: str | torch.device = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.update not in UPDATE_RULES:
            raise ValueError(f"update must be one of {tuple(UPDATE_RULES)}, got {self.update!r}")
        reward_rule(self.reward)  # raises for an unknown name
        if self.budget_end not in BUDGET_ENDS:
            raise ValueError(f"budget_end must be one of {BUDGET_ENDS}, got {self.budget_end!r}")
        if self.illegal_action not in ILLEGAL_ACTIONS:
            raise ValueError(f"illegal_action must be one of {ILLEGAL_ACTIONS}, got {self.illegal_action!r}")
        if self.agent_view not in AGENT_VIEWS:
            raise ValueError(f"agent_view must be one of {AGENT_VIEWS}, got {self.agent_view!r}")
        budget = self.budget
        if isinstance(budget, bool) or not (
            isinstance(budget, (int, float, np.integer, np.floating)) and 0.0 < float(budget) <= 1.0
        ):
            raise ValueError(f"budget must be a fraction of the patches in (0, 1], got {budget!r}")
        if self.max_patches is not None and (
            isinstance(self.max_patches, bool) or not isinstance(self.max_patches, (int, np.integer))
        ):
            raise ValueError(f"max_patches must be an integer, got {self.max_patches!r}")
        tau = self.tau
        if tau is not None and (
            isinstance(tau, bool)
            or not isinstance(tau, (int, float, np.integer, np.floating))
            or not -1.0 <= float(tau) <= 1.0  # False for NaN
        ):
            raise ValueError(f"tau is a cosine threshold and must be a finite number in [-1, 1], got {tau!r}")

    @property
    def live(self) -> bool:
        """Whether ``dataset`` is live slides (:class:`~wsigym.envs.live_source.LiveSlides`)."""
        from wsigym.envs.live_source import LiveSlides

        return isinstance(self.dataset, LiveSlides)

    @property
    def dataset_or_default(self) -> str | Path | SlideDataset | LiveSlides:
        """``dataset``, with ``None`` as :data:`DEFAULT_DATASET`."""
        return DEFAULT_DATASET if self.dataset is None else self.dataset


#: The field names of :class:`ZoomOptions`, in order.
OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(ZoomOptions))


def live_slide_names() -> tuple[str, ...]:
    """The keyword arguments that describe live slides (the fields of ``LiveSlides``)."""
    from wsigym.envs.live_source import LiveSlides

    return tuple(f.name for f in fields(LiveSlides))


def zoom_options(
    options: ZoomOptions | None, kwargs: Mapping[str, Any], *, also: Iterable[str] = ()
) -> ZoomOptions:
    """``options`` (default: ``ZoomOptions()``) with ``kwargs`` over its fields.

    Keyword arguments named like the fields of :class:`~wsigym.envs.live_source.LiveSlides`
    (``slides=``, ``labels=``, ``encoder=``, ...) build ``dataset=LiveSlides(...)``: the live-slide
    keyword path of earlier versions. ``also`` names the caller's own arguments, listed in the
    error for an unknown name.

    Raises:
        TypeError: ``options`` is not a ``ZoomOptions``, or an unknown keyword argument (named, with
            the valid names).
        ValueError: live-slide arguments without ``slides=``, or both ``slides=`` and ``dataset=``;
            an invalid value (see :class:`ZoomOptions`).
    """
    if options is None:
        options = ZoomOptions()
    elif not isinstance(options, ZoomOptions):
        raise TypeError(f"options must be a ZoomOptions, got {type(options).__name__}")
    live_names = live_slide_names()
    unknown = sorted(set(kwargs) - set(OPTION_NAMES) - set(live_names))
    if unknown:
        valid = sorted({*OPTION_NAMES, *live_names, *also, "options"})
        raise TypeError(f"unknown environment argument(s) {unknown}; the valid names are {valid}")
    given = {k: v for k, v in kwargs.items() if k in OPTION_NAMES}
    live = {k: v for k, v in kwargs.items() if k in live_names}
    if live.get("slides") is None and any(v is not None for v in live.values()):
        raise ValueError(f"{sorted(live)} describe live slides and need slides= (a folder, file or list)")
    if live.get("slides") is not None:
        if given.get("dataset", options.dataset) is not None:
            raise ValueError("give either dataset= (cached features) or slides= (live slides), not both")
        from wsigym.envs.live_source import LiveSlides

        given["dataset"] = LiveSlides(**live)
    return replace(options, **given) if given else options
