"""What splitting the example audits into CI shards costs against one serial run, merge included; prints JSON.

Runs ``pytest example_audits`` serially, then split 2 and 4 ways with pytest-split (``--splits N
--group k``, one process per shard, one after another: on CI each shard is its own machine), each
with ``--cnnaudit-json``, then ``cnnaudit merge`` of the shards into one HTML and JSON report. Per
split: each shard's wall time, the slowest shard (the wall time a parallel matrix waits for), their
sum (the machine time paid), the merge time, and the ratios of those to the serial run. Each pytest
process pays its own start-up (imports, the shipped models, collection) once, which is what a shard
adds. Also checks that each merged report equals the serial one (tests, outcomes, Scores).

Usage: ``python benchmarks/bench_shards.py [--splits 2,4] [--threads 1] [--out shards.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import emit

ROOT = Path(__file__).resolve().parents[1]


def _pytest(out: Path, threads: int, *options: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CNNAUDIT_CACHE": str(out / "cache")}
    (out / "cache").mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "example_audits", "-q", "-p", "no:cacheprovider", *options],
                   cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    return time.perf_counter() - begin


def _figures(doc: dict) -> list[tuple]:
    return [(t["nodeid"], t["outcome"], [(s["key"], s["mean"]) for s in (t["evidence"] or {}).get("scores", [])])
            for t in doc["tests"]]


def measure_shards(splits: list[int], threads: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        serial_s = _pytest(root / "serial", threads, f"--cnnaudit-json={root / 'serial' / 'r.json'}")
        serial = json.loads((root / "serial" / "r.json").read_text())
        out: dict = {"threads": threads, "tests": len(serial["tests"]), "serial_s": round(serial_s, 2), "splits": {}}
        for n in splits:
            shards = []
            for group in range(1, n + 1):
                path = root / f"split{n}" / f"g{group}" / "r.json"
                seconds = _pytest(path.parent, threads, f"--splits={n}", f"--group={group}", f"--cnnaudit-json={path}")
                shards.append((path, seconds))
            begin = time.perf_counter()
            merged_json = root / f"split{n}" / "merged" / "r.json"
            subprocess.run([sys.executable, "-m", "cnnaudit", "merge", *[str(p) for p, _ in shards], f"--shards={n}",
                            f"--json={merged_json}", f"--report={merged_json.with_suffix('.html')}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
            merge_s = time.perf_counter() - begin
            merged = json.loads(merged_json.read_text())
            times = [s for _, s in shards]
            out["splits"][str(n)] = {
                "shard_s": [round(s, 2) for s in times],
                "slowest_shard_s": round(max(times), 2),
                "machine_s": round(sum(times), 2),
                "merge_s": round(merge_s, 2),
                "wall_ratio": round((max(times) + merge_s) / serial_s, 2),
                "machine_ratio": round((sum(times) + merge_s) / serial_s, 2),
                "equals_serial": _figures(merged) == _figures(serial) and merged["verdict"] == serial["verdict"],
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", default="2,4")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures = measure_shards([int(n) for n in args.splits.split(",")], args.threads)
    emit(figures, args.out)


if __name__ == "__main__":
    main()
