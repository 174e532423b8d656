"""Plain-data summaries of what a test measured: Scores and comparison summaries, per-image values,
the gates an audit made, histograms and JUnit properties.

Used by the per-test recorder (:mod:`cnnaudit.records`) and by baselines (:mod:`cnnaudit.baseline`);
everything here takes and returns builtin types, which travel between xdist processes and into JSON.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cnnaudit.safe_text import xml_text

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
HISTOGRAM_BINS = 20


def summarize(scores: Any) -> dict:
    """``n``, ``n_undefined``, ``mean``, ``median``, ``min``, ``max``, ``ci`` and :data:`QUANTILES` of ``scores``.

    Statistics are ``None`` when no value is defined.
    """
    values = np.asarray(scores.values, dtype=np.float64)
    out: dict[str, Any] = {
        "name": str(scores.name),
        "unit": str(getattr(scores, "unit", "image")),
        "n": int(scores.n),
        "n_undefined": int(scores.n_undefined),
        "mean": None, "median": None, "min": None, "max": None, "ci": None, "quantiles": {},
    }
    if np.isfinite(values).any():
        interval = scores.ci()
        out.update(
            mean=number(scores.mean()),
            median=number(scores.median()),
            min=number(scores.min()),
            max=number(scores.max()),
            ci={"low": number(interval.low), "high": number(interval.high), "level": float(getattr(interval, "level", 0.95))},
            quantiles={str(q): number(scores.quantile(q)) for q in QUANTILES},
        )
    return out


def per_image(scores: Any) -> dict:
    """``values`` (``None`` where undefined) and ``ids`` of ``scores``: what a baseline stores per image."""
    values = np.asarray(scores.values, dtype=np.float64)
    return {"values": [number(v) for v in values.tolist()], "ids": None if scores.ids is None else [str(i) for i in scores.ids]}


def summarize_difference(diff: Any) -> dict:
    """``name``, ``paired``, ``n`` (pairs, or values of ``a``), ``unmatched`` (ids of each side without a
    partner), ``mean``, ``ci`` (95%), ``p_value`` and per side ``{name, n, mean}`` of a ``Difference``.

    Computes the interval and the p-value unless the audit already did (both are cached on ``diff``);
    with fewer than two values on a side the interval is unbounded and the p-value undefined (``None``).
    """
    interval, sides = diff.ci(), getattr(diff, "sides", None) or (None, None)
    p_value = diff.p_value if min(diff.a.size, diff.b.size) >= 2 else None

    def side(values: np.ndarray, scores: Any) -> dict:
        return {
            "name": None if scores is None else str(scores.name),
            "n": int(values.size),
            "mean": number(np.mean(values)) if values.size else None,
        }

    return {
        "name": str(diff.name),
        "paired": bool(diff.paired),
        "n": int(diff.n),
        "unmatched": [int(k) for k in getattr(diff, "unmatched", (0, 0))],
        "mean": number(diff.mean),
        "ci": {"low": number(interval.low), "high": number(interval.high), "level": float(interval.level)},
        "p_value": None if p_value is None else number(p_value),
        "a": side(diff.a, sides[0]),
        "b": side(diff.b, sides[1]),
    }


def gate(expression: str, op: str, threshold: float, actual: float, holds: bool) -> dict:
    """One comparison an audit made: ``{stat, op, value, actual, holds, margin}`` (see :mod:`cnnaudit.gates`)."""
    from cnnaudit.gates import margin

    return {"stat": expression, "op": op, "value": number(threshold), "actual": number(actual), "holds": bool(holds),
            "margin": margin(op, actual, threshold)}


def histogram(values: Any, markers: list[float]) -> dict | None:
    """:data:`HISTOGRAM_BINS` equal bins over the defined values, widened to include ``markers``."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None
    low = min([float(finite.min())] + markers)
    high = max([float(finite.max())] + markers)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    counts, _ = np.histogram(finite, bins=HISTOGRAM_BINS, range=(low, high))
    return {"low": low, "high": high, "counts": counts.tolist()}


def paired_histogram(a: Any, b: Any) -> dict | None:
    """Both sides of a paired comparison in one histogram: :data:`HISTOGRAM_BINS` equal bins over the two
    sides' values together, ``{low, high, a: counts, b: counts}``."""
    values = np.concatenate([np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)])
    joint = histogram(values, [])
    if joint is None:
        return None
    bins = dict(bins=HISTOGRAM_BINS, range=(joint["low"], joint["high"]))
    return {"low": joint["low"], "high": joint["high"],
            "a": np.histogram(a, **bins)[0].tolist(), "b": np.histogram(b, **bins)[0].tolist()}


def junit_properties(evidence: dict) -> list[tuple[str, object]]:
    """Each Scores' and each comparison's numbers as JUnit properties ``cnnaudit.<key>.<stat>`` (keys
    made valid XML: pytest writes property names as they are), and each gate the test made, passed or
    failed, as ``cnnaudit.gate.<k>`` = ``"passed: <key> <stat> <op> <threshold> with <value>, margin <m>"``."""
    props: list[tuple[str, object]] = []
    for s in evidence["scores"]:
        prefix = f"cnnaudit.{xml_text(s['key'])}"
        props += [(f"{prefix}.n", s["n"]), (f"{prefix}.n_undefined", s["n_undefined"]), (f"{prefix}.mean", s["mean"])]
        if s["ci"]:
            props += [(f"{prefix}.ci_low", s["ci"]["low"]), (f"{prefix}.ci_high", s["ci"]["high"])]
        if s["delta_mean"] is not None:
            props.append((f"{prefix}.delta_mean", s["delta_mean"]))
    for d in evidence["comparisons"]:
        prefix = f"cnnaudit.{xml_text(d['key'])}"
        props += [
            (f"{prefix}.mean", d["mean"]), (f"{prefix}.ci_low", d["ci"]["low"]), (f"{prefix}.ci_high", d["ci"]["high"]),
            (f"{prefix}.p_value", d["p_value"]), (f"{prefix}.paired", d["paired"]),
            (f"{prefix}.n_a", d["a"]["n"]), (f"{prefix}.n_b", d["b"]["n"]),
            (f"{prefix}.mean_a", d["a"]["mean"]), (f"{prefix}.mean_b", d["b"]["mean"]),
            (f"{prefix}.n", d["n"]), (f"{prefix}.unmatched_a", d["unmatched"][0]), (f"{prefix}.unmatched_b", d["unmatched"][1]),
        ]
    for k, g in enumerate(evidence.get("gates", []), start=1):
        margin = "" if g["margin"] is None else f", margin {g['margin']:+.6g}"
        threshold, actual = ("not finite" if v is None else f"{v:.6g}" for v in (g["value"], g["actual"]))
        outcome = "passed" if g["holds"] else "failed"
        props.append((f"cnnaudit.gate.{k}",
                       xml_text(f"{outcome}: {g['key']} {g['stat']} {g['op']} {threshold} with {actual}{margin}")))
    return props


def markers(summary: dict) -> list[float]:
    """The values a Scores' histogram must show: its thresholds and its baseline mean."""
    marks = [t["value"] for t in summary["thresholds"]]
    if summary["baseline"] and summary["baseline"].get("mean") is not None:
        marks.append(summary["baseline"]["mean"])
    return [m for m in marks if math.isfinite(m)]


def number(value: Any) -> float | None:
    """``float(value)``, or ``None`` when it is not finite (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def delta(value: float | None, reference: float | None) -> float | None:
    """``value - reference``, or ``None`` when either is missing."""
    return None if value is None or reference is None else value - reference
