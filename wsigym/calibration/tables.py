"""Plain-text tables of a calibration report (``calibration.json``; only reads the dict, imports no model).

:func:`format_report` is what ``wsigym synth calibrate`` and ``wsigym synth describe`` print.
"""

from __future__ import annotations

from typing import Any

KINDS = ("other", "tumour", "mimic")


def _nan(value: float | None) -> float:
    """A report value; JSON stores NaN as null (:mod:`wsigym.io`)."""
    return float("nan") if value is None else float(value)


def format_views(report: dict[str, Any]) -> str:
    """The ABMIL part: test accuracy and AUC of each model, the oracle zooms' tumour coverage."""
    lines = [
        f"ABMIL on fold {report['fold']}, {report['epochs']} epochs, zoom {report['zoom_fraction']:.0%}",
        f"{'model':32s} {'test acc':>9s} {'test AUC':>9s}",
    ]
    for name, m in report["models"].items():
        t = m["test"]
        lines.append(f"{name:32s} {t['accuracy']:9.3f} {t['auc']:9.3f}")
    lines.append(
        f"oracle zooms cover {report['oracle_zoom_tumour_hit']:.1%} of a positive slide's tumour patches"
    )
    return "\n".join(lines)


def format_agreement(result: dict[str, Any]) -> str:
    """Plain-text table of :func:`update_agreement`."""
    lines = [
        f"one TSU zoom from a fresh state ({result['slides']} slides)",
        f"{'anchor kind':12s} {'anchors':>8s} {'rows/zoom':>10s} {'same kind':>10s} {'base rate':>10s}",
    ]
    for k in KINDS:
        lines.append(
            f"{k:12s} {result['anchors'][k]:8d} {_nan(result['rows_per_zoom'][k]):10.1f} "
            f"{_nan(result['same_kind_rate'][k]):10.1%} {_nan(result['base_rate'][k]):10.1%}"
        )
    lines.append(f"{'updated row':12s} {'rows':>8s} {'f_S MSE':>10s} {'copy Z':>10s} {'copy V(a)':>10s}")
    for k in KINDS:
        e = result["error"][k]
        errors = " ".join(f"{_nan(e[key]):10.4f}" for key in ("tsu", "copy_z", "copy_v_a"))
        lines.append(f"{k:12s} {e['rows']:8d} {errors}")
    return "\n".join(lines)


def format_fixed_agents(table: list[dict[str, Any]]) -> str:
    """Plain-text table of :func:`fixed_agent_table`: acc / AUC / ECE per agent, budget and rule."""
    rules = list(dict.fromkeys(r["rule"] for r in table))
    lines = [f"{'agent':16s} {'budget':>6s} " + " ".join(f"{r + ' acc/AUC/ECE':>26s}" for r in rules)]
    cells: dict[tuple[str, float], dict[str, str]] = {}
    for r in table:
        m, s = r["mean"], r["std"]
        text = f"{m['accuracy']:.3f}/{m['auc']:.3f}±{s['auc']:.3f}/{m['ece']:.3f}"
        cells.setdefault((r["agent"], r["budget"]), {})[r["rule"]] = text
    for (agent, budget), by_rule in cells.items():
        lines.append(f"{agent:16s} {budget:6.0%} " + " ".join(f"{by_rule.get(r, '-'):>26s}" for r in rules))
    split = [r for r in table if "positives" in r]
    if split:
        lines.append(
            "positive slides: share whose zooms reached tumour; HAFED P(tumour) when they did / did not"
        )
        lines.append(
            f"{'agent':16s} {'budget':>6s} {'reached':>8s} "
            + " ".join(f"{r + ' hit/miss':>18s}" for r in rules)
        )
        groups: dict[tuple[str, float], dict[str, dict[str, float]]] = {}
        for r in split:
            groups.setdefault((r["agent"], r["budget"]), {})[r["rule"]] = r["positives"]
        for (agent, budget), by_rule in groups.items():
            reached = _nan(next(iter(by_rule.values()))["hit_rate"])
            cells_p = " ".join(
                f"{_nan(by_rule[r]['p_hit']):.3f}/{_nan(by_rule[r]['p_miss']):.3f}".rjust(18)
                if r in by_rule
                else "-".rjust(18)
                for r in rules
            )
            lines.append(f"{agent:16s} {budget:6.0%} {reached:8.1%} {cells_p}")
    return "\n".join(lines)


def format_references(references: dict[str, dict[str, float]]) -> str:
    """HAFED with no zoom and with every patch zoomed."""
    return "\n".join(
        f"HAFED {name:8s} acc {m['accuracy']:.3f}  AUC {m['auc']:.3f}  ECE {m['ece']:.3f}"
        for name, m in references.items()
    )


def format_report(report: dict[str, Any]) -> str:
    """Every part present in ``report`` (see :mod:`wsigym.calibration.calibrate`)."""
    lines = [
        f"calibration of {report['dataset']} (seed {report['seed']}, config {report['config_digest']}, "
        f"coherence {report.get('coherence', 'n/a')})"
    ]
    if "models" in report:
        lines.append(format_views(report))
    su = report.get("state_update")
    if su:
        rule = "|cos|" if su["absolute_cosine"] else "cos"
        lines.append(
            f"state update on the {su['split']} split ({su['slides']} slides; {rule} >= {su['tau']}; "
            f"HAFED {su['hafed']}, f_S {su['tsu']})"
        )
        lines += [format_agreement(su["agreement"]), format_references(su["references"])]
        lines.append(format_fixed_agents(su["fixed_agents"]))
    return "\n".join(lines)
