"""Release gates: how much smaller a drop the paired gate detects than the summary gate, and what a
per-image baseline costs on disk; prints JSON.

* ``power`` — a simulation. Each trial draws a test set of ``--images`` images from a population in
  which the released model's mass on the tools varies from image to image (sd ``--image-sd``) and
  the candidate changes each image's mass by ``-drop`` plus retraining noise (sd ``--change-sd``).
  Both gates ask "did the candidate drop?" at a one-sided 5% false-alarm rate, each with what it knows:

  - *summary gate* (``mean(candidate) >= mean(baseline) - margin``): a summary carries each side's
    mean, spread and ``n``, not the pairs, so the margin that gives 5% false alarms is the two-sample
    one, ``1.645 * sqrt(sd_c**2 + sd_b**2) / sqrt(n)``;
  - *paired gate* (``compare(candidate, baseline(...)).ci(0.90).high >= 0``, cnnaudit's seeded BCa
    bootstrap of the per-image differences).

  Reported per drop: the fraction of trials each gate flags (at drop 0: its false-alarm rate), and
  the smallest drop each flags in at least 80% of trials.
* ``baseline_size`` — the bytes of a baseline file holding ``--baseline-images`` per-image values for
  each of ``--baseline-scores`` Scores (written by cnnaudit's own ``baseline.save``), and its lines.

Usage: ``python benchmarks/bench_gates.py [--trials 200] [--out gates.json]``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np

from cnnaudit.baseline import save
from cnnaudit.scores import Scores, compare
from cnnaudit.summaries import per_image, summarize
from timing import emit

ONE_SIDED_5 = 1.6448536269514722  # scipy.stats.norm.ppf(0.95)
POWER = 0.8


def trial(rng: np.random.Generator, images: int, image_sd: float, change_sd: float, drop: float) -> dict[str, bool]:
    """One test set: whether each gate flags the candidate."""
    ids = [f"img{k}" for k in range(images)]
    released = np.clip(rng.normal(0.6, image_sd, images), 0.0, 1.0)
    candidate = np.clip(released - drop + rng.normal(0.0, change_sd, images), 0.0, 1.0)
    c, b = Scores(candidate, "candidate", ids=ids), Scores(released, "released", ids=ids)
    margin = ONE_SIDED_5 * math.sqrt(c.std() ** 2 + b.std() ** 2) / math.sqrt(images)
    return {"summary": c.mean() < b.mean() - margin, "paired": compare(c, b).ci(0.90).high < 0}


def measure_power(*, images: int, image_sd: float, change_sd: float, drops: list[float], trials: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    flagged = {"summary": [], "paired": []}
    for drop in drops:
        runs = [trial(rng, images, image_sd, change_sd, drop) for _ in range(trials)]
        for gate in flagged:
            flagged[gate].append(sum(run[gate] for run in runs) / trials)
    detected = {gate: next((d for d, rate in zip(drops, rates) if d > 0 and rate >= POWER), None) for gate, rates in flagged.items()}
    return {
        "images": images, "image_sd": image_sd, "change_sd": change_sd, "trials": trials, "drops": drops,
        "flagged": flagged, "false_alarms": {gate: rates[drops.index(0.0)] for gate, rates in flagged.items()} if 0.0 in drops else None,
        "smallest_drop_detected_80pct": detected,
        "ratio": None if None in detected.values() else round(detected["summary"] / detected["paired"], 2),
    }


def measure_baseline_size(*, images: int, scores: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = [f"images/{k:06d}.png" for k in range(images)]
    entries = []
    for k in range(scores):
        s = Scores(rng.random(images), f"mass_in(region{k})", ids=ids)
        entries.append({**summarize(s), **per_image(s), "key": s.name, "model": None})
    evidence = {"scores": entries, "environment": {"torch": "x", "device": "cpu", "gpu": None}}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "baseline.json"
        save(path, [("audits/test_big.py::test_gate", "passed", evidence)])
        text = path.read_text()
    return {"images": images, "scores": scores, "bytes": len(text.encode()), "megabytes": round(len(text.encode()) / 2**20, 2),
            "lines": text.count("\n"), "bytes_per_value": round(len(text.encode()) / (images * scores), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--image-sd", type=float, default=0.15)
    parser.add_argument("--change-sd", type=float, default=0.02)
    parser.add_argument("--drops", default="0,0.0025,0.005,0.0075,0.01,0.015,0.02,0.03,0.04,0.05,0.06,0.08")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--baseline-images", type=int, default=10_000)
    parser.add_argument("--baseline-scores", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures = {
        "power": measure_power(images=args.images, image_sd=args.image_sd, change_sd=args.change_sd,
                               drops=[float(d) for d in args.drops.split(",")], trials=args.trials),
        "baseline_size": measure_baseline_size(images=args.baseline_images, scores=args.baseline_scores),
    }
    emit(figures, args.out)


if __name__ == "__main__":
    main()
