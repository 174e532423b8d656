"""Report cost for an audit run with 1,000 evidence images (goal: the HTML written in under 10 s); prints JSON.

* ``record`` — the recorder rendering the evidence as tests run: per test, a ``Heatmaps`` of 8
  photographs (8 overlays) and its ``mass_in`` Scores (lowest 4 + highest 4 overlays with region
  outlines), 224 px, written to disk as full-size JPEG + thumbnail; then each test's summary.
* ``write_html`` / ``write_json`` — the final reports from those records.
* ``x10`` — the HTML for ten times as many tests and images (records repeated, files reused):
  the inline budget at work (thumbnails past it are linked, the report size stays bounded).

Usage: ``python benchmarks/bench_report.py [--images 1000] [--size 224] [--threads N]``. On a busy
machine torch's worker threads contend with other processes and small per-image tensor ops slow down
by orders of magnitude; ``--threads 1`` measures the recorder's own cost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnaudit import evidence, report
from cnnaudit.heatmaps import Heatmaps
from cnnaudit.records import EvidenceRecorder
from cnnaudit.regions import Regions
from cnnaudit.results import RunResults

GOAL_SECONDS = 10.0
PER_TEST = 16  # 8 heatmap overlays + 4 lowest + 4 highest


class Phase:
    """A minimal phase report, as pytest hands it to the controller."""

    def __init__(self, nodeid: str, when: str, outcome: str, evidence: dict | None = None) -> None:
        self.nodeid, self.when, self.outcome, self.duration = nodeid, when, outcome, 0.01
        self.passed, self.failed, self.skipped = outcome == "passed", outcome == "failed", False
        self.longrepr = "AssertionError: assert 0.21 >= 0.5" if self.failed else None
        self.longreprtext = self.longrepr or ""
        if evidence is not None:
            self.cnnaudit = evidence


def photos(size: int) -> torch.Tensor:
    """Eight natural photographs from ``skimage.data`` (local files), resized to ``size`` px squares."""
    import skimage.data

    names = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "retina", "colorwheel")
    resized = []
    for name in names:
        image = torch.from_numpy(getattr(skimage.data, name)()[..., :3].copy()).permute(2, 0, 1)[None].float() / 255
        resized.append(F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(resized).clamp(0, 1)


def record_tests(n_tests: int, size: int, image_dir: Path) -> RunResults:
    results = RunResults()
    generator = torch.Generator().manual_seed(0)
    images = photos(size)
    boxes = Regions([(size // 4, size // 4, size // 2, size // 2)] * 8, image_size=(size, size), name="tools")
    for t in range(n_tests):
        nodeid = f"audits/test_bias.py::test_tools[case{t:04d}]"
        recorder = EvidenceRecorder(nodeid, image_dir, index=t)
        with evidence.recording(recorder):
            heatmaps = Heatmaps(torch.randn(8, 7, 7, generator=generator), image_size=(size, size), method="gradcam",
                                layer="layer4", images=images)
            heatmaps.mass_in(boxes)
        payload = recorder.finish()
        outcome = "failed" if t % 10 == 0 else "passed"
        results.add(Phase(nodeid, "setup", "passed"))
        results.add(Phase(nodeid, "call", outcome, payload))
        results.add(Phase(nodeid, "teardown", "passed"))
    return results


def measure_report(images: int = 1000, size: int = 224) -> dict:
    """Recording ``images`` evidence images, then writing the HTML and JSON reports (seconds)."""
    n_tests = -(-images // PER_TEST)
    environment = {"cnnaudit": "bench", "python": platform.python_version(), "platform": platform.platform(),
                   "torch": str(torch.__version__), "cuda": None, "cuda_available": False, "gpus": [], "device": "cpu"}

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        image_dir = out / "report_files"
        image_dir.mkdir()
        begin = time.perf_counter()
        results = record_tests(n_tests, size, image_dir)
        record_s = time.perf_counter() - begin

        def make_doc(res: RunResults) -> dict:
            return report.document(res, environment=environment, interrupted=False, in_progress=False,
                                   image_dir=str(image_dir), baseline=None, started=0.0, finished=1.0)

        doc = make_doc(results)
        begin = time.perf_counter()
        html = report.write_html(out / "report.html", doc)
        write_html_s = time.perf_counter() - begin
        begin = time.perf_counter()
        report.write_json(out / "report.json", doc)
        write_json_s = time.perf_counter() - begin

        big = RunResults()
        for copy in range(10):
            for entry in results.finished:
                big.finished.append({**entry, "nodeid": f"{entry['nodeid']}-{copy}"})
        begin = time.perf_counter()
        html10 = report.write_html(out / "report10.html", make_doc(big))
        write_html10_s = time.perf_counter() - begin
        image_bytes = sum(p.stat().st_size for p in image_dir.iterdir())

    return {
        "tests": n_tests,
        "images": html["images"],
        "image_size": size,
        "record_s": round(record_s, 3),
        "record_ms_per_image": round(1000 * record_s / html["images"], 2),
        "write_html_s": round(write_html_s, 3),
        "write_json_s": round(write_json_s, 3),
        "html_mb": round(html["bytes"] / 2**20, 2),
        "image_files_mb": round(image_bytes / 2**20, 2),
        "goal_s": GOAL_SECONDS,
        "html_within_goal": write_html_s < GOAL_SECONDS,
        "x10": {
            "tests": 10 * n_tests,
            "images": html10["images"],
            "write_html_s": round(write_html10_s, 3),
            "html_mb": round(html10["bytes"] / 2**20, 2),
            "thumbnails_linked": html10["linked"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure_report(args.images, args.size)
    print(json.dumps({"benchmark": "report", **result, "torch": str(torch.__version__), "cpu_threads": torch.get_num_threads(),
                      "load_average": [round(x, 2) for x in os.getloadavg()]}, indent=1))


if __name__ == "__main__":
    main()
