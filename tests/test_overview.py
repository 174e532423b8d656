"""The report's summary rows, multiple-comparison corrections and the Markdown summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from cnnaudit import evidence
from cnnaudit.records import EvidenceRecorder
from cnnaudit.report import overview
from cnnaudit.scores import Scores, compare


def test_holm_by_hand_and_benjamini_hochberg_by_scipy() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert overview.adjust(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: p * m / rank -> 0.02, 0.04, 0.04, 0.02 after the step-up minimum
    assert overview.adjust(p, "bh") == pytest.approx(list(stats.false_discovery_control(p, method="bh")))
    assert overview.adjust(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert overview.adjust([], "holm") == [] and overview.adjust([0.9, 0.8], "holm") == [1.0, 1.0]  # 2 x 0.8 caps at 1, then the running max
    with pytest.raises(ValueError, match="unknown correction 'bonferoni'; choose one of holm, bh"):
        overview.adjust([0.1], "bonferoni")


def recorded(nodeid: str, outcome: str, audit) -> dict:
    recorder = EvidenceRecorder(nodeid, None)
    with evidence.recording(recorder):
        audit()
    ev = recorder.finish(lambda key: {"mean": 0.5} if key == "mass_in(tools)" else None)
    return {"nodeid": nodeid, "outcome": outcome, "message": "", "evidence": ev}


def test_rows_show_the_first_failed_gate_its_margin_and_a_change_coloured_by_the_gate_direction() -> None:
    def rising_good() -> None:
        mass = Scores([0.6, 0.7, 0.8], "mass_in(tools)")
        assert mass.mean() >= 0.4 and mass.ci().low >= 0.3

    def rising_bad() -> None:
        mass = Scores([0.6, 0.7, 0.8], "mass_in(tools)")
        assert not mass.ci().high <= 0.25  # a stamp that should stay small rose: a failed gate

    def no_gate() -> None:
        Scores([0.1, 0.2], "other")

    good, bad, none = overview.rows([recorded("a", "passed", rising_good), recorded("b", "failed", rising_bad),
                                     recorded("c", "passed", no_gate)])
    assert good["gate"]["stat"] == "mean()" and good["gates"] == 2 and good["failed"] == 0
    assert good["gate"]["margin"] == pytest.approx(0.3) and good["change"] == {"value": pytest.approx(0.2), "good": True}
    assert bad["gate"]["stat"] == "ci().high" and not bad["gate"]["holds"] and bad["change"]["good"] is False
    assert none["gate"] is None and none["change"] is None and none["anchor"].startswith("t-")


def test_correction_adjusts_every_comparison_of_the_run_and_the_markdown_lists_failures_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = [rng.normal(0.5, 0.1, 30) for _ in range(3)]

    def gated(shift: float):
        def audit() -> None:
            candidate = values[0] + shift + 0.1 * (values[1] - 0.5)  # a change plus per-image noise
            gap = compare(Scores(candidate, "a", ids=range(30)), Scores(values[0], "b", ids=range(30)))
            gap.ci().low >= -0.02  # noqa: B015 - the gate is recorded; the test's outcome is given below
        return audit

    tests = [recorded("t.py::test_ok", "passed", gated(0.0)), recorded("t.py::test_drop", "failed", gated(-0.1))]
    correction = overview.correct(tests, "holm")
    assert correction == {"method": "holm", "name": "Holm", "m": 2}
    raw = [t["evidence"]["comparisons"][0]["p_value"] for t in tests]
    assert [t["evidence"]["comparisons"][0]["p_adjusted"] for t in tests] == pytest.approx(overview.adjust(raw, "holm"))

    doc = {"verdict": "fail", "counts": {"failed": 1, "passed": 1}, "duration": 1.0, "tests": tests[::-1],
           "correction": correction, "interrupted": False}
    text = overview.markdown(doc, tmp_path / "out" / "report.html", tmp_path)
    failed, others = text.index("### Failed"), text.index("### Other tests")
    assert failed < text.index("t.py::test_drop") < others < text.index("t.py::test_ok")
    assert "(out/report.html#t-" in text and "✗ `a − b`: `ci().low` = " in text and "p-values corrected for 2" in text
    assert "paired, 30 pairs" in text and "(adjusted " in text
