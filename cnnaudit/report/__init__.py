"""The HTML and JSON reports of an audit run.

The HTML report is one self-contained file (jinja2 with autoescaping; CSS and JS inlined; a
Content-Security-Policy that lets it load nothing from the network). Thumbnails are inlined as
data URIs, failures first, up to an inline budget (:data:`INLINE_BUDGET_BYTES`); past it thumbnails
are linked from the sibling image folder instead and the report says so. Full-size images are
always sibling files, opened in a lightbox. Both files are written atomically (a temporary file,
then ``os.replace``), the HTML streamed so memory does not grow with the number of images.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import IO, Any, Iterator

from cnnaudit.safe_text import digest, url_path, xml_text

INLINE_BUDGET_BYTES = 24 * 2**20
FORMAT = "cnnaudit-report"
VERSION = 1
HISTOGRAM_WIDTH = 240
HISTOGRAM_HEIGHT = 56
CURVE_HEIGHT = 110
CURVE_STEP = 44
"""Horizontal space (px) per layer of a sanity check's curve, between :data:`HISTOGRAM_WIDTH` and :data:`CURVE_WIDTH`."""
CURVE_WIDTH = 560
MIN_SHOWN_SIDE = 112


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[IO[str]]:
    """Open a temporary file next to ``path`` for writing text; on success it replaces ``path`` at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def all_images(evidence: dict | None) -> Iterator[dict]:
    """Every image record of a test's evidence, in the order the report shows them."""
    if not evidence:
        return
    for comparison in evidence.get("comparisons", []):
        for change in comparison.get("changes", []):
            yield from change["images"]
    for scores in evidence["scores"]:
        for label in ("cascade", "lowest", "highest"):
            yield from scores["images"].get(label, [])
    for group in ("heatmaps", "visualizations"):
        for item in evidence[group]:
            yield from item["images"]
    yield from evidence["images"]


def plan_inlining(entries: list[dict], budget: int) -> tuple[set[str], int]:
    """Ids of the thumbnails to inline (in report order, while their base64 fits ``budget``) and the number linked instead."""
    inline: set[str] = set()
    used, linked = 0, 0
    for entry in entries:
        for image in all_images(entry["evidence"]):
            size = 4 * ((image["thumb_bytes"] + 2) // 3) + 23
            if used + size <= budget:
                inline.add(image["id"])
                used += size
            else:
                linked += 1
    return inline, linked


def shown_size(image: dict) -> tuple[int, int]:
    """Display size of a thumbnail: its own, or enlarged by an integer factor until its longer side
    reaches :data:`MIN_SHOWN_SIDE`."""
    width, height = image["thumb_width"], image["thumb_height"]
    factor = max(1, -(-MIN_SHOWN_SIDE // max(width, height)))
    return width * factor, height * factor


def histogram_figure(summary: dict, width: int = HISTOGRAM_WIDTH, height: int = HISTOGRAM_HEIGHT) -> dict | None:
    """SVG geometry of a Scores' histogram: bars, the CI band and markers (mean, thresholds, baseline mean)."""
    hist = summary.get("histogram")
    if not hist:
        return None
    low, high, counts = hist["low"], hist["high"], hist["counts"]
    peak = max(counts) or 1
    step = width / len(counts)

    def x(value: float) -> float:
        return round((value - low) / (high - low) * width, 2)

    bars = [
        {"x": round(i * step, 2), "w": round(max(step - 1, 1), 2), "h": round(c / peak * (height - 4), 2), "count": c}
        for i, c in enumerate(counts)
    ]
    marks = [
        {"x": x(t["value"]), "kind": "threshold", "label": f"threshold {t['stat']} {t['op']} {t['value']:.4g}"}
        for t in summary["thresholds"]
    ]
    if summary["mean"] is not None:
        marks.append({"x": x(summary["mean"]), "kind": "mean", "label": f"mean {summary['mean']:.4g}"})
    base = (summary.get("baseline") or {}).get("mean")
    if base is not None:
        marks.append({"x": x(base), "kind": "baseline", "label": f"baseline mean {base:.4g}"})
    ci = summary["ci"]
    band = {"x0": x(ci["low"]), "x1": x(ci["high"])} if ci and ci["low"] is not None and ci["high"] is not None else None
    return {"width": width, "height": height, "bars": bars, "marks": marks, "band": band, "low": low, "high": high}


def curve_figure(summary: dict, height: int = CURVE_HEIGHT) -> dict | None:
    """SVG geometry of a per-layer Scores (a sanity check's cascade) as a line chart: x the layers in the order they
    were randomised, y the value on a fixed ``[-1, 1]`` axis (a correlation), with the thresholds the audit gated on
    as horizontal lines. Undefined values break the line. Layer names are drawn under the axis, rotated."""
    curve = summary.get("curve")
    if not curve:
        return None
    values = [point["value"] for point in curve]
    finite = [v for v in values if v is not None]
    low = min([-1.0] + finite + [t["value"] for t in summary["thresholds"] if t["value"] is not None])
    high = max([1.0] + finite + [t["value"] for t in summary["thresholds"] if t["value"] is not None])
    left, right, top = 60, 12, 6  # layer names run down-left from their point: room on the left
    width = min(CURVE_WIDTH, max(HISTOGRAM_WIDTH, left + right + CURVE_STEP * len(curve)))
    step = (width - left - right) / max(len(curve) - 1, 1)

    def y(value: float) -> float:
        return round(top + (high - value) / (high - low) * (height - top), 2)

    points, segments, run = [], [], []
    for k, point in enumerate(curve):
        x = round(left + k * step, 2) if len(curve) > 1 else round(left + (width - left - right) / 2, 2)
        label = point["id"] if len(point["id"]) <= 14 else "…" + point["id"][-13:]
        points.append({"x": x, "y": None if point["value"] is None else y(point["value"]), "value": point["value"],
                       "id": point["id"], "label": label, "step": k + 1})
        if point["value"] is None:
            run = []
        else:
            if not run:
                segments.append(run)
            run.append(f"{x},{y(point['value'])}")
    lines = [{"y": y(v), "label": f"{v:g}"} for v in (1.0, 0.0, -1.0) if low <= v <= high]
    thresholds = [{"y": y(t["value"]), "label": f"threshold {t['stat']} {t['op']} {t['value']:.4g}", "holds": t["holds"]}
                  for t in summary["thresholds"] if t["value"] is not None]
    return {"width": width, "height": height, "labels": 76, "points": points,
            "segments": [" ".join(run) for run in segments], "lines": lines, "thresholds": thresholds, "left": left}


def paired_histogram_figure(summary: dict, width: int = HISTOGRAM_WIDTH, height: int = HISTOGRAM_HEIGHT) -> dict | None:
    """SVG geometry of a paired comparison's two sides in one histogram: per bin, side a's bar and side b's
    (half a bin wide each, side by side), and both means."""
    hist = summary.get("histogram")
    if not hist:
        return None
    low, high = hist["low"], hist["high"]
    peak = max(hist["a"] + hist["b"]) or 1
    step = width / len(hist["a"])
    bars = []
    for side, offset in (("a", 0.0), ("b", step / 2)):
        for i, count in enumerate(hist[side]):
            bars.append({"x": round(i * step + offset, 2), "w": round(max(step / 2 - 0.5, 0.5), 2),
                         "h": round(count / peak * (height - 4), 2), "count": count, "side": side})
    marks = []
    for side in ("a", "b"):
        mean = summary[side]["mean"]
        if mean is not None:
            marks.append({"x": round((mean - low) / (high - low) * width, 2), "kind": f"mean-{side}", "label": f"mean {side} {mean:.4g}"})
    return {"width": width, "height": height, "bars": bars, "marks": marks, "band": None, "low": low, "high": high}


def document(results: Any, *, environment: dict, interrupted: bool, in_progress: bool, image_dir: str | None,
             baseline: dict | None, started: float, finished: float, correction: str | None = None,
             split: dict | None = None) -> dict:
    """The run as one JSON-able document (what ``--cnnaudit-json`` writes and the HTML shows).

    ``interrupted``: pytest did not end normally (Ctrl-C, ``pytest.exit``, an internal error); the
    verdict is then ``fail`` or ``incomplete``, as it is while ``in_progress``. ``correction``: adjust
    the comparisons' p-values across the run (:func:`cnnaudit.report.overview.correct`). ``split``:
    ``{"group", "splits"}`` when the run is one shard of a split suite (pytest-split), for merging."""
    from cnnaudit.report.overview import correct

    entries = results.entries()
    return {
        "format": FORMAT,
        "version": VERSION,
        "verdict": results.verdict(finished=not (interrupted or in_progress)),
        "interrupted": interrupted,
        "in_progress": in_progress,
        "collected": results.collected,
        "split": split,
        "reported": sum(1 for e in entries if e["phase"] != "collect"),
        "counts": results.counts(),
        "environment": environment,
        "models": results.models(),
        "seeds": results.seeds(),
        "baseline": baseline,
        "correction": correct(entries, correction),
        "images_dir": image_dir,
        "started": started,
        "duration": finished - started,
        "tests": entries,
    }


def write_json(path: Path, doc: dict) -> None:
    """Write ``doc`` as JSON to ``path`` atomically; ``images_dir`` becomes relative to ``path``."""
    doc = {**doc, "images_dir": _relative(doc["images_dir"], Path(path))}
    with atomic_open(path) as handle:
        json.dump(doc, handle, indent=1, allow_nan=False)


def write_html(path: Path, doc: dict, budget: int = INLINE_BUDGET_BYTES) -> dict:
    """Render ``doc`` to ``path`` atomically; returns ``{"bytes", "images", "linked"}``."""
    import jinja2

    from cnnaudit.records import EVIDENCE_SIDE, IMAGES_PER_TEST, OVERLAYS_PER_HEATMAPS
    from cnnaudit.report import overview

    path = Path(path)
    images_dir = Path(doc["images_dir"]) if doc["images_dir"] else None
    prefix = url_path(_relative(doc["images_dir"], path) or ".")
    inline, linked = plan_inlining(doc["tests"], budget)

    def thumb_src(image: dict) -> str:
        if image["id"] in inline and images_dir is not None and (images_dir / image["thumb"]).is_file():
            data = (images_dir / image["thumb"]).read_bytes()
            return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
        return f"{prefix}/{image['thumb']}"

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cnnaudit.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        finalize=_text_safe,
    )
    env.filters["num"] = _num
    env.filters["signed"] = _signed
    env.filters["hash_id"] = test_anchor
    env.filters["search_text"] = search_text
    env.globals.update(
        overview_rows=overview.rows,
        change_class=change_class,
        scores_change=lambda s: overview.change({"scores": [s], "comparisons": [], "gates": _gates_of(s, "scores")},
                                                {"kind": "scores", "key": s["key"]}),
        doc_correction=doc.get("correction"),
        thumb_src=thumb_src,
        full_src=lambda image: f"{prefix}/{image['file']}",
        histogram=histogram_figure,
        paired_histogram=paired_histogram_figure,
        curve=curve_figure,
        shown_size=shown_size,
    )
    template = env.get_template("report.html.j2")
    total_images = sum(1 for entry in doc["tests"] for _ in all_images(entry["evidence"]))
    context = {
        "doc": doc,
        "left_out": left_out(doc["tests"]),
        "limits": {"overlays": OVERLAYS_PER_HEATMAPS, "per_test": IMAGES_PER_TEST, "side": EVIDENCE_SIDE},
        "images_prefix": prefix,
        "linked": linked,
        "total_images": total_images,
        "budget_mb": budget / 2**20,
    }
    with atomic_open(path) as handle:
        for chunk in template.generate(**context):
            handle.write(chunk)
    return {"bytes": path.stat().st_size, "images": total_images, "linked": linked}


def left_out(entries: list[dict]) -> dict[str, int]:
    """What the evidence budget left out of the report: heatmaps not drawn (``overlays``), images past the
    per-test limit (``dropped``) and images stored downscaled (``downscaled``)."""
    counts = {"overlays": 0, "dropped": 0, "downscaled": 0}
    for entry in entries:
        evidence = entry["evidence"]
        if not evidence:
            continue
        counts["overlays"] += sum(max(0, h["n"] - len(h["images"])) for h in evidence["heatmaps"] if h["images"])
        counts["dropped"] += evidence.get("dropped_images", 0)
        counts["downscaled"] += sum(
            1 for image in all_images(evidence) if image.get("source_width", image["width"]) > image["width"]
        )
    return counts


def change_class(change: dict | None) -> str:
    """CSS class of a change against the baseline: ``good`` or ``bad`` by the direction its gates want, else none."""
    if not change or change.get("good") is None:
        return ""
    return "good" if change["good"] else "bad"


def _gates_of(summary: dict, kind: str) -> list[dict]:
    return [{**t, "key": summary["key"], "kind": kind} for t in summary["thresholds"]]


def test_anchor(nodeid: str) -> str:
    """A stable HTML id for a test: a hash of its node id (node ids may hold any character)."""
    return digest(nodeid)


def search_text(entry: dict) -> str:
    """What the report's search box matches for a test: node id, outcome, message, Scores and comparison keys, notes.

    The message without the objects pytest prints in it (:func:`without_reprs`): its ``+  where`` lines (each names
    the objects an assertion read, fixtures included: ``Subject(PeopleCNN, ...)``, ``ImageSet(...)``, ``tensor(...)``)
    and any object repr left in the first lines; otherwise searching for ``subject`` or ``tensor`` would match every
    failed test. The traceback (``details``, which repeats the fixtures' reprs) is not searched."""
    evidence = entry["evidence"] or {}
    parts = [entry["nodeid"], entry["outcome"], without_reprs(entry["message"] or "")]
    parts += [s["key"] for s in evidence.get("scores", []) + evidence.get("comparisons", [])] + list(evidence.get("notes", []))
    return " ".join(parts).lower()


_EXPLANATION = re.compile(r"^\s*\+\s")  # pytest's "  +  where x = f(...)" / "  +  and ..." lines
_REPR_START = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>|\b(?:[A-Z]\w*|tensor|array|Parameter)\(")


def without_reprs(message: str) -> str:
    """``message`` without pytest's assertion-explanation lines (``+  where ...``) and without object reprs:
    ``<... at 0x...>`` and every call-shaped ``Name(...)`` whose name is capitalised (a class: ``Subject(...)``,
    ``Scores(...)``, ``Interval(...)``) or ``tensor(...)`` / ``array(...)``, with what its balanced brackets hold.
    Lower-case calls such as ``mass_in(tools)`` (Scores keys) stay."""
    kept = [line for line in message.splitlines() if not _EXPLANATION.match(line)]
    text = "\n".join(kept)
    out, position = [], 0
    while True:
        found = _REPR_START.search(text, position)
        if found is None:
            out.append(text[position:])
            break
        out.append(text[position : found.start()])
        if found.group().startswith("<"):
            position = found.end()
            continue
        depth, end = 0, found.end() - 1
        while end < len(text):
            depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(text[end], 0)
            end += 1
            if depth == 0:
                break
        out.append("…")
        position = end
    return "".join(out)


def _text_safe(value: Any) -> Any:
    """What a template prints, with NUL, lone surrogates and other characters XML forbids escaped. Markup
    (a macro's output) passes as it is: every value in it went through here already."""
    import markupsafe

    return xml_text(value) if isinstance(value, str) and not isinstance(value, markupsafe.Markup) else value


def _relative(directory: str | None, target: Path) -> str | None:
    if directory is None:
        return None
    return Path(os.path.relpath(Path(directory).resolve(), Path(target).resolve().parent)).as_posix()


def _num(value: Any, digits: int = 3) -> str:
    """``0.51234`` -> ``"0.512"``; ``None`` -> ``"—"``."""
    if value is None:
        return "—"
    return f"{value:.{digits}g}" if abs(value) >= 1e4 or 0 < abs(value) < 1e-3 else f"{value:.{digits}f}"


def _signed(value: Any, digits: int = 3) -> str:
    """``0.031`` -> ``"+0.031"``; ``None`` -> ``"—"``."""
    return "—" if value is None else ("+" if value >= 0 else "−") + _num(abs(value), digits)
