"""The HTML report in a real browser: Debian's chromium, headless, reading the DOM after the page's scripts ran.

The report's own script counts uncaught errors into ``#cnnaudit-errors`` and, once the page has
loaded, writes how many of each test's images loaded into ``data-images-loaded``; chromium's
``--dump-dom`` shows both, and ``--enable-logging=stderr`` prints every console message
(errors, Content-Security-Policy violations) to stderr.
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

# imported before pytester's in-process run, which drops the modules it imports (C extensions cannot reload)
import jinja2  # noqa: F401
import PIL.Image  # noqa: F401
import pytest
import scipy.ndimage  # noqa: F401

import cnnaudit.metrics  # noqa: F401
import cnnaudit.render  # noqa: F401
import cnnaudit.subject  # noqa: F401

AUDIT = """
import pytest, torch
from torch import nn
import cnnaudit as ca

BOX = ca.Regions([(0, 0, 16, 16)] * 4, image_size=(32, 32), name="tools")


@pytest.fixture(scope="module")
def subject():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    return ca.Subject(model, layer="3", classes=["doctor", "nurse"], device="cpu")


IMAGES = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("who", ["<script>document.title='pwned'</script>"])
def test_passes_first_in_the_file(subject, who, evidence):
    evidence.note("<img src=x onerror=\\"document.title='pwned'\\">")
    ca.compare(ca.Scores([0.1, 0.3], who), ca.Scores([0.2, 0.6], "b"))  # a comparison row named by the markup
    assert subject.gradcam(IMAGES, target="nurse").mass_in(BOX).mean() >= 0.0


def test_attention_on_tools(subject):
    mass = subject.gradcam(IMAGES, target="doctor").mass_in(BOX)
    assert mass.ci().low >= 0.9
"""

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "chromium is not installed; this test opens the HTML report in a real browser. "
            "Install it with: apt-get update && apt-get install -y chromium  (CI's .ci/run does this)",
            pytrace=False,
        )
    return path


class Dom(HTMLParser):
    """Attributes of the elements the checks read, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tests: list[dict] = []
        self.by_id: dict[str, dict] = {}
        self.body: dict = {}
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = attributes
        if tag == "details" and "test" in attributes.get("class", "").split():
            self.tests.append(attributes)
        if "id" in attributes:
            self.by_id[attributes["id"]] = attributes
        self._in_title = tag == "title"

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False


def open_in_chromium(url: str, profile: Path) -> tuple[Dom, str]:
    done = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = Dom()
    dom.feed(done.stdout)
    return dom, done.stderr


def test_the_report_works_in_a_real_browser(pytester: pytest.Pytester, tmp_path: Path) -> None:
    chromium()  # fail at once, with how to install it, before the audit runs
    pytester.makepyfile(test_audit=AUDIT)
    pytester.runpytest("-p", "no:cacheprovider", "--cnnaudit-report=out/report.html").assert_outcomes(passed=1, failed=1)
    report = pytester.path / "out" / "report.html"

    dom, log = open_in_chromium(report.as_uri(), tmp_path / "profile")
    assert [line for line in log.splitlines() if ":CONSOLE" in line] == []  # no errors, no blocked loads
    assert dom.by_id["cnnaudit-errors"]["data-count"] == "0"
    assert dom.body.get("data-ready") == "1"  # the report's script ran to the end
    assert "pwned" not in dom.title  # neither the test id nor the note ran as markup

    first, second = dom.tests
    assert first["data-nodeid"] == "test_audit.py::test_attention_on_tools" and first["data-outcome"] == "failed"
    assert "open" in first and "open" not in second  # the failure is shown first, expanded
    assert second["data-nodeid"] == "test_audit.py::test_passes_first_in_the_file[<script>document.title='pwned'</script>]"
    assert "</script> \u2212 b" in second["data-search"]  # the comparison is in the page, as text
    # the failure's overlays: 4 heatmaps and the lowest/highest 2 + 2 of its Scores, all decoded
    assert first["data-images-total"] == "8" and first["data-images-loaded"] == "8"
    assert second["data-images-loaded"] == second["data-images-total"] == "8"

    # a link to an image opens the lightbox with the full-size sibling file, allowed by the page's CSP
    image_file = next((pytester.path / "out" / "report_files").glob("run-*/*-001.jpg"))
    image_id = image_file.name.removesuffix(".jpg")
    dom, log = open_in_chromium(f"{report.as_uri()}#img={image_id}", tmp_path / "profile2")
    assert [line for line in log.splitlines() if ":CONSOLE" in line] == []
    assert "hidden" not in dom.by_id["lightbox"]
    lightbox = dom.by_id["lightbox-img"]
    assert lightbox["src"] == f"report_files/{image_file.parent.name}/{image_id}.jpg" and int(lightbox["data-natural-width"]) == 32


PROBE = """<script>
window.addEventListener("load", function () {
  document.querySelectorAll("details").forEach(function (d) { d.open = true; });
  var width = document.documentElement.clientWidth, past = [], scrolled = [];
  function clipped(element) {  // inside a box that scrolls or clips what passes its edge
    for (var p = element.parentElement; p; p = p.parentElement) {
      if (["auto", "hidden", "scroll"].indexOf(getComputedStyle(p).overflowX) >= 0) { return true; }
    }
    return false;
  }
  document.querySelectorAll("body *").forEach(function (e) {
    var box = e.getBoundingClientRect();  // past the window, or its own text spilling out of its box (a long word)
    var spills = e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX === "visible";
    if (((box.width && box.right > width + 0.5) || spills) && !clipped(e)) {
      past.push(e.tagName + "." + e.getAttribute("class") + " " + Math.round(box.right) + " " + e.scrollWidth + ">" + e.clientWidth);
    }
  });
  document.querySelectorAll(".scroll").forEach(function (e) {
    if (e.scrollWidth > e.clientWidth + 0.5) { scrolled.push(e.scrollWidth + " > " + e.clientWidth); }
  });
  document.body.dataset.layout = JSON.stringify({width: width, page: document.documentElement.scrollWidth, past: past, scrolled: scrolled});
});
</script></body>"""


def wide_report(tmp_path: Path) -> Path:
    """A report whose every card holds something wide: long ids, keys, captions, messages, notes, a grid, a curve."""
    import numpy as np
    import torch

    from cnnaudit import Subject, compare, evidence, metrics, report
    from cnnaudit.data import ImageSet
    from cnnaudit.records import EvidenceRecorder
    from cnnaudit.results import RunResults
    from cnnaudit.scores import Scores

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    subject = Subject(model, layer="2", classes=["a_rather_long_class_name_doctor", "nurse"], device="cpu")
    n = 8
    people = ImageSet(torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
                      labels=["a_rather_long_class_name_doctor", "nurse"] * (n // 2),
                      groups={"gender_identity_as_annotated": ["female", "male"] * (n // 2), "pairing": ["counter"] * n},
                      regions={"tools": [(0, 0, 16, 16)] * n}, ids=[f"image-with-a-long-identifier-{i:05d}" for i in range(n)])
    nodeid = "test_wide.py::test_" + "very_long_name_" * 8 + "[" + "parameter-" * 10 + "]"
    recorder = EvidenceRecorder(nodeid, tmp_path)
    with evidence.recording(recorder):
        mass = subject.gradcam(people).mass_in("tools")
        long_name = "mass_in(tools)" + "[gender_identity_as_annotated=female]" * 2
        a, b = Scores(mass.values[::2], long_name, ids=people.ids[::2]), Scores(mass.values[1::2], long_name + "#b")
        gap = compare(a, b)
        assert not gap.ci().low >= 0.5
        metrics.sanity_check(subject, people[:2], target=0)
        subject.maximize("2", channels="all", size=32, steps=1)
    recorder.note("x" * 400)
    recorder.note("a note with a long path /" + "/".join(["directory"] * 40))
    results = RunResults()
    ev = recorder.finish()
    message = "AssertionError: assert " + "0123456789" * 30 + " >= 0.5\n +  where x = Subject(" + "y" * 300 + ")"
    pytest_report = pytest.TestReport(nodeid, ("f.py", 0, nodeid), {}, "failed", message, "call", duration=0.25, cnnaudit=ev)
    results.add(pytest.TestReport(nodeid, ("f.py", 0, nodeid), {}, "passed", None, "setup", duration=0.1))
    results.add(pytest_report)
    results.add(pytest.TestReport(nodeid, ("f.py", 0, nodeid), {}, "passed", None, "teardown", duration=0.1))
    environment = {"cnnaudit": "0", "python": "3", "platform": "Linux-" + "x" * 120, "torch": "2", "cuda": None,
                   "cuda_available": False, "gpus": [], "device": "cpu"}
    doc = report.document(results, environment=environment, interrupted=False, in_progress=False,
                          image_dir=str(tmp_path), baseline=None, started=0.0, finished=1.0)
    out = tmp_path / "report.html"
    report.write_html(out, doc)
    assert np.isfinite(mass.values).any()
    return out


def test_nothing_in_the_report_is_wider_than_an_800_px_window(tmp_path: Path) -> None:
    import json

    chromium()
    page = wide_report(tmp_path)
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text().replace("</body>", PROBE))
    done = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=800,1400", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = Dom()
    dom.feed(done.stdout)
    layout = json.loads(dom.body["data-layout"])
    assert 760 <= layout["width"] <= 800  # the window, less a scroll bar
    assert (layout["past"], layout["scrolled"]) == ([], [])  # every card fits; no table needs its scroll bar
    assert layout["page"] == layout["width"]  # so the page itself does not scroll sideways
