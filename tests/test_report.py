"""Run results folded from test reports, and the HTML / JSON writers (plain functions, no pytester)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import markupsafe
import numpy as np
import torch
import pytest

from cnnaudit import evidence, report
from cnnaudit.heatmaps import Heatmaps
from cnnaudit.records import EvidenceRecorder
from cnnaudit.results import RunResults
from cnnaudit.scores import Scores, compare


def phase(nodeid: str, when: str, outcome: str, longrepr: object = None, **extra: object) -> pytest.TestReport:
    return pytest.TestReport(nodeid, ("f.py", 0, nodeid), {}, outcome, longrepr, when, duration=0.25, **extra)


def run_test(results: RunResults, nodeid: str, call: str | None, *, setup: str = "passed", teardown: str = "passed",
             longrepr: object = None, evidence: dict | None = None, **extra: object) -> dict:
    """Feed a test's setup, call (``None``: not run) and teardown reports; the last phase that ran
    carries ``longrepr``, ``evidence`` and ``extra`` (e.g. ``wasxfail``)."""
    last = {**({"cnnaudit": evidence} if evidence is not None else {}), **extra}
    if call is None:
        results.add(phase(nodeid, "setup", setup, longrepr, **last))
    else:
        results.add(phase(nodeid, "setup", setup, None))
        results.add(phase(nodeid, "call", call, longrepr, **last))
    entry = results.add(phase(nodeid, "teardown", teardown, "boom in teardown" if teardown == "failed" else None))
    assert entry is not None
    return entry


def test_phases_fold_into_one_outcome_per_test() -> None:
    results = RunResults()
    assert run_test(results, "t::ok", "passed")["outcome"] == "passed"
    failed = run_test(results, "t::bad", "failed", longrepr="Traceback...\nAssertionError: assert 0.3 >= 0.5")
    assert (failed["outcome"], failed["message"]) == ("failed", "AssertionError: assert 0.3 >= 0.5")
    error = run_test(results, "t::setup", None, setup="failed", longrepr="fixture broke")
    assert (error["outcome"], error["phase"], error["message"]) == ("error", "setup", "error in setup: fixture broke")
    both = run_test(results, "t::both", "failed", teardown="failed", longrepr="assert False")
    assert both["outcome"] == "failed" and "boom in teardown" in both["details"]
    skipped = run_test(results, "t::skip", None, setup="skipped", longrepr=("f.py", 3, "Skipped: no GPU"))
    assert (skipped["outcome"], skipped["message"]) == ("skipped", "no GPU")
    xfailed = run_test(results, "t::xf", "skipped", longrepr="AssertionError: biased", wasxfail="known shortcut")
    assert (xfailed["outcome"], xfailed["message"]) == ("xfailed", "xfail: known shortcut — AssertionError: biased")
    assert run_test(results, "t::xp", "passed", wasxfail="")["outcome"] == "xpassed"
    assert results.counts() == {"failed": 2, "error": 1, "xpassed": 1, "xfailed": 1, "passed": 1, "skipped": 1}
    assert results.verdict(finished=True) == "fail"


def test_entries_put_failures_first_then_collection_order() -> None:
    results = RunResults()
    empty = {"models": [], "seeds": []}
    run_test(results, "t::c", "passed", evidence={**empty, "index": 2})
    run_test(results, "t::b", "failed", longrepr="x", evidence={**empty, "index": 3})
    run_test(results, "t::a", "passed", evidence={**empty, "index": 1})
    run_test(results, "t::d", "skipped", longrepr="x", wasxfail="r", evidence={**empty, "index": 0})
    assert [e["nodeid"] for e in results.entries()] == ["t::b", "t::d", "t::a", "t::c"]
    assert results.verdict(finished=False) == "fail"


def test_verdicts_without_failures() -> None:
    results = RunResults()
    assert results.verdict(finished=True) == "no tests"
    run_test(results, "t::ok", "passed")
    assert results.verdict(finished=True) == "pass" and results.verdict(finished=False) == "incomplete"


def test_a_run_that_reported_fewer_tests_than_it_collected_is_incomplete() -> None:
    results = RunResults()
    results.collected = 2
    run_test(results, "t::ok", "passed")
    assert not results.complete() and results.verdict(finished=True) == "incomplete"
    run_test(results, "t::also", "passed")
    assert results.complete() and results.verdict(finished=True) == "pass"


def test_a_test_the_run_stopped_during_leaves_it_incomplete() -> None:
    results = RunResults()
    run_test(results, "t::ok", "passed")
    results.add(SimpleNamespace(nodeid="t::stuck", when="setup", outcome="passed", passed=True, failed=False,
                                skipped=False, duration=0.1, longrepr=None))
    assert not results.complete() and [e["nodeid"] for e in results.finished] == ["t::ok"]
    assert results.verdict(finished=True) == "incomplete"


def test_models_and_seeds_are_merged_over_tests() -> None:
    results = RunResults()
    model = {"class": "Net", "parameters": 10, "sha256": "ab"}
    run_test(results, "t::1", "passed", evidence={"index": 0, "models": [model], "seeds": [0]})
    run_test(results, "t::2", "passed", evidence={"index": 1, "models": [model], "seeds": [0, 7]})
    assert results.models() == [{**model, "tests": 2}] and results.seeds() == [0, 7]


# ---- documents and writers ---------------------------------------------------------------------------
def recorded(tmp_path: Path, nodeid: str, note: str = "", n_images: int = 1) -> dict:
    recorder = EvidenceRecorder(nodeid, tmp_path)
    with evidence.recording(recorder):
        mass = Scores([0.2, 0.4, 0.9, np.nan], "mass_in(tools)")
        assert not mass.mean() >= 0.6  # a failed gate (0.5 < 0.6), recorded
    for i in range(n_images):
        recorder.image(f"image {i}", np.random.default_rng(i).random((40, 60, 3)), caption="c")
    if note:
        recorder.note(note)
    return recorder.finish(lambda key: {"mean": 0.45})


def finished_document(results: RunResults, image_dir: Path) -> dict:
    """The report document of a finished run of ``results`` on a CPU-only machine."""
    environment = {"cnnaudit": "0", "python": "3", "platform": "p", "torch": "2", "cuda": None,
                   "cuda_available": False, "gpus": [], "device": "cpu"}
    return report.document(results, environment=environment, interrupted=False, in_progress=False,
                           image_dir=str(image_dir), baseline=None, started=0.0, finished=1.0)


def make_doc(tmp_path: Path, tests: list[tuple[str, str, str, int]]) -> dict:
    results = RunResults()
    for index, (nodeid, outcome, note, n_images) in enumerate(tests):
        ev = recorded(tmp_path, nodeid, note, n_images)
        ev["index"] = index
        run_test(results, nodeid, outcome, longrepr=f"AssertionError: {note}", evidence=ev)
    environment = {"cnnaudit": "0", "python": "3", "platform": "p", "torch": "2", "cuda": None,
                   "cuda_available": False, "gpus": [], "device": "cpu"}
    return report.document(results, environment=environment, interrupted=False, in_progress=False,
                           image_dir=str(tmp_path), baseline=None, started=0.0, finished=1.5)


def test_html_escapes_test_ids_and_notes_and_loads_nothing_from_the_network(tmp_path: Path) -> None:
    evil = "<script>document.title='pwned'</script>"
    doc = make_doc(tmp_path, [(f"t.py::test[{evil}]", "failed", f"note {evil}", 1), ("t.py::ok", "passed", "", 1)])
    out = tmp_path / "out" / "report.html"
    stats = report.write_html(out, doc)
    text = out.read_text()
    assert text.count("<script") == 1  # only the report's own script
    assert str(markupsafe.escape(evil)) in text and evil not in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing loaded from the network
    assert "default-src 'none'" in text
    assert stats == {"bytes": out.stat().st_size, "images": 2, "linked": 0}
    assert text.index("t.py::test[") < text.index("t.py::ok")  # the failure comes first
    assert text.count('src="data:image/jpeg;base64,') == 2
    assert f'href="../{doc["tests"][0]["evidence"]["images"][0]["file"]}"' in text  # full size: sibling file
    assert "mean() &gt;= 0.6000" in text  # the failed gate, with the threshold
    assert "+0.050" in text  # the delta to the baseline mean 0.45 (mean 0.5)


def test_thumbnails_past_the_budget_are_linked_failures_first(tmp_path: Path) -> None:
    doc = make_doc(tmp_path, [("t::a", "passed", "", 3), ("t::b", "failed", "x", 3)])
    sizes = [4 * ((i["thumb_bytes"] + 2) // 3) + 23 for e in doc["tests"] for i in report.all_images(e["evidence"])]
    inline, linked = report.plan_inlining(doc["tests"], budget=sum(sizes[:4]))
    failed_ids = [i["id"] for i in report.all_images(doc["tests"][0]["evidence"])]
    assert doc["tests"][0]["nodeid"] == "t::b" and set(failed_ids) <= inline and (len(inline), linked) == (4, 2)
    out = tmp_path / "r.html"
    stats = report.write_html(out, doc, budget=sum(sizes[:4]))
    text = out.read_text()
    assert stats["linked"] == 2 and "reached the size budget" in text
    assert text.count('src="data:image/jpeg') == 4 and len(re.findall(r'src="\./[0-9a-f]+-\d+(\.t)?\.jpg"', text)) == 2


def test_json_holds_the_document_with_a_relative_image_folder(tmp_path: Path) -> None:
    doc = make_doc(tmp_path, [("t::a", "failed", "x", 1)])
    out = tmp_path / "sub" / "r.json"
    report.write_json(out, doc)
    loaded = json.loads(out.read_text())
    assert loaded["images_dir"] == ".." and loaded["verdict"] == "fail" and loaded["counts"]["failed"] == 1
    assert loaded["tests"][0]["evidence"]["scores"][0]["key"] == "mass_in(tools)"


def test_comparisons_appear_in_the_html_and_the_json_escaped(tmp_path: Path) -> None:
    evil = "<b onmouseover=alert(1)>f</b>"
    recorder = EvidenceRecorder("t.py::test_gap", None)
    with evidence.recording(recorder):
        gap = compare(Scores([0.1, 0.2, 0.3, 0.25, 0.15, 0.05], evil), Scores([0.6, 0.7, 0.5, 0.65, 0.55, 0.45], "m"))
        compare(Scores([0.4, 0.5], "x", ids=["i", "j"]), Scores([0.3, 0.1], "y", ids=["j", "i"]))
        assert not gap.p_value > 0.01  # what a failed `assert gap.p_value > 0.01` records
    results = RunResults()
    run_test(results, "t.py::test_gap", "failed", longrepr="AssertionError", evidence=recorder.finish())
    environment = {"cnnaudit": "0", "python": "3", "platform": "p", "torch": "2", "cuda": None,
                   "cuda_available": False, "gpus": [], "device": "cpu"}
    doc = report.document(results, environment=environment, interrupted=False, in_progress=False, image_dir=None,
                          baseline=None, started=0.0, finished=1.0)
    report.write_json(tmp_path / "r.json", doc)
    unpaired, paired = json.loads((tmp_path / "r.json").read_text())["tests"][0]["evidence"]["comparisons"]
    assert unpaired["key"] == f"{evil} \u2212 m" and unpaired["paired"] is False
    assert (unpaired["a"]["n"], unpaired["b"]["n"]) == (6, 6) and unpaired["mean"] == pytest.approx(0.175 - 0.575)
    assert unpaired["p_value"] == gap.p_value and unpaired["ci"]["low"] == gap.ci().low
    assert unpaired["thresholds"] == [{"stat": "p_value", "op": ">", "value": 0.01, "actual": gap.p_value, "holds": False,
                                       "margin": pytest.approx(gap.p_value - 0.01)}]
    assert paired["paired"] is True and paired["mean"] == pytest.approx(((0.4 - 0.1) + (0.5 - 0.3)) / 2)

    report.write_html(tmp_path / "r.html", doc)
    text = (tmp_path / "r.html").read_text()
    # in the summary table's key gate and in the comparisons table
    assert evil not in text and text.count(f"<code>{markupsafe.escape(evil)} \u2212 m</code>") == 2
    row = text[text.index('<tr class="diff bad">'):]
    gates = row[row.index("</tr>"):]
    gates = gates[: gates.index("</tr>", 5)]  # the row under it lists the comparison's gates
    row = row[: row.index("</tr>")]
    low, high = gap.ci().low, gap.ci().high
    assert f"<b>\u2212{report._num(0.4)}</b>" in row  # mean difference 0.175 - 0.575, signed
    assert f'95% <span class="nw">[{report._signed(low)}, {report._signed(high)}]</span>' in row and "unpaired, 6 vs 6" in row
    assert f"<td>{report._num(gap.p_value)}</td>" in row and "✗ <code>p_value &gt; 0.0100</code>" in gates
    assert "paired, 2 pairs" in text and '<section class="card comparisons gate-failed">' in text
    assert f"{markupsafe.escape(evil.lower())} \u2212 m" in text  # in the search text of the test


def test_atomic_open_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with report.atomic_open(target) as handle:
            handle.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.html"]
    with report.atomic_open(target) as handle:
        handle.write("new")
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_histogram_geometry_places_markers_on_the_value_axis() -> None:
    summary = {
        "histogram": {"low": 0.0, "high": 2.0, "counts": [1, 4, 0, 2]},
        "thresholds": [{"stat": "mean()", "op": ">=", "value": 1.5, "actual": 0.8}],
        "mean": 0.8,
        "ci": {"low": 0.5, "high": 1.0, "level": 0.95},
        "baseline": {"mean": 1.0},
    }
    fig = report.histogram_figure(summary, width=200, height=54)
    assert [b["h"] for b in fig["bars"]] == [12.5, 50.0, 0.0, 25.0]  # count / max count * (height - 4)
    assert [b["x"] for b in fig["bars"]] == [0, 50, 100, 150]
    assert {m["kind"]: m["x"] for m in fig["marks"]} == {"threshold": 150.0, "mean": 80.0, "baseline": 100.0}
    assert fig["band"] == {"x0": 50.0, "x1": 100.0}


def test_small_thumbnails_are_shown_enlarged_by_an_integer_factor() -> None:
    assert report.shown_size({"thumb_width": 32, "thumb_height": 16}) == (128, 64)
    assert report.shown_size({"thumb_width": 128, "thumb_height": 96}) == (128, 96)


def test_strings_are_made_safe_for_each_output():
    from cnnaudit.safe_text import digest, url_path, xml_text

    assert xml_text("a\x00b\x1bc\udcff\td\U0001f600") == "a\\x00b\\x1bc\\udcff\td\U0001f600"  # tab and emoji are valid XML
    assert url_path("my#report?_files/run-1/a b%.jpg") == "my%23report%3F_files/run-1/a%20b%25.jpg"
    assert digest("x\udcff") != digest("x\udcfe") and len(digest("x\udcff")) == 12
    assert digest("test_a.py::test_b") == hashlib.sha1(b"test_a.py::test_b").hexdigest()[:12]  # ids as before


def test_curve_geometry_puts_layers_in_cascade_order_on_a_correlation_axis() -> None:
    summary = {
        "curve": [{"id": "classifier", "value": 1.0}, {"id": "features.block4.conv2", "value": 0.0},
                  {"id": "b", "value": None}, {"id": "a", "value": -1.0}],
        "thresholds": [{"stat": "median()", "op": "<=", "value": 0.5, "actual": 0.0, "holds": True}],
    }
    fig = report.curve_figure(summary, height=110)
    # y: 1 at the top (6 px), -1 at the bottom (110 px); x: 44 px per layer from 60 px, at least 240 px wide
    assert fig["width"] == 248 and [p["x"] for p in fig["points"]] == [60.0, 118.67, 177.33, 236.0]
    assert [p["y"] for p in fig["points"]] == [6.0, 58.0, None, 110.0]
    assert fig["segments"] == ["60.0,6.0 118.67,58.0", "236.0,110.0"]  # an undefined step breaks the line
    assert [(t["y"], t["label"]) for t in fig["thresholds"]] == [(32.0, "threshold median() <= 0.5")]
    assert [p["label"] for p in fig["points"]][:2] == ["classifier", "….block4.conv2"]  # long names keep their end
    assert [p["step"] for p in fig["points"]] == [1, 2, 3, 4]
    assert report.curve_figure({"curve": None, "thresholds": []}) is None
    wide = report.curve_figure({"curve": [{"id": str(k), "value": 0.5} for k in range(40)], "thresholds": []})
    assert wide["width"] == report.CURVE_WIDTH  # deep networks: capped, the points closer together


def test_a_sanity_check_is_drawn_as_a_curve_with_its_cascade_and_dead_units_are_named(tmp_path: Path) -> None:
    import torch

    from cnnaudit import Subject, metrics

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    subject = Subject(model, layer="2", device="cpu")

    class Visualizations:
        images = torch.full((3, 3, 16, 16), 0.5)
        channels = [0, 1, 2]
        achieved = np.array([1.0, 0.0, 1.0])
        layer = "features.relu1"

    recorder = EvidenceRecorder("t.py::test_sanity", tmp_path)
    with evidence.recording(recorder):
        check = metrics.sanity_check(subject, torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2)), target=0)
        assert check.median() <= 2.0
        recorder.observe(Visualizations())
    results = RunResults()
    run_test(results, "t.py::test_sanity", "passed", evidence=recorder.finish())
    doc = finished_document(results, tmp_path)
    stats = report.write_html(tmp_path / "r.html", doc)
    text = (tmp_path / "r.html").read_text()
    card = text[text.index('<section class="card scores'):]
    card = card[: card.index("</section>")]
    assert '<svg class="curve"' in card and '<svg class="hist"' not in card  # a curve, not a histogram of 3 values
    fig = report.curve_figure(doc["tests"][0]["evidence"]["scores"][0])
    assert card.count('<circle class="point"') == 3 and f'<polyline class="line" points="{fig["segments"][0]}">' in card
    assert [p["id"] for p in fig["points"]] == ["6", "2", "0"]  # from the output: the cascade order
    assert f"step 1, 6 randomised: {report._num(check.values[0])}" in card
    assert '<line class="threshold" ' in card and "threshold median() &lt;= 2" in card  # the gate, held
    # the cascade strip: the original and 3 randomised overlays; the rest of the page has 3 overlays and a grid
    assert card.count('<a class="shot"') == 4 and '<span class="label">cascade</span>' in card
    assert stats["images"] == 4 + 3 + 1
    assert "3 channels</span>, <span class=\"bad\"" in text and ">1 dead: 1</span>" in text


def test_search_matches_what_a_reviewer_types_not_the_objects_pytest_printed() -> None:
    message = (
        "xfail: the biased model decides by the face — AssertionError: assert 0.43 >= 0.85\n"
        " +  where 0.43 = Interval(low=0.43, high=0.57, level=0.95).low\n"
        " +    where Scores('correct', n=200) = correct(Subject(PeopleCNN, layer='features', device='cpu'), "
        "ImageSet(n=200, size=None, labels=True))\n"
        "E  and tensor([[0.1, 0.2], [0.3, 0.4]]) != <function helper at 0x7f12ab34cd00> or Subject(Net(\n  (0): Conv2d(3, 4)\n))"
    )
    entry = {"nodeid": "test_decisions.py::test_accuracy_is_high[biased]", "outcome": "xfailed", "message": message,
             "details": "subject = Subject(PeopleCNN, layer='features')\n...",
             "evidence": {"scores": [{"key": "correct[pairing=counter]"}], "comparisons": [{"key": "mass_in(face) \u2212 x"}],
                          "notes": ["looked at Subject(...) by hand"]}}
    text = report.search_text(entry)
    assert text == ("test_decisions.py::test_accuracy_is_high[biased] xfailed xfail: the biased model decides by the face "
                    "— assertionerror: assert 0.43 >= 0.85\ne  and … !=  or … correct[pairing=counter] mass_in(face) \u2212 x "
                    "looked at subject(...) by hand")
    for absent in ("peoplecnn", "imageset", "tensor(", "interval(", "0x7f12", "conv2d", "device="):
        assert absent not in text, absent
    assert report.without_reprs("mass_in(tools) = 0.2, pointing_game(face) fell; ValueError: bad") == (
        "mass_in(tools) = 0.2, pointing_game(face) fell; ValueError: bad")  # Scores keys and error names stay


def test_a_token_grid_layers_layout_is_shown_with_its_heatmaps(tmp_path: Path) -> None:
    recorder = EvidenceRecorder("t.py::test_vit", None)
    with evidence.recording(recorder):
        Heatmaps(torch.rand(2, 4, 4), image_size=(64, 64), method="gradcam", layer="encoder.ln_1", layout="tokens 4x4 +1")
    results = RunResults()
    run_test(results, "t.py::test_vit", "passed", evidence=recorder.finish())
    doc = finished_document(results, tmp_path)
    assert doc["tests"][0]["evidence"]["heatmaps"][0]["layout"] == "tokens 4x4 +1"
    out = tmp_path / "r.html"
    report.write_html(out, doc)
    assert re.search(r"gradcam · encoder\.ln_1 <span[^>]*>\(tokens 4x4 \+1\)</span>", out.read_text())
