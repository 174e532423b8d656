"""Gates: every comparison an audit makes with a statistic is recorded, passed or failed, with its margin."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from cnnaudit import evidence
from cnnaudit.gates import Statistic, higher_is_better, margin
from cnnaudit.records import EvidenceRecorder
from cnnaudit.scores import Scores, compare


def gates_of(block) -> list[dict]:
    recorder = EvidenceRecorder("t", None)
    with evidence.recording(recorder):
        block()
    return recorder.finish()["gates"]


def test_passed_and_failed_gates_are_recorded_with_threshold_and_margin() -> None:
    def audit() -> None:
        mass = Scores([0.2, 0.4, 0.6], "mass_in(tools)")
        assert mass.mean() >= 0.35  # passes by 0.05
        assert not mass.quantile(0.1) > 0.5  # fails by 0.26
        assert 0.7 >= mass.max()  # reflected: max() <= 0.7

    gates = gates_of(audit)
    assert [(g["key"], g["kind"], g["stat"], g["op"], g["value"], g["holds"]) for g in gates] == [
        ("mass_in(tools)", "scores", "mean()", ">=", 0.35, True),
        ("mass_in(tools)", "scores", "quantile(0.1)", ">", 0.5, False),
        ("mass_in(tools)", "scores", "max()", "<=", 0.7, True),
    ]
    assert [g["margin"] for g in gates] == [pytest.approx(0.05), pytest.approx(0.24 - 0.5), pytest.approx(0.1)]
    assert gates[0]["actual"] == pytest.approx(0.4)


def test_each_comparison_of_a_compound_assert_is_recorded_with_its_own_result() -> None:
    a = Scores([0.1, 0.2, 0.3, 0.25], "f", ids=list("abcd"))
    b = Scores([0.1, 0.2, 0.31, 0.25], "m", ids=list("abcd"))

    def audit() -> None:
        gap = compare(a, b)
        assert abs(gap.mean) < 0.0001 or gap.p_value > 0.01  # the first is false, the second true: passes

    gates = gates_of(audit)
    assert [(g["stat"], g["op"], g["holds"]) for g in gates] == [("abs(mean)", "<", False), ("p_value", ">", True)]
    assert all(g["kind"] == "comparison" and g["key"] == "f \u2212 m" for g in gates)


def test_a_gate_made_again_is_recorded_once_and_cnnaudit_own_comparisons_are_not_gates() -> None:
    scores = [Scores([float(k), k + 1.0], f"s{k}") for k in range(3)]

    def audit() -> None:
        for _ in range(3):
            assert scores[0].mean() >= 0.0
        assert all(s.min() < 5 for s in scores)
        repr(scores[1])  # computes statistics and compares them inside cnnaudit

    gates = gates_of(audit)
    assert [(g["key"], g["stat"], g["op"]) for g in gates] == [
        ("s0", "mean()", ">="), ("s0", "min()", "<"), ("s1", "min()", "<"), ("s2", "min()", "<")]


def test_comparisons_with_non_numbers_are_not_gates_and_give_what_a_float_gives() -> None:
    mean = Scores([1.0, 3.0], "s").mean()

    def audit() -> None:
        assert bool((mean < torch.tensor([3.0, 1.0]))[0])
        assert mean == pytest.approx(2.0) and mean != "2"
        assert (mean >= np.array([1.0, 3.0])).tolist() == [True, False]

    assert gates_of(audit) == []


def test_a_statistic_is_a_float_everywhere_else() -> None:
    mean = Scores([1.0, 3.0], "s").mean()
    assert isinstance(mean, float) and mean == 2.0 and hash(mean) == hash(2.0) and repr(mean) == "2.0"
    for copied in (pickle.loads(pickle.dumps(mean)), copy.deepcopy(mean)):
        assert type(copied) is float and copied == 2.0
    assert type(mean - 0.5) is float and type(mean * 2) is float  # arithmetic makes a threshold, not a statistic
    assert isinstance(abs(-mean), Statistic) and abs(-mean).expression == "abs(-mean())"
    # outside a recorded test, comparing records nothing and costs nothing more
    assert evidence.current() is None and mean > 1


def test_margins_and_directions() -> None:
    assert margin(">=", 0.6, 0.5) == pytest.approx(0.1) and margin("<", 0.6, 0.5) == pytest.approx(-0.1)
    assert margin("==", 1.0, 1.0) is None and margin(">", float("inf"), 0.0) is None
    assert higher_is_better([">="]) is True and higher_is_better(["<", "<="]) is False
    assert higher_is_better([">", "<"]) is None and higher_is_better(["=="]) is None and higher_is_better([]) is None


def test_gates_on_scores_from_outside_the_test_name_them() -> None:
    outside = Scores([0.5, 0.7], "from_a_fixture")
    gates = gates_of(lambda: outside.mean() > 0.1)
    assert [(g["key"], g["kind"]) for g in gates] == [("from_a_fixture", "other")]
