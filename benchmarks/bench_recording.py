"""What recording evidence costs an audit suite, measured side by side with the same suite unrecorded; prints JSON.

* ``suite`` — ``--tests`` audits (default 200), each a Grad-CAM of 8 images (64 px) of a small CNN and
  its ``mass_in`` Scores, run by pytest in a subprocess without outputs and with
  ``--cnnaudit-report``, the two interleaved ``--repeats`` times; wall times, their ratio, and the
  image files the report wrote.
* ``big_image`` — one audit of one ``--big-side`` px square image (default 8000; a model with a
  16x16-patch stem), unrecorded and recorded: wall time and peak memory (max RSS) of each pytest
  process, and the report's image files.

Every pytest process imports the ``cnnaudit`` found first on ``sys.path``, so setting ``PYTHONPATH``
to another checkout measures that version (how docs/performance.md compares before and after).

Usage: ``python benchmarks/bench_recording.py [--tests 200] [--repeats 3] [--big-side 8000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CONFTEST = """
import pytest, torch, torch.nn as nn
import cnnaudit as ca

@pytest.fixture(scope="session")
def subject():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2)).eval()
    return ca.Subject(model, layer="4", classes=["a", "b"], cache=False)
"""

SUITE = """
import pytest, torch

IMAGES = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))

@pytest.mark.parametrize("k", range({tests}))
def test_attention(subject, k):
    mass = subject.gradcam(IMAGES, target="a").mass_in([(16, 16, 48, 48)] * 8)
    assert mass.mean() >= 0.0
"""

BIG = """
import torch, torch.nn as nn
import cnnaudit as ca

def test_big_image():
    torch.manual_seed(0)  # a 16x16-patch stem, so the model's own memory stays small next to the image's
    model = nn.Sequential(nn.Conv2d(3, 8, 16, stride=16), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
    subject = ca.Subject(model, layer="2", classes=["a", "b"], cache=False)
    image = torch.rand(1, 3, {side}, {side}, generator=torch.Generator().manual_seed(0))
    mass = subject.gradcam(image, target="a").mass_in([({low}, {low}, {high}, {high})])
    assert mass.mean() >= 0.0
"""

# runs pytest as a child and prints its wall time and peak memory (a fresh parent per measurement, so
# RUSAGE_CHILDREN's high-water mark is that one child's)
MEASURE = """
import json, resource, subprocess, sys, time
begin = time.perf_counter()
done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *sys.argv[1:]], capture_output=True)
wall = time.perf_counter() - begin
print(json.dumps({"rc": done.returncode, "wall_s": wall, "max_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run_pytest(folder: Path, *args: str) -> dict:
    """Wall time (s) and max RSS (MB) of one pytest run in ``folder``; raises if a test failed."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run([sys.executable, "-c", MEASURE, *args], cwd=folder, capture_output=True, text=True, env=env, check=True)
    measured = json.loads(out.stdout)
    if measured["rc"] != 0:
        raise RuntimeError(f"pytest failed in {folder} with {args}")
    return measured


def image_files(folder: Path) -> dict:
    files = [p for p in folder.rglob("*.jpg")]
    return {"files": len(files), "mb": round(sum(p.stat().st_size for p in files) / 2**20, 2)}


def measure_recording(tests: int = 200, repeats: int = 3, big_side: int = 8000) -> dict:
    """The ``suite`` and ``big_image`` figures (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        suite, big = Path(tmp) / "suite", Path(tmp) / "big"
        suite.mkdir()
        big.mkdir()
        (suite / "conftest.py").write_text(CONFTEST)
        (suite / "test_suite.py").write_text(textwrap.dedent(SUITE.format(tests=tests)))
        (big / "test_big.py").write_text(BIG.format(side=big_side, low=big_side // 8, high=big_side // 2))

        plain, recorded = [], []
        for _ in range(repeats):  # interleaved: machine load hits both sides alike
            plain.append(run_pytest(suite)["wall_s"])
            recorded.append(run_pytest(suite, "--cnnaudit-report=r.html")["wall_s"])
        suite_files = image_files(suite / "r_files")
        big_plain = run_pytest(big)
        big_recorded = run_pytest(big, "--cnnaudit-report=r.html")
        big_files = image_files(big / "r_files")

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 2)

    return {
        "suite": {
            "tests": tests,
            "repeats": repeats,
            "plain_s": median(plain),
            "recorded_s": median(recorded),
            "ratio": round(statistics.median(recorded) / statistics.median(plain), 2),
            "image_files": suite_files,
        },
        "big_image": {
            "side": big_side,
            "plain": {"wall_s": round(big_plain["wall_s"], 2), "max_rss_mb": round(big_plain["max_rss_mb"])},
            "recorded": {"wall_s": round(big_recorded["wall_s"], 2), "max_rss_mb": round(big_recorded["max_rss_mb"])},
            "image_files": big_files,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big-side", type=int, default=8000)
    args = parser.parse_args()
    begin = time.perf_counter()
    figures = measure_recording(args.tests, args.repeats, args.big_side)
    import cnnaudit

    figures.update(benchmark="recording", cnnaudit=str(Path(cnnaudit.__file__).parent), seconds=round(time.perf_counter() - begin, 1))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
