"""The benchmark command runs and writes the figures it promises (its speed is measured by running it, not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_command_writes_every_figure_of_the_sections_that_need_no_peers(tmp_path):
    """``maximize``, ``report`` and ``recording`` at toy settings (the ``gradcam`` sections need the ``bench`` extra)."""
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--device", "cpu", "--only", "maximize,report,recording", "--threads", "1",
         "--maximize-steps", "1", "--maximize-size", "32", "--report-images", "16", "--recording-tests", "3", "--recording-big-side", "1500", "--repeats", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["environment"]["device"] == "cpu" and figures["settings"]["maximize_steps"] == 1
    maximize = figures["maximize"]
    assert maximize["channels"] == 64 and maximize["repeats"] == 1
    times = maximize["seconds"]
    assert maximize["ratio"] == round(times["one_at_a_time"]["median"] / times["batched"]["median"], 2)
    assert maximize["max_abs_image_difference"] < 1e-3  # one step: batching changes rounding only
    report = figures["report"]
    assert report["images"] == 16 and report["x10"]["images"] == 160
    assert report["html_within_goal"] == (report["write_html_s"] < report["goal_s"])
    recording = figures["recording"]
    suite = recording["suite"]
    assert abs(suite["ratio"] - suite["recorded_s"] / suite["plain_s"]) < 0.02  # ratio of the unrounded medians
    assert suite["image_files"]["files"] == 3 * 16  # 8 overlays + 4 lowest + 4 highest per test; 64 px: one file each
    big = recording["big_image"]
    assert big["side"] == 1500 and big["image_files"]["files"] == 2 * 2  # one overlay, one extreme: image + thumbnail
    assert big["recorded"]["max_rss_mb"] > 0 and big["plain"]["wall_s"] > 0


def test_maximisation_quality_benchmark_scores_every_method_on_every_unit(tmp_path):
    """``bench_maximize_quality.py`` at toy settings, without the peers (the ``bench`` extra)."""
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_maximize_quality.py", "--steps", "2", "--size", "32", "--units", "1",
         "--no-peers", "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout)
    methods = figures["methods"]
    assert methods[0] == "default (pixel)" and "Lucent defaults" not in methods
    assert [u["unit"] for u in figures["units"]][:4] == ["red", "blue", "edge", "pattern"] and len(figures["units"]) == 4 + 4
    for unit in figures["units"]:
        assert unit["best"] == max(unit["value"].values())
        if unit["best"] > 0:
            assert max(unit["fraction_of_best"].values()) == 1.0
        if unit["optimum"]:  # no image beats the known optimum
            assert all(value <= unit["optimum"] + 1e-5 for value in unit["value"].values())
    assert set(figures["summary"]) == {"known optimum", "random resnet18", "trained demo CNN"}


def test_the_paired_gate_detects_a_drop_the_summary_gate_misses_at_the_same_false_alarm_rate(tmp_path):
    """The gate simulation (40 test sets of 100 images per drop, seeded): with no drop both gates keep to
    their 5% false-alarm rate (within sampling error); a drop of 0.01, against an image-to-image spread of
    0.15, is flagged by the paired gate in most test sets and by the summary gate in almost none."""
    out = tmp_path / "gates.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_gates.py", "--trials", "40", "--drops", "0,0.01",
         "--baseline-images", "1000", "--baseline-scores", "3", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(out.read_text())
    power = figures["power"]
    assert power["false_alarms"]["paired"] <= 0.15 and power["false_alarms"]["summary"] <= 0.15
    flagged = {gate: rates[1] for gate, rates in power["flagged"].items()}
    assert flagged["paired"] >= 0.8 and flagged["summary"] <= 0.2, flagged
    assert power["smallest_drop_detected_80pct"] == {"summary": None, "paired": 0.01}
    size = figures["baseline_size"]
    assert size["lines"] < 40 * 3 and 10 < size["bytes_per_value"] < 40  # lines per Scores, not per image


def test_maximisation_sweep_scores_every_setting_on_every_layer(tmp_path):
    """``bench_maximize_sweep.py`` at toy settings: per unit the default keeps the better of its two runs,
    so per layer it is never behind either run alone."""
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_maximize_sweep.py", "--steps", "2", "--size", "32", "--resnet-units", "2",
         "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout)
    assert [(r["model"], r["layer"]) for r in figures["layers"]][-2:] == [("random resnet18", "layer2.0.relu"),
                                                                          ("random resnet18", "layer3.1.relu")]
    assert len(figures["layers"]) == 3 * 3 + 2 and figures["live_units"] == sum(r["live"] for r in figures["layers"])
    for row in figures["layers"]:
        if not row["live"]:
            continue
        assert max(row["min_fraction_of_best"].values()) <= 1.0
        for alone in ("annealed only", "plain only"):
            assert row["mean_fraction_of_best"]["default"] >= row["mean_fraction_of_best"][alone] - 1e-3, row
            assert row["min_fraction_of_best"]["default"] >= row["min_fraction_of_best"][alone] - 1e-3, row
            assert row["below_0.9"]["default"] <= row["below_0.9"][alone], row
    assert set(figures["seconds_per_unit"]) == set(figures["settings"])
