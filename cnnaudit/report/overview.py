"""What a reviewer reads first: one row per test (its key gate, the margin to its threshold, the change
against the baseline), the run's multiple-comparison correction, and the Markdown summary CI systems show.

Plain functions on the report document (:func:`cnnaudit.report.document`); the HTML report's summary
table and the Markdown summary (``--cnnaudit-summary``) are both built from :func:`rows`.
"""

from __future__ import annotations

from pathlib import Path

from cnnaudit.gates import higher_is_better
from cnnaudit.safe_text import digest

CORRECTIONS = {"holm": "Holm", "bh": "Benjamini-Hochberg"}
"""``--cnnaudit-correction`` values: Holm's step-down (family-wise error) and Benjamini-Hochberg (false discovery rate)."""
_FAILING = ("failed", "error", "xpassed")


def key_gate(evidence: dict | None) -> dict | None:
    """The gate a test's row shows: its first failed gate, else its first gate (with ``key``, ``kind``)."""
    gates = (evidence or {}).get("gates") or []
    return next((g for g in gates if not g["holds"]), gates[0] if gates else None)


def change(evidence: dict | None, gate: dict | None) -> dict | None:
    """The change against the baseline of what ``gate`` gated: ``{value, good}``, where ``good`` says whether the
    change goes the way the test's gates on it want (``None``: they say no direction). For a Scores, its mean
    minus the baseline's; for a comparison whose b side is a stored baseline, its mean difference."""
    if not evidence or gate is None:
        return None
    if gate["kind"] == "scores":
        summary = next((s for s in evidence["scores"] if s["key"] == gate["key"]), None)
        value = None if summary is None else summary.get("delta_mean")
    elif gate["kind"] == "comparison":  # a change against the baseline when its b side was read from one
        value = next((d["mean"] for d in evidence["comparisons"] if d["key"] == gate["key"] and d["b"].get("baseline")), None)
    else:
        value = None
    if value is None:
        return None
    # statistics that move with the values (not a spread, a p-value or an absolute value) say which way is good
    ops = [g["op"] for g in evidence["gates"] if g["key"] == gate["key"] and not g["stat"].startswith(("abs(", "p_value", "std("))]
    up = higher_is_better(ops)
    return {"value": value, "good": None if up is None or value == 0 else (value > 0) == up}


def rows(tests: list[dict]) -> list[dict]:
    """One row per test, in the report's order: ``nodeid``, ``outcome``, ``anchor``, ``gate`` (see
    :func:`key_gate`), ``gates`` (how many, ``failed`` of them), ``change`` (see :func:`change`)."""
    out = []
    for entry in tests:
        evidence = entry["evidence"]
        gate = key_gate(evidence)
        gates = (evidence or {}).get("gates") or []
        out.append({
            "nodeid": entry["nodeid"],
            "outcome": entry["outcome"],
            "message": entry["message"],
            "anchor": f"t-{digest(entry['nodeid'])}",
            "gate": gate,
            "gates": len(gates),
            "failed": sum(not g["holds"] for g in gates),
            "change": change(evidence, gate),
        })
    return out


def correct(tests: list[dict], method: str | None) -> dict | None:
    """Adjust the p-values of every comparison of the run for multiple testing (``method``: a key of
    :data:`CORRECTIONS`); each comparison gets ``p_adjusted``. Returns ``{method, name, m}`` (``m``: the
    number of p-values corrected together), or ``None`` without a method."""
    if method is None:
        return None
    comparisons = [d for e in tests for d in (e["evidence"] or {}).get("comparisons", []) if d.get("p_value") is not None]
    adjusted = adjust([d["p_value"] for d in comparisons], method)
    for d, p in zip(comparisons, adjusted, strict=True):
        d["p_adjusted"] = p
    return {"method": method, "name": CORRECTIONS[method], "m": len(comparisons)}


def adjust(p_values: list[float], method: str) -> list[float]:
    """Adjusted p-values: Benjamini-Hochberg by ``scipy.stats.false_discovery_control``; Holm's
    step-down ``max_{j<=k} min(1, (m - j + 1) p_(j))`` over the sorted p-values."""
    if not p_values:
        return []
    import numpy as np

    p = np.asarray(p_values, dtype=np.float64)
    if method == "bh":
        from scipy import stats

        return [float(v) for v in stats.false_discovery_control(p, method="bh")]
    if method != "holm":
        raise ValueError(f"unknown correction {method!r}; choose one of {', '.join(CORRECTIONS)}")
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = stepped
    return [float(v) for v in out]


def markdown(doc: dict, report: Path | None, written_to: Path | None) -> str:
    """The run's Markdown summary: verdict and counts, then each failing test with every failed gate's
    numbers, then a table of the others' key gates; each test linked to its section of the HTML ``report``
    (relative to ``written_to``, the Markdown file's folder, when given)."""
    link = _link(report, written_to)
    counts = ", ".join(f"{n} {outcome}" for outcome, n in doc["counts"].items() if n)
    lines = [f"## cnnaudit: {doc['verdict'].upper()}", "", f"{counts or 'no tests'} · {doc['duration']:.1f} s", ""]
    if doc.get("interrupted") or doc["verdict"] == "incomplete":
        lines += [f"**The run did not finish**: {doc.get('reported')} of {doc.get('collected')} collected tests reported.", ""]
    table = rows(doc["tests"])
    failing = [r for r in table if r["outcome"] in _FAILING]
    if failing:
        lines += ["### Failed", ""]
        for row, entry in ((r, e) for r, e in zip(table, doc["tests"]) if r["outcome"] in _FAILING):
            lines.append(f"- **{row['outcome']}** {link(row)}")
            gates = [g for g in (entry["evidence"] or {}).get("gates", []) if not g["holds"]]
            lines += [f"  - {_gate_text(g)}" for g in gates]
            if not gates and row["message"]:
                lines.append(f"  - {_cell(row['message'][:300])}")
            lines += [f"  - {_comparison_text(d)}" for d in (entry["evidence"] or {}).get("comparisons", [])]
        lines.append("")
    others = [r for r in table if r["outcome"] not in _FAILING]
    if others:
        lines += ["### Other tests", "", "| outcome | test | key gate | margin | change vs baseline |", "| --- | --- | --- | --- | --- |"]
        for row in others:
            gate = row["gate"]
            lines.append(
                f"| {row['outcome']} | {link(row)} | {_gate_text(gate, with_margin=False) if gate else '—'} | "
                f"{_signed(gate['margin']) if gate else '—'} | {_signed(row['change']['value']) if row['change'] else '—'} |"
            )
        lines.append("")
    correction = doc.get("correction")
    if correction:
        lines += [f"p-values corrected for {correction['m']} comparisons ({correction['name']}); the adjusted ones are "
                  "in the report beside the raw ones.", ""]
    return "\n".join(lines)


def _link(report: Path | None, written_to: Path | None):
    if report is None:
        return lambda row: f"`{_cell(row['nodeid'])}`"
    import os

    target = Path(os.path.relpath(report, written_to)) if written_to is not None else report
    return lambda row: f"[`{_cell(row['nodeid'])}`]({target.as_posix()}#{row['anchor']})"


def _gate_text(gate: dict, with_margin: bool = True) -> str:
    mark = "✓" if gate["holds"] else "✗"
    margin = "" if gate["margin"] is None or not with_margin else f", margin {_signed(gate['margin'])}"
    return f"{mark} `{_cell(gate['key'])}`: `{gate['stat']}` = {_num(gate['actual'])} {gate['op']} {_num(gate['value'])}{margin}"


def _comparison_text(d: dict) -> str:
    kind = f"paired, {d['n']} pairs" if d["paired"] else f"unpaired, {d['a']['n']} vs {d['b']['n']}"
    if d["paired"] and any(d.get("unmatched", (0, 0))):
        kind += f", unmatched {d['unmatched'][0]} + {d['unmatched'][1]}"
    adjusted = f" (adjusted {_num(d['p_adjusted'])})" if d.get("p_adjusted") is not None else ""
    return (f"`{_cell(d['key'])}`: mean {_signed(d['mean'])}, {round(d['ci']['level'] * 100)}% CI [{_signed(d['ci']['low'])}, "
            f"{_signed(d['ci']['high'])}], p {_num(d['p_value'])}{adjusted} ({kind})")


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4g}"


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell and link label: no pipes, backticks or line breaks."""
    return " ".join(str(text).replace("|", "\\|").replace("`", "'").split())
