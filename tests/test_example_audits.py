"""The README's main job: the example audits run green, the clean models pass, the biased one is caught.

This runs ``pytest example_audits`` exactly as a new user does (in a subprocess, with the report and
JSON outputs, an empty model cache), with 1 and with 2 CPU threads: the verdicts and the figures must
not depend on the machine. It also checks that the figures the per-seed table is made of
(:mod:`cnnaudit.demo.robustness`) are the ones the audits assert on, and that re-recording the
baseline reproduces ``example_audits/baseline.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from cnnaudit import demo
from cnnaudit.demo.robustness import figures

ROOT = Path(__file__).resolve().parents[1]
THREADS = (1, 2)
SAME_FIGURES = 1e-4  # across thread counts (measured: see docs/troubleshooting.md)


def _run(tmp: Path, threads: int, *options: str) -> subprocess.CompletedProcess:
    cache = tmp / "cache"
    cache.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CNNAUDIT_CACHE": str(cache)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "example_audits", "-q", "-p", "no:cacheprovider", *options],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env,
    )
    assert not any(cache.iterdir()), "the example audits trained or cached a model; they must use the shipped ones"
    return run


def _audit(tmp: Path, threads: int) -> dict:
    report, data = tmp / "report.html", tmp / "report.json"
    run = _run(tmp, threads, f"--cnnaudit-report={report}", f"--cnnaudit-json={data}")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return {"json": json.loads(data.read_text()), "html": report.read_text(encoding="utf-8")}


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], dict]:
    """``audited(threads)``: the example audits' JSON and HTML with that many threads, run once per module."""
    runs: dict[int, dict] = {}

    def get(threads: int) -> dict:
        if threads not in runs:
            runs[threads] = _audit(tmp_path_factory.mktemp(f"threads{threads}"), threads)
        return runs[threads]

    return get


def _scores(result: dict) -> dict[tuple[str, str], dict]:
    return {(test["nodeid"], s["key"]): s for test in result["json"]["tests"] for s in test["evidence"]["scores"]}


def _comparisons(result: dict) -> dict[tuple[str, str], dict]:
    return {(test["nodeid"], c["key"]): c for test in result["json"]["tests"] for c in test["evidence"]["comparisons"]}


@pytest.mark.parametrize("threads", THREADS)
def test_example_audits_pass_for_the_clean_models_and_catch_the_biased_one(audited, threads: int) -> None:
    result = audited(threads)
    assert result["json"]["environment"]["threads"] == threads
    outcomes = {test["nodeid"]: test["outcome"] for test in result["json"]["tests"]}
    biased = {nodeid: outcome for nodeid, outcome in outcomes.items() if "[biased]" in nodeid and "test_units" not in nodeid}
    others = {nodeid: outcome for nodeid, outcome in outcomes.items() if nodeid not in biased}
    assert len(biased) == 8 and set(biased.values()) == {"xfailed"}, biased  # 4 attention, 2 decision audits, 2 gates
    assert len(others) == 15 and set(others.values()) == {"passed"}, others
    assert {n for n in others if "test_units" in n and "[biased]" in n}  # the biased model's units are alive too
    html = result["html"]
    assert "test_doctor_decisions_rest_on_tools[biased]" in html and "mass_in(tools)" in html


def test_figures_do_not_depend_on_the_thread_count(audited) -> None:
    one, two = (_scores(audited(threads)) for threads in THREADS)
    assert one.keys() == two.keys() and len(one) >= 20
    for key, a in one.items():
        b = two[key]
        assert a["n"] == b["n"] and a["n_undefined"] == b["n_undefined"], key
        for field in ("mean", "median", "min", "max"):
            assert a[field] == pytest.approx(b[field], abs=SAME_FIGURES), (key, field)
        assert a["ci"]["low"] == pytest.approx(b["ci"]["low"], abs=SAME_FIGURES), key
        assert a["ci"]["high"] == pytest.approx(b["ci"]["high"], abs=SAME_FIGURES), key


def test_the_per_seed_table_measures_what_the_audits_assert(audited) -> None:
    """:func:`figures` of the shipped clean model equals what the example audits recorded for it."""
    recorded = _scores(audited(2))
    mine = figures(demo.shipped_model("clean"))
    pairs = {
        "doctor: mass on tools, CI low": (("test_attention.py::test_doctor_decisions_rest_on_tools[clean]", "mass_in(tools)"), "low"),
        "nurse: mass on tools, CI low": (("test_attention.py::test_nurse_decisions_rest_on_tools[clean]", "mass_in(tools)"), "low"),
        "mass on faces, CI high": (("test_attention.py::test_faces_draw_little_attention[clean]", "mass_in(face)"), "high"),
        "accuracy, CI low": (("test_decisions.py::test_accuracy_is_high[clean]", "correct"), "low"),
    }
    for figure, (key, bound) in pairs.items():
        assert mine[figure] == pytest.approx(recorded[key]["ci"][bound], abs=1e-9), figure
    sanity = recorded[("test_sanity.py::test_gradcam_depends_on_the_weights", "sanity_check(gradcam)")]
    assert mine["Grad-CAM sanity check, median correlation"] == pytest.approx(sanity["median"], abs=1e-9)
    relu1 = recorded[("test_units.py::test_first_block_has_no_dead_filters[clean]", "relative_activation")]
    assert mine["features.relu1: relative activation, 10% quantile"] == pytest.approx(relu1["quantiles"]["0.1"], abs=1e-9)
    relu4 = recorded[("test_units.py::test_last_block_units_are_reachable[clean]", "relative_activation")]
    assert mine["features.relu4[:16]: relative activation, median"] == pytest.approx(relu4["median"], abs=1e-9)
    gate = _comparisons(audited(2))[
        ("test_release_gate.py::test_attention_on_tools_did_not_drop[candidate]", "mass_in(tools) \u2212 baseline(mass_in(tools))")
    ]
    candidate = figures(demo.shipped_model("candidate"))
    figure = "mass on tools, paired difference from the released model, CI low"
    assert gate["paired"] and gate["n"] == 200 and gate["unmatched"] == [0, 0]
    assert candidate[figure] == pytest.approx(gate["ci"]["low"], abs=1e-9)


def test_recording_the_baseline_reproduces_the_committed_one(tmp_path: Path) -> None:
    saved = tmp_path / "baseline.json"
    run = _run(tmp_path, 2, f"--cnnaudit-save-baseline={saved}")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    committed = json.loads((ROOT / "example_audits" / "baseline.json").read_text())["tests"]
    fresh = json.loads(saved.read_text())["tests"]
    assert fresh.keys() == committed.keys()
    gate = "test_release_gate.py::test_attention_on_tools_did_not_drop"
    # a recording run audits the released model in each candidate's place
    assert fresh[f"{gate}[candidate]"]["scores"] == fresh[f"{gate}[biased]"]["scores"]
    for nodeid, entry in committed.items():
        assert fresh[nodeid]["scores"].keys() == entry["scores"].keys(), nodeid
        for key, summary in entry["scores"].items():
            again = fresh[nodeid]["scores"][key]
            assert again["model"] == summary["model"] and again["n"] == summary["n"], (nodeid, key)
            for field in ("mean", "median", "min", "max"):
                assert again[field] == pytest.approx(summary[field], abs=SAME_FIGURES), (nodeid, key, field)


def test_the_per_seed_table_uses_the_thresholds_the_audits_assert() -> None:
    """Each threshold of the table's figures appears in the example audits (change both together)."""
    from cnnaudit.demo.robustness import FIGURES

    source = "\n".join(path.read_text() for path in sorted((ROOT / "example_audits").glob("test_*.py")))
    for figure in FIGURES:
        literal = f"{abs(figure.threshold):g}" if figure.threshold else "== []"
        assert literal in source, (figure.name, literal)
