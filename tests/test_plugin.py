"""The pytest plugin, driven with pytester: options, fixtures, capture, ordering, xdist, baselines, robustness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

# pytester's in-process runs drop the modules they import, and C extensions (numpy.fft, scipy's) cannot
# be loaded twice in one process: everything the inner runs use is imported here.
import jinja2  # noqa: F401
import PIL.Image  # noqa: F401
import pytest
import scipy.ndimage  # noqa: F401
import torch

import cnnaudit.metrics  # noqa: F401
import cnnaudit.render  # noqa: F401
import cnnaudit.subject  # noqa: F401
from cnnaudit import evidence
from cnnaudit.baseline import Baseline, BaselineLookup, BaselineMissing, BaselineRecordingWarning, save
from cnnaudit.safe_text import digest
from cnnaudit.stored import StoredScores
from cnnaudit.environment import device_name, worker_index
from cnnaudit.records import EvidenceRecorder
from cnnaudit.summaries import QUANTILES
from cnnaudit.scores import Scores

AUDIT = """
import pytest, torch
from torch import nn
import cnnaudit as ca

BOX = ca.Regions([(0, 0, 16, 16)] * 6, image_size=(32, 32), name="box")


@pytest.fixture(scope="session")
def subject():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    return ca.Subject(model, layer="3", classes=["a", "b"], device="cpu")


@pytest.fixture(scope="session")
def images():
    return torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def shared_heatmaps(subject, images):
    return subject.gradcam(images, target="a")  # shared by tests: evidence of none


@pytest.fixture
def own_heatmaps(subject, images):
    return subject.gradcam(images[:2], target="b")  # built for one test: its evidence


def test_passes(shared_heatmaps):
    assert shared_heatmaps.mass_in(BOX).mean() >= 0.0


def test_uses_a_fixture(own_heatmaps):
    pass


def test_fails(subject, images, evidence):
    evidence.note("checked the <b>box</b>")
    mass = subject.gradcam(images, target="a").mass_in(BOX)
    assert mass.mean() >= 0.9
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def by_name(doc: dict) -> dict[str, dict]:
    return {t["nodeid"].split("::")[-1]: t for t in doc["tests"]}


# ---- options, header, device --------------------------------------------------------------------------
def test_ini_keys_set_the_outputs_and_the_command_line_wins(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ncnnaudit_report = from_ini/report.html\ncnnaudit_json = from_ini/run.json\n")
    pytester.makepyfile(test_a="def test_ok():\n    pass\n")
    run(pytester).assert_outcomes(passed=1)
    assert (pytester.path / "from_ini/report.html").is_file() and (pytester.path / "from_ini/run.json").is_file()
    run(pytester, "--cnnaudit-report=cli.html").assert_outcomes(passed=1)
    assert (pytester.path / "cli.html").is_file() and (pytester.path / "cli_files").is_dir()
    assert load(pytester.path / "from_ini/run.json")["images_dir"].startswith("../cli_files/run-")  # json from ini, images next to the HTML


def test_collecting_only_leaves_the_last_report_alone(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ncnnaudit_report = report.html\n")
    pytester.makepyfile(test_a="def test_ok():\n    pass\n")
    run(pytester).assert_outcomes(passed=1)
    before = (pytester.path / "report.html").read_text()
    images = sorted(p.relative_to(pytester.path) for p in (pytester.path / "report_files").rglob("*"))
    for option in ("--collect-only", "--fixtures", "--help"):
        assert run(pytester, option).ret == pytest.ExitCode.OK
    assert (pytester.path / "report.html").read_text() == before
    assert sorted(p.relative_to(pytester.path) for p in (pytester.path / "report_files").rglob("*")) == images


def test_the_per_test_hooks_are_registered_only_when_the_run_records(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="""
def test_which(request):
    manager = request.config.pluginmanager
    print("PLUGINS", manager.has_plugin("cnnaudit-recording"), manager.has_plugin("cnnaudit-collector"))
""")
    run(pytester, "-s").stdout.fnmatch_lines(["*PLUGINS False False*"])  # plain pytest: no per-test hooks at all
    run(pytester, "-s", "--cnnaudit-json=r.json").stdout.fnmatch_lines(["*PLUGINS True True*"])
    workers = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", "-n", "1", "--cnnaudit-json=w.json")
    workers.assert_outcomes(passed=1)
    assert load(pytester.path / "w.json")["tests"][0]["evidence"] is not None  # the worker recorded


def test_options_are_listed_in_one_group(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--help")
    text = result.stdout.str()
    group = text[text.index("cnnaudit (audits of convolutional image models)"):]
    for option in ("--cnnaudit-report=PATH", "--cnnaudit-json=PATH", "--cnnaudit-device=DEVICE",
                   "--cnnaudit-baseline=PATH", "--cnnaudit-save-baseline=PATH"):
        assert option in group
    for key in ("cnnaudit_report", "cnnaudit_json", "cnnaudit_device", "cnnaudit_baseline", "cnnaudit_save_baseline"):
        assert f"{key} (string)" in text


def test_header_names_torch_cuda_gpu_and_device(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_ok():\n    pass\n")
    result = run(pytester, "--cnnaudit-device=cpu")
    result.stdout.fnmatch_lines([f"cnnaudit *: torch {torch.__version__} ({torch.get_num_threads()} threads), CUDA *, GPU *, device cpu"])


def test_a_bad_device_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_ok():\n    pass\n")
    result = run(pytester, "--cnnaudit-device=gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--cnnaudit-device='gpu' is not a device; use auto, cpu, cuda or cuda:N*"])


def test_cnnaudit_device_fixture(pytester: pytest.Pytester) -> None:
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    pytester.makepyfile(test_a=f"def test_device(cnnaudit_device):\n    assert str(cnnaudit_device) == {expected!r}\n")
    run(pytester).assert_outcomes(passed=1)
    pytester.makepyfile(test_a="def test_device(cnnaudit_device):\n    assert str(cnnaudit_device) == 'cpu'\n")
    run(pytester, "--cnnaudit-device=cpu").assert_outcomes(passed=1)
    if not torch.cuda.is_available():
        result = run(pytester, "--cnnaudit-device=cuda")
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*--cnnaudit-device=cuda but CUDA is not available*--cnnaudit-device=cpu*"])


def test_device_resolution_spreads_xdist_workers_over_gpus() -> None:
    assert [worker_index(w) for w in (None, "master", "gw0", "gw5")] == [0, 0, 0, 5]
    assert device_name("auto", worker=3, cuda_available=False, device_count=0) == "cpu"
    assert [device_name("auto", worker=w, cuda_available=True, device_count=2) for w in range(4)] == [
        "cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert device_name("cuda", worker=5, cuda_available=True, device_count=4) == "cuda:1"
    assert device_name("cuda:1", worker=0, cuda_available=True, device_count=2) == "cuda:1"
    assert device_name("cpu", worker=0, cuda_available=True, device_count=2) == "cpu"
    with pytest.raises(ValueError, match=r"torch sees 2 GPU\(s\) \(cuda:0..cuda:1\)"):
        device_name("cuda:2", worker=0, cuda_available=True, device_count=2)
    with pytest.raises(ValueError, match="CUDA is not available"):
        device_name("cuda", worker=0, cuda_available=False, device_count=0)


# ---- capture and report content ---------------------------------------------------------------------
def test_evidence_is_captured_per_test_and_failures_come_first(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    result = run(pytester, "--cnnaudit-json=out/run.json", "--cnnaudit-report=out/report.html")
    result.assert_outcomes(passed=2, failed=1)
    doc = load(pytester.path / "out/run.json")
    assert [t["nodeid"].split("::")[-1] for t in doc["tests"]] == ["test_fails", "test_passes", "test_uses_a_fixture"]
    assert (doc["verdict"], doc["counts"]["failed"], doc["counts"]["passed"]) == ("fail", 1, 2)
    tests = by_name(doc)
    failed = tests["test_fails"]
    assert failed["message"].startswith("AssertionError: assert ") and ">= 0.9" in failed["message"]
    ev = failed["evidence"]
    (heatmaps,) = ev["heatmaps"]
    assert (heatmaps["method"], heatmaps["n"], len(heatmaps["images"])) == ("gradcam", 6, 6)
    (mass,) = ev["scores"]
    assert (mass["key"], mass["n"], mass["n_undefined"]) == ("mass_in(box)", 6, 0)
    assert mass["ci"]["low"] <= mass["mean"] <= mass["ci"]["high"]
    assert mass["thresholds"] == [
        {"stat": "mean()", "op": ">=", "value": 0.9, "actual": mass["mean"], "holds": False, "margin": mass["mean"] - 0.9}
    ]
    assert len(mass["images"]["lowest"]) == 3 and len(mass["images"]["highest"]) == 3
    assert ev["notes"] == ["checked the <b>box</b>"]
    assert [(m["class"], m["parameters"]) for m in ev["models"]] == [("Sequential", 270)]
    assert doc["models"][0]["tests"] == 3  # every test used the subject (test_passes through its Scores)
    # the session fixture's heatmaps are nobody's evidence; the function fixture's are its test's
    assert tests["test_passes"]["evidence"]["heatmaps"] == [] and len(tests["test_passes"]["evidence"]["scores"]) == 1
    assert tests["test_uses_a_fixture"]["evidence"]["heatmaps"][0]["n"] == 2
    files = {p.name for p in (pytester.path / "out" / doc["images_dir"]).iterdir()}
    for image in heatmaps["images"] + mass["images"]["lowest"]:
        assert image["file"] in files and image["thumb"] in files
    html = (pytester.path / "out/report.html").read_text()
    assert "checked the &lt;b&gt;box&lt;/b&gt;" in html and html.index("test_fails") < html.index("test_passes")
    result.stdout.fnmatch_lines(["cnnaudit: HTML report *report.html (* MB, 20 images)"])


def test_test_ids_and_notes_are_escaped(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="""
import pytest

@pytest.mark.parametrize("case", ["<script>alert(1)</script>"])
def test_case(case, evidence):
    evidence.note("<img src=x onerror=alert(2)>")
    assert False, "<script>alert(3)</script>"
""")
    run(pytester, "--cnnaudit-report=r.html").assert_outcomes(failed=1)
    html = (pytester.path / "r.html").read_text()
    assert html.count("<script") == 1 and "<img src=x" not in html
    assert "test_case[&lt;script&gt;alert(1)&lt;/script&gt;]" in html and "&lt;img src=x onerror=alert(2)&gt;" in html


def test_evidence_fixture_attaches_images_and_notes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="""
import numpy as np

def test_attach(evidence):
    evidence.image("gradient", np.linspace(0, 1, 48).reshape(4, 12), caption="a ramp")
    evidence.note("looked at it")
""")
    run(pytester, "--cnnaudit-json=r.json").assert_outcomes(passed=1)
    ev = load(pytester.path / "r.json")["tests"][0]["evidence"]
    assert ev["notes"] == ["looked at it"]
    assert [(i["title"], i["caption"], i["width"], i["height"]) for i in ev["images"]] == [("gradient", "a ramp", 12, 4)]
    assert (pytester.path / load(pytester.path / "r.json")["images_dir"] / ev["images"][0]["file"]).is_file()


def test_nothing_is_recorded_when_no_output_is_asked_for(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="""
import numpy as np
from cnnaudit import evidence as context

def test_quiet(evidence):
    assert context.current() is None
    evidence.image("x", np.zeros((2, 2)))  # accepted, written nowhere
    evidence.note("n")
""")
    run(pytester).assert_outcomes(passed=1)
    assert sorted(p.name for p in pytester.path.iterdir() if not p.name.startswith(".")) == ["test_x.py"]


def test_metric_values_are_junit_properties(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    run(pytester, "--junitxml=junit.xml").assert_outcomes(passed=2, failed=1)
    cases = {c.get("name"): c for c in ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["test_fails"].iter("property")}
    assert set(props) == {f"cnnaudit.mass_in(box).{k}" for k in ("n", "n_undefined", "mean", "ci_low", "ci_high")} | {
        "cnnaudit.gate.1"}
    mean = float(props["cnnaudit.mass_in(box).mean"])
    assert props["cnnaudit.mass_in(box).n"] == "6" and 0.0 <= mean < 0.9
    assert props["cnnaudit.gate.1"] == f"failed: mass_in(box) mean() >= 0.9 with {mean:.6g}, margin {mean - 0.9:+.6g}"
    passed = {p.get("name"): p.get("value") for p in cases["test_passes"].iter("property")}
    assert passed["cnnaudit.gate.1"].startswith("passed: mass_in(box) mean() >= 0 with ")  # passed gates too


# ---- xdist ------------------------------------------------------------------------------------------
def without_timing(doc: dict) -> dict:
    doc = {k: v for k, v in doc.items() if k not in ("started", "duration")}
    doc["tests"] = [{k: v for k, v in t.items() if k != "duration"} for t in doc["tests"]]
    return doc


def test_xdist_run_reports_the_same_as_a_serial_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    options = ("-p", "no:cacheprovider")
    serial = pytester.runpytest_subprocess(*options, "--cnnaudit-json=serial.json", "--cnnaudit-report=serial.html")
    parallel = pytester.runpytest_subprocess(
        *options, "-n", "2", "--cnnaudit-json=parallel.json", "--cnnaudit-report=parallel.html"
    )
    serial.assert_outcomes(passed=2, failed=1)
    parallel.assert_outcomes(passed=2, failed=1)
    a, b = load(pytester.path / "serial.json"), load(pytester.path / "parallel.json")
    serial_images, parallel_images = pytester.path / a["images_dir"], pytester.path / b["images_dir"]
    assert serial_images.parent.name == "serial_files" and parallel_images.parent.name == "parallel_files"
    a["images_dir"] = b["images_dir"] = None
    assert without_timing(a) == without_timing(b)
    images = sorted(p.name for p in parallel_images.iterdir())
    assert images == sorted(p.name for p in serial_images.iterdir()) and len(images) == 20  # small images: one file each
    for name in images:
        assert (parallel_images / name).read_bytes() == (serial_images / name).read_bytes()


# ---- robustness -------------------------------------------------------------------------------------
RUN_OF_THREE = """
import pytest
from cnnaudit.scores import Scores

def test_one():
    Scores([0.5, 0.6], "first")

def test_two():
    {second}

def test_three():
    pass
"""


def test_stopping_at_the_first_failure_leaves_a_report_of_what_ran(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_run=RUN_OF_THREE.format(second="assert False"))
    run(pytester, "-x", "--cnnaudit-json=r.json", "--cnnaudit-report=r.html").assert_outcomes(passed=1, failed=1)
    doc = load(pytester.path / "r.json")
    assert [t["nodeid"].split("::")[-1] for t in doc["tests"]] == ["test_two", "test_one"]
    assert (doc["verdict"], doc["in_progress"]) == ("fail", False) and (pytester.path / "r.html").is_file()


def test_an_interrupted_run_leaves_a_report_of_what_finished(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_run=RUN_OF_THREE.format(second="raise KeyboardInterrupt"))
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--cnnaudit-json=r.json", "--cnnaudit-report=r.html", no_reraise_ctrlc=True
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    doc = load(pytester.path / "r.json")
    assert [t["nodeid"].split("::")[-1] for t in doc["tests"]] == ["test_one"]
    assert (doc["verdict"], doc["interrupted"], doc["collected"], doc["reported"]) == ("incomplete", True, 3, 1)
    assert "The run did not finish (it was interrupted): 1 of 3 collected tests reported" in (pytester.path / "r.html").read_text()


def test_sigterm_writes_a_checkpoint_of_what_finished_before_the_process_ends(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_run=RUN_OF_THREE.format(second="import os, signal; os.kill(os.getpid(), signal.SIGTERM)"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--cnnaudit-json=r.json", "--cnnaudit-report=r.html")
    assert result.ret == -15  # still ended by the signal
    doc = load(pytester.path / "r.json")  # no 30-s checkpoint was due: this one was written on SIGTERM
    assert [t["nodeid"].split("::")[-1] for t in doc["tests"]] == ["test_one"]
    assert (doc["verdict"], doc["interrupted"], doc["in_progress"]) == ("incomplete", True, True)


def test_pytest_exit_in_the_middle_leaves_an_incomplete_verdict(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_run=RUN_OF_THREE.format(second="pytest.exit('stop here')"))
    result = run(pytester, "--cnnaudit-json=r.json", "--cnnaudit-report=r.html")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    doc = load(pytester.path / "r.json")
    assert (doc["verdict"], doc["interrupted"], doc["collected"]) == ("incomplete", True, 3)
    assert 'data-verdict="incomplete"' in (pytester.path / "r.html").read_text()


def test_a_crashed_xdist_worker_is_a_failure_in_every_output(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_run="import os\n\ndef test_ok():\n    pass\n\ndef test_crash():\n    os._exit(1)\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--cnnaudit-json=r.json", "--cnnaudit-report=r.html")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    doc = load(pytester.path / "r.json")
    outcomes = {t["nodeid"].split("::")[-1]: (t["outcome"], t["phase"]) for t in doc["tests"]}
    assert outcomes["test_crash"] == ("failed", "crash") and outcomes["test_ok"][0] == "passed"
    assert (doc["verdict"], doc["collected"], doc["reported"]) == ("fail", 2, 2)


def test_a_killed_run_leaves_the_last_checkpoint(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_run=RUN_OF_THREE.format(second="import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--cnnaudit-json=r.json", "--cnnaudit-report=r.html")
    assert result.ret == -9
    doc = load(pytester.path / "r.json")
    assert [t["nodeid"].split("::")[-1] for t in doc["tests"]] == ["test_one"] and doc["in_progress"] is True
    assert "written while the run was still going" in (pytester.path / "r.html").read_text()
    assert not [p for p in pytester.path.iterdir() if p.name.endswith(".tmp")]


IMAGE_RUN = """
import os, signal
import numpy as np

def test_image(evidence):
    evidence.image("square", np.full((16, 16, 3), {value}, np.uint8))
    if {kill}:
        os.kill(os.getpid(), signal.SIGKILL)
"""


def linked_files(html: Path) -> list[Path]:
    """The image files a report's HTML links to (full-size images; thumbnails when not inlined)."""
    import re

    names = re.findall(r'"(r_files/[^"#?]+\.jpg)"', html.read_text())
    assert names, "the report links no image"
    return [html.parent / name for name in names]


def test_a_killed_rerun_leaves_the_previous_report_whole(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_img=IMAGE_RUN.format(value=200, kill=False))
    run(pytester, "--cnnaudit-report=r.html").assert_outcomes(passed=1)
    html = (pytester.path / "r.html").read_text()
    old = {path: path.read_bytes() for path in linked_files(pytester.path / "r.html")}

    pytester.makepyfile(test_img=IMAGE_RUN.format(value=30, kill=True))  # same file names, other pixels
    assert pytester.runpytest_subprocess("-p", "no:cacheprovider", "--cnnaudit-report=r.html").ret == -9
    assert (pytester.path / "r.html").read_text() == html
    assert {path: path.read_bytes() for path in old} == old  # every image of the old report, unchanged

    pytester.makepyfile(test_img=IMAGE_RUN.format(value=30, kill=False))
    run(pytester, "--cnnaudit-report=r.html").assert_outcomes(passed=1)
    runs = [p for p in (pytester.path / "r_files").iterdir() if p.is_dir()]
    assert len(runs) == 1  # the old report's and the killed run's images went once the new report replaced them
    assert all(path.parent == runs[0] and path.is_file() for path in linked_files(pytester.path / "r.html"))


def test_a_second_run_on_the_same_report_path_refuses_to_start(pytester: pytest.Pytester) -> None:
    from cnnaudit.report.folder import ReportFolder

    pytester.makepyfile(test_img=IMAGE_RUN.format(value=200, kill=False))
    run(pytester, "--cnnaudit-report=r.html").assert_outcomes(passed=1)
    html = (pytester.path / "r.html").read_text()
    holder = ReportFolder(pytester.path / "r_files")  # stands for a run still going
    holder.claim()
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--cnnaudit-json=r.json", "--cnnaudit-report=r.html")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*another cnnaudit run (process {os.getpid()}) is writing a report with images in *r_files*"])
        assert (pytester.path / "r.html").read_text() == html and not (pytester.path / "r.json").exists()
    finally:
        holder.release()
    run(pytester, "--cnnaudit-report=r.html").assert_outcomes(passed=1)  # free again once the holder ends


ODD_NAMES = """
import numpy as np
from cnnaudit.scores import Scores

def test_odd(evidence):
    evidence.image("image \\udcff id", np.zeros((8, 8, 3), np.uint8))
    Scores([0.5, 0.6], "mass\\x00in\\x1bbox")

def test_plain():
    pass
"""


def test_odd_names_reach_every_output_safely(pytester: pytest.Pytester) -> None:
    undecodable = os.fsdecode(b"test_odd_\xff.py")  # a file name that is not UTF-8: a lone surrogate in the test id
    (pytester.path / undecodable).write_text(ODD_NAMES)
    run(pytester, "--cnnaudit-report=my#report?.html", "--cnnaudit-json=r.json").assert_outcomes(passed=2)
    html = (pytester.path / "my#report?.html").read_bytes().decode("utf-8")  # strict: valid UTF-8
    assert "\x00" not in html and "\x1b" not in html and html.count('data-nodeid="test_odd_') == 2
    assert "test_odd_\\udcff.py::test_odd" in html and "image \\udcff id" in html and "mass\\x00in\\x1bbox" in html
    import re
    import urllib.parse

    links = re.findall(r'class="shot" href="([^"]+)"', html)
    assert links and all((pytester.path / urllib.parse.unquote(link)).is_file() for link in links)
    doc = load(pytester.path / "r.json")
    assert {t["nodeid"] for t in doc["tests"]} == {f"{undecodable}::test_odd", f"{undecodable}::test_plain"}  # exact ids
    assert doc["tests"][0]["evidence"] is not None

    (pytester.path / undecodable).unlink()  # pytest's own junit writer cannot take an undecodable file name
    pytester.makepyfile(test_plain_name=ODD_NAMES)
    run(pytester, "--junitxml=junit.xml").assert_outcomes(passed=2)
    names = [p.get("name") for p in ET.parse(pytester.path / "junit.xml").getroot().iter("property")]
    assert "cnnaudit.mass\\x00in\\x1bbox.mean" in names


def test_the_report_says_what_the_evidence_budget_left_out(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_budget="""
import numpy as np
from cnnaudit.records import IMAGES_PER_TEST

def test_many(evidence):
    for i in range(IMAGES_PER_TEST + 2):
        evidence.image(f"i{i}", np.zeros((8, 8, 3), np.uint8))

def test_big(evidence):
    evidence.image("big", np.zeros((3000, 1500, 3), np.uint8))
""")
    run(pytester, "--cnnaudit-report=r.html", "--cnnaudit-json=r.json").assert_outcomes(passed=2)
    big = by_name(load(pytester.path / "r.json"))["test_big"]["evidence"]["images"][0]
    assert (big["width"], big["height"], big["source_width"], big["source_height"]) == (512, 1024, 1500, 3000)
    html = (pytester.path / "r.html").read_text()
    assert "images not recorded: 2 (limit 96 per test)" in html
    assert "images stored downscaled to 1024 px on their longer side: 1" in html
    assert "(512×1024, downscaled from 1500×3000)" in html


def test_a_folder_cnnaudit_did_not_make_is_not_emptied(pytester: pytest.Pytester) -> None:
    (pytester.path / "r_files").mkdir()
    (pytester.path / "r_files" / "precious.txt").write_text("keep")
    pytester.makepyfile(test_a="def test_ok():\n    pass\n")
    result = run(pytester, "--cnnaudit-report=r.html")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and (pytester.path / "r_files/precious.txt").is_file()
    result.stderr.fnmatch_lines(["*r_files exists and was not made by cnnaudit*"])


def test_importing_the_plugin_imports_neither_torch_nor_numpy() -> None:
    code = "import sys, cnnaudit.plugin; print(sorted(m for m in ('torch', 'numpy', 'jinja2', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- baselines --------------------------------------------------------------------------------------
GATED = AUDIT + """

def test_gate(subject, images, baseline):
    mass = subject.gradcam(images, target="b").mass_in(BOX)
    assert mass.mean() >= baseline(mass).mean() - 0.02
"""


def edit_baseline(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data["tests"])
    path.write_text(json.dumps(data))


def test_save_a_baseline_then_gate_against_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_audit=GATED)
    first = run(pytester, "--cnnaudit-baseline=base.json", "--cnnaudit-save-baseline=base.json")
    first.assert_outcomes(passed=3, failed=1, warnings=1)  # no baseline yet: test_gate compares its Scores with itself
    first.stdout.fnmatch_lines([
        "*BaselineRecordingWarning: recording the baseline of Scores 'mass_in(box)' of test 'test_audit.py::test_gate' "
        "to *base.json (the file does not exist yet); baseline(...) returned the Scores itself, "
        "so this run's gate compared the Scores with itself",
        "cnnaudit: baseline *base.json (3 Scores stored; baseline(...) answered from this recording for 1 Scores "
        "with no stored per-image entry)",
    ])
    saved = load(pytester.path / "base.json")
    assert saved["format"] == "cnnaudit-baseline" and saved["version"] == 2
    gate = saved["tests"]["test_audit.py::test_gate"]
    assert gate["environment"] == {"torch": torch.__version__, "device": "cpu", "gpu": None}
    entry = gate["scores"]["mass_in(box)"]
    assert entry["n"] == 6 and entry["model"]["class"] == "Sequential" and len(entry["model"]["sha256"]) == 64
    assert set(saved["tests"]) == {"test_audit.py::test_passes", "test_audit.py::test_fails", "test_audit.py::test_gate"}

    second = run(pytester, "--cnnaudit-baseline=base.json", "--cnnaudit-json=r.json", "-W", "error::UserWarning")
    second.assert_outcomes(passed=3, failed=1)  # same setting: no warning, the gate passes
    scores = by_name(load(pytester.path / "r.json"))["test_gate"]["evidence"]["scores"][0]
    assert scores["baseline"]["mean"] == entry["mean"] and scores["delta_mean"] == 0.0


def test_baseline_deltas_missing_entries_and_changed_settings(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_audit=GATED)
    run(pytester, "--cnnaudit-save-baseline=base.json")
    base = pytester.path / "base.json"
    mean = load(base)["tests"]["test_audit.py::test_gate"]["scores"]["mass_in(box)"]["mean"]

    def raise_the_bar(tests: dict) -> None:
        stored = tests["test_audit.py::test_gate"]["scores"]["mass_in(box)"]
        stored["mean"] = mean + 0.1
        stored["values"] = [v + 0.1 for v in stored["values"]]  # the gate reads the values
        tests["test_audit.py::test_gate"]["environment"]["torch"] = "1.0.0"

    edit_baseline(base, raise_the_bar)
    result = run(pytester, "--cnnaudit-baseline=base.json", "--cnnaudit-json=r.json")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([
        "*BaselineEnvironmentWarning: baseline for 'mass_in(box)' of 'test_audit.py::test_gate' "
        "was recorded in another setting: torch 1.0.0 -> *"
    ])
    doc = load(pytester.path / "r.json")
    scores = by_name(doc)["test_gate"]["evidence"]["scores"][0]
    assert scores["delta_mean"] == pytest.approx(-0.1)
    assert doc["baseline"]["differences"] == [f"torch 1.0.0 -> {torch.__version__}"]

    edit_baseline(base, lambda tests: tests["test_audit.py::test_gate"]["scores"].clear())
    result = run(pytester, "--cnnaudit-baseline=base.json")
    result.stdout.fnmatch_lines([
        "*BaselineMissing: no baseline for Scores 'mass_in(box)' of test 'test_audit.py::test_gate' in *base.json "
        "(it has no entry for this test); create or refresh it by running this test with --cnnaudit-save-baseline=*base.json"
    ])


GATE_ON = """
import cnnaudit as ca

def test_gate(baseline):
    for name, values in {metrics}.items():
        scores = ca.Scores(values, name=name)
        assert scores.mean() >= baseline(scores).mean() - 0.05
"""


def test_a_recording_run_passes_and_later_runs_gate_against_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_audit=GATE_ON.format(metrics={"accuracy": [0.8, 0.9, 1.0]}))
    missing = run(pytester, "--cnnaudit-baseline=base.json")  # no save path: a missing file still fails, saying why
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines([
        "*BaselineMissing: baseline file *base.json does not exist (test 'test_audit.py::test_gate', Scores 'accuracy'); "
        "create or refresh it by running this test with --cnnaudit-save-baseline=*base.json"
    ])

    recording = run(pytester, "--cnnaudit-save-baseline=base.json")
    recording.assert_outcomes(passed=1, warnings=1)
    recording.stdout.fnmatch_lines([
        "*BaselineRecordingWarning: recording the baseline of Scores 'accuracy' of test 'test_audit.py::test_gate' "
        "to *base.json (no --cnnaudit-baseline given)*",
        "cnnaudit: baseline *base.json (1 Scores stored; baseline(...) answered from this recording for 1 Scores "
        "with no stored per-image entry)",
    ])
    entry = load(pytester.path / "base.json")["tests"]["test_audit.py::test_gate"]["scores"]["accuracy"]
    assert entry["n"] == 3 and entry["mean"] == pytest.approx(0.9) and entry["min"] == 0.8 and entry["max"] == 1.0

    same = run(pytester, "--cnnaudit-baseline=base.json", "-W", "error::UserWarning")
    same.assert_outcomes(passed=1)
    same.stdout.no_fnmatch_line("*BaselineRecordingWarning*")

    pytester.makepyfile(test_audit=GATE_ON.format(metrics={"accuracy": [0.7, 0.8, 0.9]}))  # the model got worse
    worse = run(pytester, "--cnnaudit-baseline=base.json")
    worse.assert_outcomes(failed=1)
    worse.stdout.fnmatch_lines(["E * AssertionError: assert 0.7999* >= (0.9 - 0.05)"])  # mean 0.8 < 0.9 - 0.05


def test_a_refresh_run_gates_against_the_stored_entry_and_writes_the_new_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_audit=GATE_ON.format(metrics={"accuracy": [0.8, 0.9, 1.0]}))
    run(pytester, "--cnnaudit-save-baseline=base.json").assert_outcomes(passed=1, warnings=1)
    # recall is new (answered from the recording); accuracy dropped from 0.9 to 0.7 and is gated against the stored 0.9
    pytester.makepyfile(test_audit=GATE_ON.format(metrics={"recall": [0.5, 0.5], "accuracy": [0.6, 0.7, 0.8]}))
    refresh = run(pytester, "--cnnaudit-baseline=base.json", "--cnnaudit-save-baseline=base.json")
    refresh.assert_outcomes(failed=1, warnings=1)
    refresh.stdout.fnmatch_lines([
        "E * AssertionError: assert 0.6999* >= (0.9 - 0.05)",  # the stored 0.9, not this run's 0.7
        "*BaselineRecordingWarning: recording the baseline of Scores 'recall' of test 'test_audit.py::test_gate' "
        "to *base.json (the file has no entry for it yet)*",
        "cnnaudit: baseline *base.json (2 Scores stored; baseline(...) answered from this recording for 1 Scores "
        "with no stored per-image entry)",
    ])
    stored = load(pytester.path / "base.json")["tests"]["test_audit.py::test_gate"]["scores"]
    assert stored["accuracy"]["mean"] == pytest.approx(0.7) and stored["recall"]["mean"] == 0.5


def test_a_lookup_without_an_entry_answers_with_the_recording_as_the_file_would(tmp_path: Path) -> None:
    recorder = EvidenceRecorder("test_a.py::test_gate", None, per_image=True)
    with evidence.recording(recorder):
        scores = Scores([1.0, 2.0, 4.0, float("nan")], name="accuracy")
    environment = {"torch": "2.x", "device": "cpu", "gpu": None}
    lookup = BaselineLookup(Baseline(tmp_path / "old.json"), "test_a.py::test_gate", recorder.key_of,
                            lambda subject: environment, saving_to=tmp_path / "base.json")
    with pytest.warns(BaselineRecordingWarning, match=r"'accuracy' of test 'test_a.py::test_gate' to .*base.json "
                                                      r"\(baseline file .*old.json does not exist\)"):
        answered = lookup(scores)
    with pytest.warns(BaselineRecordingWarning):
        lookup(scores)
    assert isinstance(answered, StoredScores) and lookup.recorded == ["accuracy"]  # asked twice, one Scores
    assert (answered.n, answered.n_undefined) == (4, 1)
    assert answered.mean() == pytest.approx(7 / 3) and answered.median() == 2.0
    assert (answered.min(), answered.max()) == (1.0, 4.0)
    assert answered.quantile(0.25) == 1.5  # linear interpolation between 1 and 2

    # the oracle: the same Scores saved by the recorder and read back from the file
    save(tmp_path / "base.json", [("test_a.py::test_gate", "passed", {**recorder.finish(), "environment": environment})])
    read_back = Baseline(tmp_path / "base.json").lookup("test_a.py::test_gate", "accuracy", environment=environment)
    def everything(s: StoredScores) -> tuple:
        return (s.n, s.n_undefined, s.model, s.environment, s.mean(), s.median(), s.min(), s.max(), s.ci(),
                [s.quantile(q) for q in QUANTILES])

    assert everything(answered) == everything(read_back) and answered.ci().low < 7 / 3 < answered.ci().high

    # with the entry stored, the lookup returns it (no warning); without a save path a missing entry still raises
    # (the recorder has finished, so these lookups key by name)
    stored = Baseline(tmp_path / "base.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refreshed = BaselineLookup(stored, "test_a.py::test_gate", lambda s: s.name, lambda subject: environment,
                                   saving_to=tmp_path / "base.json")(Scores([0.0], name="accuracy"))
    assert refreshed.mean() == pytest.approx(7 / 3)
    with pytest.raises(BaselineMissing, match="no baseline for Scores 'recall'"):
        BaselineLookup(stored, "test_a.py::test_gate", lambda s: s.name, lambda subject: environment)(
            Scores([0.0], name="recall"))


def test_the_baseline_fixture_without_a_file_says_how_to_get_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_audit=GATED)
    result = run(pytester, "-k", "gate")
    result.stdout.fnmatch_lines([
        "*no baseline file was given: run with --cnnaudit-baseline=PATH (create PATH with --cnnaudit-save-baseline=PATH)"
    ])


def test_a_baseline_of_scores_made_outside_the_test_is_refused_clearly(pytester: pytest.Pytester) -> None:
    """A session fixture's Scores is not this test's evidence: no baseline would ever store it."""
    pytester.makepyfile(test_audit="""
import pytest
from cnnaudit import Scores

@pytest.fixture(scope="session")
def accuracy():
    return Scores([0.9, 1.0], name="accuracy")

def test_gate(accuracy, baseline):
    assert accuracy.mean() >= baseline(accuracy).mean() - 0.05
""")
    result = run(pytester, "--cnnaudit-save-baseline=base.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ValueError: Scores 'accuracy' was not computed in test 'test_audit.py::test_gate' "
                                 "(it comes from outside the test, e.g. a module- or session-scoped fixture)*"])


def test_saving_a_partial_run_keeps_other_tests_entries(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_audit=GATED)
    run(pytester, "--cnnaudit-save-baseline=base.json")
    def lower_test_passes(tests: dict) -> None:
        tests["test_audit.py::test_passes"]["scores"]["mass_in(box)"]["mean"] = -1.0

    edit_baseline(pytester.path / "base.json", lower_test_passes)
    run(pytester, "--cnnaudit-save-baseline=base.json", "-k", "fails")
    tests = load(pytester.path / "base.json")["tests"]
    assert tests["test_audit.py::test_passes"]["scores"]["mass_in(box)"]["mean"] == -1.0  # not run: kept
    assert set(tests) == {"test_audit.py::test_passes", "test_audit.py::test_fails", "test_audit.py::test_gate"}


REFRESHED = AUDIT + """
import os


def test_two_scores(subject, images):
    first = subject.gradcam(images, target="a").mass_in(BOX)
    assert os.environ.get("BREAK") != "between", "failed before its second Scores"
    second = subject.gradcam(images, target="b").mass_in(BOX).where([True] * 3 + [False] * 3)
    assert second.n == 3


@pytest.mark.skipif(os.environ.get("BREAK") == "between", reason="skipped in the refresh")
def test_sometimes_skipped(subject, images):
    assert subject.gradcam(images).mass_in(BOX).n == 6
"""


def test_refreshing_a_baseline_keeps_every_entry_the_run_did_not_re_measure(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_audit=REFRESHED)
    run(pytester, "--cnnaudit-save-baseline=base.json").assert_outcomes(passed=4, failed=1)
    before = load(pytester.path / "base.json")["tests"]
    assert len(before["test_audit.py::test_two_scores"]["scores"]) == 3  # mass_in(box), its twin #2 and [3/6]
    monkeypatch.setenv("BREAK", "between")
    refresh = run(pytester, "--cnnaudit-baseline=base.json", "--cnnaudit-save-baseline=base.json")
    refresh.assert_outcomes(passed=2, failed=2, skipped=1)
    refresh.stdout.fnmatch_lines(["cnnaudit: baseline *base.json (3 Scores stored, 3 kept from the file (not re-measured by this run))"])
    after = load(pytester.path / "base.json")["tests"]
    assert after.keys() == before.keys()
    assert after["test_audit.py::test_sometimes_skipped"] == before["test_audit.py::test_sometimes_skipped"]
    assert after["test_audit.py::test_two_scores"]["scores"] == before["test_audit.py::test_two_scores"]["scores"]


def test_a_read_only_or_unwritable_save_path_is_refused_before_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_ok():\n    pass\n")
    run(pytester, "--cnnaudit-save-baseline=base.json").assert_outcomes(passed=1)
    saved = pytester.path / "base.json"
    content = saved.read_text()
    saved.chmod(0o444)
    result = run(pytester, "--cnnaudit-save-baseline=base.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*baseline file *base.json is read-only, and saving would replace it; make it writable (chmod u+w *"])
    assert saved.read_text() == content and not saved.stat().st_mode & 0o200
    if os.geteuid() != 0:  # root may write into any folder
        locked = pytester.mkdir("locked")
        locked.chmod(0o555)
        result = run(pytester, "--cnnaudit-save-baseline=locked/base.json")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*folder *locked is not writable*"])


def test_a_file_that_is_not_a_baseline_is_refused(pytester: pytest.Pytester) -> None:
    (pytester.path / "notes.json").write_text('{"hello": 1}')
    pytester.makepyfile(test_a="def test_ok():\n    pass\n")
    for option in ("--cnnaudit-baseline=notes.json", "--cnnaudit-save-baseline=notes.json"):
        result = run(pytester, option)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(['*notes.json is not a cnnaudit baseline file (expected "format": "cnnaudit-baseline")'])
    assert (pytester.path / "notes.json").read_text() == '{"hello": 1}'


PAIRED = AUDIT + """
import cnnaudit as ca

def test_paired_gate(subject, images, baseline):
    mass = subject.gradcam(images, target="b").mass_in(BOX)
    gap = ca.compare(mass, baseline(mass))
    assert gap.ci().low >= -0.02
"""


def test_a_markdown_summary_lists_failed_gates_first_and_goes_to_the_github_step_summary(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_audit=PAIRED)
    step = pytester.path / "step.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    run(pytester, "--cnnaudit-save-baseline=base.json").assert_outcomes(passed=3, failed=1, warnings=1)
    assert step.read_text() == "earlier step\n"  # no --cnnaudit-summary: nothing written there
    result = run(pytester, "--cnnaudit-baseline=base.json", "--cnnaudit-report=out/r.html", "--cnnaudit-json=out/r.json",
                 "--cnnaudit-summary=out/summary.md", "--cnnaudit-correction=bh")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["cnnaudit: Markdown summary *summary.md"])
    text = (pytester.path / "out" / "summary.md").read_text()
    doc = load(pytester.path / "out" / "r.json")
    anchor = f"t-{digest('test_audit.py::test_fails')}"
    assert text.startswith("## cnnaudit: FAIL") and text.index("### Failed") < text.index("### Other tests")
    assert f"[`test_audit.py::test_fails`](r.html#{anchor})" in text and "✗ `mass_in(box)`: `mean()` = " in text
    assert f'id="{anchor}"' in (pytester.path / "out" / "r.html").read_text()
    # the paired gate against the baseline: recorded in full, passed, with the baseline's side named
    (gap,) = by_name(doc)["test_paired_gate"]["evidence"]["comparisons"]
    assert gap["key"] == "mass_in(box) \u2212 baseline(mass_in(box))" and gap["paired"] and gap["n"] == 6
    assert gap["unmatched"] == [0, 0] and gap["mean"] == 0 and gap["thresholds"][0]["holds"] is True
    assert gap["b"]["baseline"] is True and gap["a"].get("baseline") is None
    assert doc["correction"] == {"method": "bh", "name": "Benjamini-Hochberg", "m": 1} and gap["p_adjusted"] == 1.0
    assert "✓ `mass_in(box) − baseline(mass_in(box))`: `ci().low` = 0 >= -0.02" in text
    assert step.read_text().startswith("earlier step\n## cnnaudit: FAIL")  # appended, the earlier step kept


def test_an_unknown_correction_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_a():\n    pass\n")
    result = run(pytester, "--cnnaudit-correction=bonferroni")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--cnnaudit-correction=bonferroni is not a correction; use holm, bh or none*"])


# ---- shards merged into one report ------------------------------------------------------------------
def test_a_suite_split_in_two_and_merged_gives_the_serial_runs_report(pytester: pytest.Pytester) -> None:
    from cnnaudit.__main__ import main

    pytester.makepyfile(test_audit=AUDIT)
    options = ("-p", "no:cacheprovider")
    pytester.runpytest_subprocess(*options, "--cnnaudit-json=serial/r.json",
                                  "--cnnaudit-save-baseline=serial/base.json").assert_outcomes(passed=2, failed=1)
    first = "test_fails or test_uses_a_fixture"
    pytester.runpytest_subprocess(*options, "-k", first, "--cnnaudit-json=a/r.json",
                                  "--cnnaudit-save-baseline=a/base.json").assert_outcomes(passed=1, failed=1)
    pytester.runpytest_subprocess(*options, "-k", f"not ({first})", "--cnnaudit-json=b/r.json",
                                  "--cnnaudit-save-baseline=b/base.json").assert_outcomes(passed=1)
    path = pytester.path
    assert main(["merge", str(path / "a/r.json"), str(path / "b/r.json"), "--json", str(path / "m/r.json"),
                 "--report", str(path / "m/r.html"), "--summary", str(path / "m/summary.md"), "--shards", "2"]) == 1  # fail
    serial, merged = load(path / "serial/r.json"), load(path / "m/r.json")
    assert merged["merge_problems"] == [] and [s["verdict"] for s in merged["shards"]] == ["fail", "pass"]
    serial_images, merged_images = path / "serial" / serial["images_dir"], path / "m" / merged["images_dir"]
    for doc in (serial, merged):
        doc["images_dir"] = None
        for key in ("shards", "merge_problems"):
            doc.pop(key, None)
    assert without_timing(merged) == without_timing(serial)  # tests in the serial order, evidence, counts, verdict
    names = sorted(p.name for p in serial_images.iterdir())
    assert names == sorted(p.name for p in merged_images.iterdir()) and len(names) == 20
    assert all((serial_images / n).read_bytes() == (merged_images / n).read_bytes() for n in names)
    assert 'id="t-' in (path / "m/r.html").read_text()
    summary = (path / "m/summary.md").read_text()
    assert summary.startswith("## cnnaudit: FAIL") and "[`test_audit.py::test_fails`](r.html#t-" in summary
    # the shards' baselines merge into the one a serial run saves
    assert main(["merge", str(path / "a/base.json"), str(path / "b/base.json"), "--baseline", str(path / "base.json")]) == 0
    merged_tests, serial_tests = load(path / "base.json")["tests"], load(path / "serial/base.json")["tests"]
    assert merged_tests.keys() == serial_tests.keys() and len(merged_tests) == 2  # the tests with Scores
    for nodeid, entry in serial_tests.items():
        assert merged_tests[nodeid]["scores"].keys() == entry["scores"].keys()
        for key, stored in entry["scores"].items():
            assert merged_tests[nodeid]["scores"][key]["values"] == stored["values"], (nodeid, key)


def test_a_missing_or_unfinished_shard_makes_the_merged_verdict_incomplete(tmp_path: Path) -> None:
    from cnnaudit.report.merge import MergeError, merge_reports

    def shard(name: str, nodeid: str, **extra: Any) -> Path:
        entry = {"nodeid": nodeid, "outcome": "passed", "phase": "call", "message": "", "details": "", "duration": 0.1,
                 "evidence": None}
        doc = {"format": "cnnaudit-report", "version": 1, "verdict": "pass", "interrupted": False, "in_progress": False,
               "collected": 1, "reported": 1, "counts": {}, "environment": {"torch": "x"}, "models": [], "seeds": [],
               "baseline": None, "images_dir": None, "started": 0.0, "duration": 1.0, "tests": [entry], "split": None, **extra}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        return path

    one = shard("one", "t.py::a", split={"group": 1, "splits": 3})
    two = shard("two", "t.py::b", split={"group": 2, "splits": 3})
    merged = merge_reports([one, two], report=None, json_path=tmp_path / "m.json")
    assert merged["verdict"] == "incomplete" and merged["merge_problems"] == ["split group 3 of 3 missing"]
    cut = shard("cut", "t.py::c", verdict="incomplete", collected=4, reported=1)
    merged = merge_reports([shard("x", "t.py::d"), cut], report=None, json_path=tmp_path / "m.json", expected_shards=3)
    assert merged["verdict"] == "incomplete" and merged["merge_problems"] == [
        f"shard {cut} did not finish: 1 of 4 tests reported", "2 shard files given, 3 expected"]
    assert merge_reports([shard("y", "t.py::e")], report=None, json_path=tmp_path / "m.json")["verdict"] == "pass"
    with pytest.raises(MergeError, match=r"test 't.py::a' is in two shards, .*one.json and .*again.json"):
        merge_reports([one, shard("again", "t.py::a")], report=None, json_path=tmp_path / "m.json")
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(MergeError, match=r"junk.json is not a cnnaudit JSON report \(write one per shard with --cnnaudit-json"):
        merge_reports([tmp_path / "junk.json"], report=None, json_path=tmp_path / "m.json")


# ---- progress of long work on the terminal ----------------------------------------------------------
LONG_WORK = """
import time

from cnnaudit.progress import progress


def test_long(request, monkeypatch):
    if {tty}:  # as if pytest wrote to a terminal
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        monkeypatch.setattr(reporter, "isatty", type(reporter.isatty)(True))
    print("the test's own output")
    with progress(3, "long work", unit="items") as bar:
        for _ in range(3):
            time.sleep(0.25)  # past the throttle: every advance draws
            bar.advance()
    assert False
"""


def _progress_shown(result: pytest.RunResult) -> bool:
    """Whether the progress line reached pytest's terminal output (before, never inside, the captured output)."""
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    captured = text.index("Captured stdout call")
    assert "the test's own output" in text[captured:] and "long work" not in text[captured:]
    return "long work: 1/3 items" in text[:captured]


def test_progress_shows_on_a_terminal_and_not_under_q_in_ci_or_when_turned_off(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("CNNAUDIT_PROGRESS", raising=False)
    pytester.makepyfile(test_long=LONG_WORK.format(tty=True))
    assert _progress_shown(run(pytester))
    assert not _progress_shown(run(pytester, "-q"))
    assert not _progress_shown(run(pytester, "--cnnaudit-progress=off"))
    assert _progress_shown(run(pytester, "-q", "--cnnaudit-progress=on"))
    monkeypatch.setenv("CI", "true")
    assert not _progress_shown(run(pytester))
    pytester.makeini("[pytest]\ncnnaudit_progress = on\n")
    assert _progress_shown(run(pytester))  # asked for in the ini file
    monkeypatch.setenv("CNNAUDIT_PROGRESS", "0")
    assert not _progress_shown(run(pytester))  # the environment wins over the ini file
    assert _progress_shown(run(pytester, "--cnnaudit-progress=on"))  # the command line over both
    pytester.makepyfile(test_long=LONG_WORK.format(tty=False))
    pytester.makeini("[pytest]\n")
    monkeypatch.delenv("CI")
    monkeypatch.delenv("CNNAUDIT_PROGRESS")
    assert not _progress_shown(run(pytester))  # auto, and pytest's output is not a terminal
    monkeypatch.setenv("CNNAUDIT_PROGRESS", "1")
    assert _progress_shown(run(pytester, "-q"))  # forced on: a CI log that asks for it


def test_progress_reaches_the_terminal_through_pytests_capture(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a real process pytest captures the test's file descriptors: the line is written around that capture."""
    monkeypatch.delenv("CNNAUDIT_PROGRESS", raising=False)
    pytester.makepyfile(test_long=LONG_WORK.format(tty=False))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--cnnaudit-progress=on")
    assert _progress_shown(result)
    text = result.stdout.str()
    assert "\b" in text and "test_long.py  long work: 3/3 items" not in text.replace("\b", "")  # appended, then erased


def test_a_bad_progress_setting_is_a_usage_error(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_a="def test_a():\n    pass\n")
    result = run(pytester, "--cnnaudit-progress=maybe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--cnnaudit-progress=maybe is not a progress setting; use auto, on or off*"])
    monkeypatch.setenv("CNNAUDIT_PROGRESS", "sometimes")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*CNNAUDIT_PROGRESS=sometimes is not a progress setting*"])
