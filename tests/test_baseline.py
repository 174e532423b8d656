"""Per-image baselines: saved values and ids read back exactly, paired comparison on shared ids, old files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cnnaudit.baseline import Baseline, save
from cnnaudit.scores import Scores, compare
from cnnaudit.stored import StoredScores, StoredSummary
from cnnaudit.summaries import per_image, summarize

ENVIRONMENT = {"torch": "2.x", "device": "cpu", "gpu": None}


def evidence_of(*scores: Scores) -> dict:
    entries = [{**summarize(s), **per_image(s), "key": s.name, "model": None} for s in scores]
    return {"scores": entries, "environment": ENVIRONMENT}


def test_values_and_ids_are_read_back_exactly_with_each_id_list_stored_once(tmp_path: Path) -> None:
    ids = [f"img{k}" for k in range(5)]
    mass = Scores([0.1, 1 / 3, math.nan, 0.7, 2**-40], "mass_in(tools)", ids=ids)
    face = Scores([0.5, 0.2, 0.1, 0.0, 0.9], "mass_in(face)", ids=ids)
    units = Scores([3.0, 4.0], "activation", unit="unit")
    path = tmp_path / "base.json"
    save(path, [("t.py::test_a", "passed", evidence_of(mass, face, units))])
    raw = json.loads(path.read_text())["tests"]["t.py::test_a"]
    assert raw["ids"] == [ids] and raw["scores"]["mass_in(face)"]["ids"] == 0 and raw["scores"]["activation"]["ids"] is None
    assert raw["scores"]["mass_in(tools)"]["values"][2] is None  # NaN is null in JSON
    lines = path.read_text().splitlines()
    assert sum(line.strip().startswith('"values": [') for line in lines) == 3  # each Scores' values on one line

    stored = Baseline(path).lookup("t.py::test_a", "mass_in(tools)", environment=ENVIRONMENT)
    assert isinstance(stored, StoredScores) and stored.ids == ids and stored.unit == "image"
    np.testing.assert_array_equal(stored.values, mass.values)  # bit for bit, NaN included
    assert stored.mean() == mass.mean() and stored.ci() == mass.ci() and stored.quantile(0.3) == mass.quantile(0.3)
    gap = compare(mass, stored)
    assert gap.paired and gap.n == 4 and gap.unmatched == (0, 0) and gap.mean == 0 and gap.p_value == 1.0


def test_a_candidate_on_partly_new_images_is_paired_on_the_shared_ones(tmp_path: Path) -> None:
    path = tmp_path / "base.json"
    save(path, [("t.py::test_a", "passed", evidence_of(Scores([0.5, 0.6, 0.7], "m", ids=["a", "b", "c"])))])
    stored = Baseline(path).lookup("t.py::test_a", "m", environment=ENVIRONMENT)
    candidate = Scores([0.45, 0.5, 0.9, 0.2], "m", ids=["b", "a", "d", "e"])  # c dropped; d and e are new
    gap = compare(candidate, stored)
    assert gap.paired and gap.n == 2 and gap.unmatched == (2, 1)
    assert gap.mean == pytest.approx(((0.45 - 0.6) + (0.5 - 0.5)) / 2)


def test_a_version_1_baseline_still_loads_as_summaries_that_compare_refuses(tmp_path: Path) -> None:
    summary = {**summarize(Scores([0.2, 0.4], "m")), "model": None}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": "cnnaudit-baseline", "version": 1,
                                "tests": {"t.py::test_a": {"environment": ENVIRONMENT, "scores": {"m": summary}}}}))
    baseline = Baseline(path)
    assert baseline.summary_only == 1
    old = baseline.lookup("t.py::test_a", "m", environment=ENVIRONMENT)
    assert isinstance(old, StoredSummary) and old.mean() == pytest.approx(0.3) and old.ci().low == summary["ci"]["low"]
    with pytest.raises(TypeError, match=r"stores only a summary \(a version-1 baseline\).*re-record it with "
                                        r"--cnnaudit-save-baseline=.*old.json to compare per image"):
        compare(Scores([0.1, 0.3], "m"), old)
    # saving over it keeps the entries this run did not re-measure and writes version 2
    save(path, [("t.py::test_b", "passed", evidence_of(Scores([1.0, 2.0], "n")))])
    again = Baseline(path)
    assert json.loads(path.read_text())["version"] == 2 and again.summary_only == 1
    assert isinstance(again.lookup("t.py::test_b", "n", environment=ENVIRONMENT), StoredScores)


def test_an_unknown_version_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "future.json"
    path.write_text(json.dumps({"format": "cnnaudit-baseline", "version": 9, "tests": {}}))
    with pytest.raises(ValueError, match=r"version 9 baseline; this cnnaudit reads versions 1, 2: re-record it"):
        Baseline(path)
