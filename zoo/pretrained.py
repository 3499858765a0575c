"""Registry of pretrained names: ``"semamil-camelyon16"`` -> Hub repo ``{org}/semamil-camelyon16``.

Every MIL family is registered on two datasets: ``camelyon16`` (trained by the user on their own
CAMELYON16 features; the data cannot be shipped) and ``synth-c16`` (the package's synthetic
CAMELYON16-like dataset). ``ppo-WSIZoom-v0`` is the SB3 where-to-zoom agent (``kind="sb3"``), named
after the huggingface_sb3 scheme ``{algo}-{env}``.

The organisation is ``$ZOO_HUB_ORG`` (default ``"wsigym"``), read at call time. Weights shipped inside
the package live in ``zoo/assets/weights/<name>/`` (``config.json`` + ``model.safetensors``) and are
used before the Hub.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zoo.registry import list_architectures

DEFAULT_ORG = "wsigym"
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "assets" / "weights"

DATASETS: dict[str, str] = {
    "camelyon16": "CAMELYON16 (399 H&E lymph-node slides, normal vs tumour), features computed by the user",
    "synth-c16": "synth-c16, the package's synthetic CAMELYON16-like dataset (normal vs tumour)",
}

#: How each dataset is given to ``zoo train``; ``{arch}``/``{name}`` are filled per entry.
_TRAIN_DATASET_ARGS: dict[str, str] = {
    "camelyon16": (
        "--dataset /path/to/CAMELYON16/features_5x --format clam --labels /path/to/labels.csv"
        " --reader hr_root=/path/to/CAMELYON16/features_20x patch_size_level0=2048 hr_patch_size_level0=512"
    ),
    "synth-c16": "--dataset synth-c16",
}

#: SASHA's f_S recipe for ``zoo train tsu`` (``config/camelyon_tsu_config.yml``: AdamW 4e-5 / 4e-4, |cos| >= 0.95,
#: one anchor per slide, 200 epochs as for SASHA-0.1); the Makefile's ``TSU_TRAIN`` uses the same (tested).
TSU_RECIPE_ARGS = (
    "--epochs 200 --lr 4e-5 --weight-decay 4e-4 --config tau=0.95 similarity=abs_cosine anchors_per_slide=1"
)
#: The HAFED the TSU is trained against, as the Makefile's ``synth-weights`` trains it.
_HAFED_ARGS_FOR_TSU: dict[str, str] = {"synth-c16": " --epochs 12 --lr 1e-3"}


def hub_org() -> str:
    """The Hub organisation of registered names: ``$ZOO_HUB_ORG`` or ``"wsigym"``."""
    return os.environ.get("ZOO_HUB_ORG", "").strip() or DEFAULT_ORG


@dataclass(frozen=True)
class PretrainedEntry:
    """One registered name.

    Attributes:
        name: the registered name, e.g. ``"semamil-camelyon16"``.
        architecture: registry family (``"semamil"``), or the SB3 algorithm (``"ppo"``) for ``kind="sb3"``.
        dataset: ``"camelyon16"``, ``"synth-c16"`` or the environment id for agents.
        repo_name: repo name under the organisation (the repo id is ``{org}/{repo_name}``).
        description: one line for ``zoo list``.
        train_command: shell command that trains and publishes it; ``{org}`` is filled by :meth:`command`.
        kind: ``"mil"`` (loadable with :func:`zoo.load`) or ``"sb3"`` (a policy zip, see :func:`zoo.hub.pull`).
    """

    name: str
    architecture: str
    dataset: str
    repo_name: str
    description: str
    train_command: str
    kind: Literal["mil", "sb3"] = "mil"

    def repo_id(self, org: str | None = None) -> str:
        return f"{org or hub_org()}/{self.repo_name}"

    def command(self, org: str | None = None) -> str:
        """The exact training + publishing command, with the organisation filled in."""
        return self.train_command.format(org=org or hub_org())

    @property
    def shipped_dir(self) -> Path:
        """Where weights shipped inside the package would be (may not exist)."""
        return SHIPPED_WEIGHTS / self.name

    def is_shipped(self) -> bool:
        """Whether the package ships this entry: ``config.json`` + ``model.safetensors`` for a MIL model,
        ``policy.json`` + ``policy.safetensors`` for a policy (no SB3 zip: it would be unpickled)."""
        files = (
            ("config.json", "model.safetensors")
            if self.kind == "mil"
            else ("policy.json", "policy.safetensors")
        )
        return all((self.shipped_dir / f).is_file() for f in files)


def _mil_entry(arch: str, dataset: str) -> PretrainedEntry:
    name = f"{arch}-{dataset}"
    data = _TRAIN_DATASET_ARGS[dataset]
    if arch == "tsu":  # the TSU regresses the high-res rows of a trained HAFED (zoo.train_tsu)
        hafed_args = _HAFED_ARGS_FOR_TSU.get(dataset, "")
        train = (
            f"zoo train hafed {data}{hafed_args} --out runs/hafed-{dataset}"
            f" && zoo train tsu {data} --hafed runs/hafed-{dataset} {TSU_RECIPE_ARGS} --out runs/{name}"
        )
    elif arch == "lrmil":  # distilled from a high-res ABMIL teacher
        train = (
            f"zoo train abmil {data} --config view=hr --out runs/abmil-hr-{dataset}"
            f" && zoo train lrmil {data} --teacher runs/abmil-hr-{dataset} --out runs/{name}"
        )
    else:
        train = f"zoo train {arch} {data} --out runs/{name}"
    command = f"{train} && zoo push runs/{name} {{org}}/{name}"
    return PretrainedEntry(
        name=name,
        architecture=arch,
        dataset=dataset,
        repo_name=name,
        description=f"{arch} trained on {DATASETS[dataset]}",
        train_command=command,
    )


def _build() -> dict[str, PretrainedEntry]:
    entries = {
        e.name: e
        for arch in list_architectures()
        for dataset in DATASETS
        for e in [_mil_entry(arch, dataset)]
    }
    agent = PretrainedEntry(
        name="ppo-WSIZoom-v0",
        architecture="ppo",
        dataset="WSIZoom-v0",
        repo_name="ppo-WSIZoom-v0",
        description="MaskablePPO where-to-zoom policy on WSIZoom-v0 (SB3 zip + card)",
        train_command=(
            "wsigym train ppo --env WSIZoom-v0 --dataset synth-c16 --out runs/ppo-WSIZoom-v0"
            " && zoo push runs/ppo-WSIZoom-v0 {org}/ppo-WSIZoom-v0"
        ),
        kind="sb3",
    )
    entries[agent.name] = agent
    return dict(sorted(entries.items()))


#: Every registered name -> its entry.
PRETRAINED: dict[str, PretrainedEntry] = _build()


def list_pretrained(kind: str | None = None) -> list[str]:
    """Registered names, sorted; ``kind="mil"`` or ``"sb3"`` to filter."""
    return [n for n, e in PRETRAINED.items() if kind is None or e.kind == kind]


def get_entry(name: str) -> PretrainedEntry | None:
    """The entry of a registered name, or None."""
    return PRETRAINED.get(name)
