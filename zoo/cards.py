"""Model cards (``README.md`` on the Hub) rendered from ``hub_cards/<family>.md`` and measured metrics.

Each family has a Jinja2 template in ``hub_cards/`` (MIL families extend ``hub_cards/_base.md``; SB3
agents use ``hub_cards/ppo.md``). The YAML front matter carries the Hub metadata (``library_name``,
``license``, ``tags``, ``datasets``, ``pipeline_tag``) and a ``model-index`` built here from the metrics
passed in, so every number in a card is a measured value.

Hub metadata rules (:func:`validate_hub_metadata`, offline): ``datasets`` lists only Hub dataset ids
(:data:`HUB_DATASETS`; ``synth-c16`` is generated locally and CAMELYON16 is not a Hub dataset, so
their cards list none and name the data in the body and the ``model-index``); MIL models over patch
feature bags have no ``pipeline_tag`` (none of the Hub's tasks takes a bag of feature vectors; in
particular they are not ``image-classification`` models), agents have ``reinforcement-learning``;
``model-index`` parses with ``huggingface_hub``. Without metrics the card says
"not evaluated" and has no ``model-index``.

Metrics are a flat ``{name: value}`` dict of test-split values (keys of
:func:`zoo.metrics.classification_metrics`: ``accuracy``, ``auc``, ``f1``, ``f1_macro``, ``ece``,
``nll``; other numeric keys are listed as measurements), or ``{split: {name: value}}`` with the
``model-index`` taken from ``"test"``. Non-finite values (an AUC undefined because one class is absent)
are shown as "n/a" and left out of the ``model-index``.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import yaml

CARDS_DIR = Path(str(importlib.resources.files("hub_cards")))
LIBRARY_NAME = "wsigym-zoo"
LICENSE = "apache-2.0"
BASE_TAGS = ("pathology", "multiple-instance-learning", "whole-slide-image")

#: metric key -> (card label, model-index ``type``, model-index ``args`` or None)
METRIC_SPECS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "accuracy": ("Accuracy", "accuracy", None),
    "auc": ("AUC (ROC; one-vs-rest macro for >2 classes)", "roc_auc", None),
    "f1": ("F1 (binary, class 1)", "f1", {"average": "binary", "pos_label": 1}),
    "f1_macro": ("Macro-F1", "f1", {"average": "macro"}),
    "ece": ("ECE (10 bins, top-1)", "ece", None),
    "nll": ("NLL", "nll", None),
    "mse": ("MSE", "mse", None),
    "mean_reward": ("Mean episode reward", "mean_reward", None),
}

#: Feature widths of common pathology encoders (``mil-models.md`` §12), for the "input features" line.
ENCODER_WIDTHS: dict[int, str] = {
    384: "ViT-S/16 (DINO/SSL, e.g. Lunit 'medical_ssl')",
    512: "PLIP, CONCH v1 (projected) or ResNet-18",
    768: "CONCH v1.5 or the CONCH v1 trunk CLS",
    1024: "ResNet-50 (truncated) or UNI",
    1536: "UNI2 or Prov-GigaPath",
    2560: "Virchow",
}

DATASET_TITLES: dict[str, str] = {"camelyon16": "CAMELYON16", "synth-c16": "synth-c16 (synthetic)"}
#: Dataset name -> its Hub dataset id, for data that is on the Hub (none of this project's yet).
HUB_DATASETS: dict[str, str] = {}
#: The ``pipeline_tag`` of each card kind (None: no tag).
PIPELINE_TAGS: dict[str, str | None] = {"mil": None, "agent": "reinforcement-learning"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class CardError(ValueError):
    """A card template is missing or renders to invalid Hub metadata."""


def template_families() -> list[str]:
    """Families with a template in ``hub_cards/`` (files starting with ``_`` are shared parts)."""
    if not CARDS_DIR.is_dir():
        return []
    return sorted(p.stem for p in CARDS_DIR.glob("*.md") if not p.name.startswith("_"))


def _environment() -> jinja2.Environment:
    if not CARDS_DIR.is_dir():
        raise CardError(f"card templates not found: {CARDS_DIR} (hub_cards/ sits next to the zoo package)")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(CARDS_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["tojson"] = lambda value: json.dumps(value)
    return env


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers (so YAML holds plain floats)."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def split_metrics(metrics: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{split: {name: value}}`` from a flat (test) or nested metrics dict."""
    if not metrics:
        return {}
    if all(isinstance(v, Mapping) for v in metrics.values()):
        return {str(s): {k: _plain(v) for k, v in m.items()} for s, m in metrics.items()}
    return {"test": {k: _plain(v) for k, v in metrics.items() if not isinstance(v, Mapping)}}


def headline_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """The values that go into the ``model-index``: known keys with finite values, from ``test``."""
    splits = split_metrics(metrics)
    chosen = splits.get("test") or (next(iter(splits.values())) if splits else {})
    return {k: float(chosen[k]) for k in METRIC_SPECS if k in chosen and _finite(chosen[k])}


def model_index(
    model_name: str, metrics: Mapping[str, Any] | None, dataset: str, *, task_type: str, task_name: str
) -> list[dict[str, Any]] | None:
    """The Hub ``model-index`` for ``metrics`` (None when there is nothing measured)."""
    values = headline_metrics(metrics)
    if not values:
        return None
    entries = []
    for key, value in values.items():
        label, mtype, args = METRIC_SPECS[key]
        entry: dict[str, Any] = {"type": mtype, "value": value, "name": label}
        if args:
            entry["args"] = dict(args)
        entries.append(entry)
    split = "test" if "test" in split_metrics(metrics) else next(iter(split_metrics(metrics)))
    return [
        {
            "name": model_name,
            "results": [
                {
                    "task": {"type": task_type, "name": task_name},
                    "dataset": {
                        "type": dataset,
                        "name": DATASET_TITLES.get(dataset, dataset),
                        "split": split,
                    },
                    "metrics": entries,
                }
            ],
        }
    ]


def _format(value: Any, exact: bool = False) -> str:
    """Table text of a value: metrics with 4 decimals, config/recipe values (``exact``) as written."""
    value = _plain(value)
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 and not exact else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if exact:
            return repr(value)
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.4g}"
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return str(value)


def _rows(
    mapping: Mapping[str, Any] | None, skip: tuple[str, ...] = (), exact: bool = True
) -> list[tuple[str, str]]:
    return [
        (str(k), _format(v, exact=exact).replace("|", "\\|"))
        for k, v in (mapping or {}).items()
        if k not in skip
    ]


def _metric_rows(metrics: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One row per metric: label + one formatted value per split."""
    splits = split_metrics(metrics)
    keys: list[str] = []
    for m in splits.values():
        keys += [k for k in m if k not in keys and (_finite(m[k]) or m[k] is None or isinstance(m[k], float))]
    ordered = [k for k in METRIC_SPECS if k in keys] + [k for k in keys if k not in METRIC_SPECS]
    return [
        {
            "label": METRIC_SPECS[k][0] if k in METRIC_SPECS else k,
            "values": [_format(splits[s].get(k)) if k in splits[s] else "" for s in splits],
        }
        for k in ordered
    ]


def render_card(
    family: str,
    *,
    model_name: str,
    load_id: str,
    config: Mapping[str, Any] | None = None,
    num_parameters: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    dataset_name: str | None = None,
    training: Mapping[str, Any] | None = None,
    train_command: str | None = None,
    **extra: Any,
) -> str:
    """Render ``hub_cards/<family>.md`` into a ``README.md`` and check its metadata.

    Args:
        family: template name (registry family, or ``"ppo"``).
        model_name: the model's name in the card and ``model-index`` (e.g. ``"abmil-camelyon16"``).
        load_id: what to pass to :func:`zoo.load` in the snippet (repo id, registered name or folder).
        config: the model's ``config.json`` dict.
        metrics: measured metrics (see the module docstring); None -> "not evaluated".
        dataset_name: dataset the model was trained/evaluated on.
        training: training facts (``recipe``, ``fold``, ``seed``, ``epochs_run``, ``encoder``,
            ``magnification``, ...), shown as given.
        train_command: the command that reproduces the weights.
        extra: further template variables (the SB3 template reads ``env_id``, ``algo``, ``std_reward``...).

    Raises:
        CardError: unknown family template, or metadata that does not parse or does not match ``metrics``.
    """
    env = _environment()
    try:
        template = env.get_template(f"{family}.md")
    except jinja2.TemplateNotFound:
        raise CardError(
            f"no card template hub_cards/{family}.md (templates: {template_families()})"
        ) from None
    config = dict(config or {})
    training = dict(training or {})
    dataset = dataset_name or str(training.get("dataset") or "unknown")
    is_agent = family == "ppo"
    index = model_index(
        model_name,
        metrics,
        dataset if not is_agent else str(extra.get("env_id", dataset)),
        task_type="reinforcement-learning" if is_agent else "image-classification",
        task_name="Where-to-zoom policy"
        if is_agent
        else "Slide-level classification (multiple-instance learning)",
    )
    if is_agent and index:
        _agent_reward_string(index, metrics, extra)
    in_dim = config.get("in_dim")
    recipe = training.get("recipe") if isinstance(training.get("recipe"), Mapping) else None
    context = {
        "family": family,
        "model_name": model_name,
        "load_id": load_id,
        "library_name": LIBRARY_NAME,
        "license": LICENSE,
        "tags": [*BASE_TAGS, family],
        "datasets": [HUB_DATASETS[dataset]] if dataset in HUB_DATASETS else [],
        "dataset_name": dataset,
        "dataset_title": DATASET_TITLES.get(dataset, dataset),
        "model_index_yaml": yaml.safe_dump({"model-index": index}, sort_keys=False) if index else "",
        "evaluated": bool(index) or bool(split_metrics(metrics)),
        "metric_splits": list(split_metrics(metrics)),
        "metric_rows": _metric_rows(metrics),
        "config_rows": _rows(config, skip=("architecture",)),
        "num_parameters": _format(num_parameters) if num_parameters is not None else None,
        "in_dim": in_dim,
        "encoder": training.get("encoder") or None,
        "encoder_guess": ENCODER_WIDTHS.get(in_dim) if isinstance(in_dim, int) else None,
        "magnification": training.get("magnification") or None,
        "class_names": training.get("class_names") or None,
        "training_rows": _rows(
            training, skip=("recipe", "class_names", "encoder", "magnification", "command"), exact=False
        ),
        "recipe_rows": _rows(recipe),
        "train_command": train_command or training.get("command") or None,
        **extra,
    }
    text = template.render(**context)
    check_card(text, metrics)
    validate_hub_metadata(text, kind="agent" if is_agent else "mil")
    return text


def _agent_reward_string(index: list[dict[str, Any]], metrics: Mapping[str, Any] | None, extra: dict) -> None:
    """SB3 convention: ``mean_reward`` is reported as the string ``"mean +/- std"``."""
    values = split_metrics(metrics).get("test", {})
    std = values.get("std_reward", extra.get("std_reward"))
    for entry in index[0]["results"][0]["metrics"]:
        if entry["type"] == "mean_reward" and _finite(std):
            entry["value"] = f"{entry['value']:.2f} +/- {float(std):.2f}"


_FRONT = re.compile(r"^---\s*\n(.*?)\n---\s*(\n|$)", re.DOTALL)


def card_metadata(text: str) -> dict[str, Any]:
    """The YAML front matter of a card as a dict.

    Raises:
        CardError: no front matter, or it is not valid YAML / not a mapping.
    """
    match = _FRONT.match(text)
    if not match:
        raise CardError("card has no YAML front matter (--- ... ---)")
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as e:
        raise CardError(f"card front matter is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise CardError("card front matter must be a YAML mapping")
    return data


def card_metrics(text: str) -> dict[str, Any]:
    """``{metric key: value}`` from a card's ``model-index`` (keys as in :data:`METRIC_SPECS`)."""
    meta = card_metadata(text)
    by_label = {label: key for key, (label, _, _) in METRIC_SPECS.items()}
    out: dict[str, Any] = {}
    for model in meta.get("model-index") or []:
        for result in model.get("results") or []:
            for metric in result.get("metrics") or []:
                out[by_label.get(metric.get("name"), metric.get("name") or metric.get("type"))] = metric.get(
                    "value"
                )
    return out


def validate_hub_metadata(text: str, kind: str | None = None) -> dict[str, Any]:
    """Check a card's metadata against the Hub's rules, offline (module docstring); returns it.

    ``huggingface_hub.ModelCard`` parses the card and its ``model-index`` (as ``metadata_update``
    and the Hub do); ``datasets`` must be known Hub dataset ids; ``pipeline_tag`` must be the
    one of ``kind`` (``"mil"`` or ``"agent"``; any Hub-shaped tag when None); ``license``,
    ``library_name`` and ``tags`` must be present.

    Raises:
        CardError: naming the key that breaks a rule.
    """
    from huggingface_hub import ModelCard

    meta = card_metadata(text)
    try:
        card = ModelCard(text, ignore_metadata_errors=False)
    except Exception as e:  # huggingface_hub raises ValueError / its own errors for a bad model-index
        raise CardError(f"huggingface_hub cannot parse the card metadata: {e}") from None
    if meta.get("model-index") and not card.data.eval_results:
        raise CardError("model-index has no result huggingface_hub can read")
    for key in ("library_name", "license", "tags"):
        if not meta.get(key):
            raise CardError(f"card metadata has no {key!r}")
    datasets = meta.get("datasets") or []
    if not isinstance(datasets, list):
        raise CardError(f"datasets must be a list of Hub dataset ids, got {datasets!r}")
    unknown = [d for d in datasets if d not in HUB_DATASETS.values() or not _HUB_ID.match(str(d))]
    if unknown:
        raise CardError(
            f"datasets {unknown} are not Hub dataset ids (known: {sorted(HUB_DATASETS.values())}); "
            "name local data in the card body and the model-index instead"
        )
    tag = meta.get("pipeline_tag")
    if kind is not None:
        if kind not in PIPELINE_TAGS:
            raise CardError(f"kind must be one of {sorted(PIPELINE_TAGS)}, got {kind!r}")
        if tag != PIPELINE_TAGS[kind]:
            raise CardError(f"pipeline_tag of a {kind} card must be {PIPELINE_TAGS[kind]!r}, got {tag!r}")
    elif tag is not None and not re.fullmatch(r"[a-z0-9-]+", str(tag)):
        raise CardError(f"pipeline_tag {tag!r} is not a Hub task id")
    return meta


def check_card(text: str, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check that a card's metadata parses, has the required keys, and its ``model-index`` values are
    exactly the finite headline ``metrics``; returns the metadata.

    Raises:
        CardError: naming what is wrong.
    """
    meta = card_metadata(text)
    for key in ("library_name", "license", "tags"):
        if not meta.get(key):
            raise CardError(f"card metadata has no {key!r}")
    expected = headline_metrics(metrics)
    found = {k: v for k, v in card_metrics(text).items() if k in METRIC_SPECS}
    if "mean_reward" in found and isinstance(found["mean_reward"], str):  # SB3 "m +/- s" string
        found["mean_reward"] = float(found["mean_reward"].split("+/-")[0])
        expected = {k: (round(v, 2) if k == "mean_reward" else v) for k, v in expected.items()}
    if found != expected:
        raise CardError(f"card model-index {found} does not match the measured metrics {expected}")
    return meta
