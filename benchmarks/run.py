"""cnnaudit's benchmark: every figure a ratio (or a goal) measured side by side in one run; writes JSON.

    python benchmarks/run.py --device cuda --out results.json      # the full settings (a GPU machine)
    python benchmarks/run.py --device cpu --quick --out cpu.json     # a few minutes on a CPU

Sections (``--only`` picks some):

* ``gradcam`` — per model (``--models``, default resnet18 and resnet50), Grad-CAM time per image
  of cnnaudit against its floor, pytorch-grad-cam and captum (see ``bench_gradcam.py``); goals:
  within 1.15x of the floor, at least 2x faster than pytorch-grad-cam.
* ``scorecam`` — Score-CAM time per image against pytorch-grad-cam (same channels, same masked
  images per forward pass).
* ``maximize`` — activation maximisation of 64 channels batched against one at a time, the two
  interleaved round by round (``bench_maximize.py``); goal on a GPU: at least 8x.
* ``report`` — recording and writing the HTML report for 1,000 evidence images
  (``bench_report.py``); goal: the HTML in under 10 s.
* ``recording`` — a 200-test audit suite run by pytest with and without a report, and one audit of
  an 8000 px image: time, peak memory and image files (``bench_recording.py``; CPU only).

Needs the peers: ``pip install -e '.[bench]'`` (grad-cam, captum).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before torch imports tqdm: pytorch-grad-cam's Score-CAM draws progress bars

import torch

import bench_gradcam
from bench_maximize import measure_maximize
from bench_recording import measure_recording
from bench_report import measure_report
from cnnaudit.subject import resolve_device
from timing import environment

SECTIONS = ("gradcam", "scorecam", "maximize", "report", "recording")
GOAL_MAXIMIZE_SPEEDUP_ON_GPU = 8.0

# (full, quick) settings; command-line options override either
PROFILES = {
    "full": dict(batch=64, size=224, repeats=5, scorecam_images=8, scorecam_layer="layer4", scorecam_size=224,
                 scorecam_batch=64, maximize_steps=64, maximize_size=128, report_images=1000, recording_tests=200,
                 recording_big_side=8000),
    "quick": dict(batch=16, size=224, repeats=3, scorecam_images=2, scorecam_layer="layer2", scorecam_size=112,
                  scorecam_batch=64, maximize_steps=10, maximize_size=64, report_images=1000, recording_tests=200,
                  recording_big_side=8000),
}


def maximize_section(device: torch.device, steps: int, size: int, repeats: int) -> dict:
    """64 channels of resnet18's layer2 batched vs one at a time (``bench_maximize.py``), with the GPU goal."""
    result = measure_maximize(device, channels=64, steps=steps, size=size, repeats=repeats)
    result["goal_speedup_on_gpu_at_least"] = GOAL_MAXIMIZE_SPEEDUP_ON_GPU
    if device.type == "cuda":
        result["goal_met"] = result["ratio"] >= GOAL_MAXIMIZE_SPEEDUP_ON_GPU
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, help="write the JSON here (it is printed too)")
    parser.add_argument("--quick", action="store_true", help="smaller settings for a CPU run of a few minutes")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); 1 steadies timings on a busy machine")
    for name, value in PROFILES["full"].items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None, help=f"full: {value}, quick: {PROFILES['quick'][name]}")
    args = parser.parse_args()
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    profile = "quick" if args.quick else "full"
    settings = {name: getattr(args, name) if getattr(args, name) is not None else value for name, value in PROFILES[profile].items()}
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    results: dict[str, object] = {"benchmark": "cnnaudit", "profile": profile, "settings": settings, "environment": environment(device)}
    if "gradcam" in sections:
        results["gradcam"] = {
            model: bench_gradcam.measure_gradcam(model, device, settings["batch"], settings["size"], settings["repeats"])
            for model in args.models.split(",")
        }
    if "scorecam" in sections:
        results["scorecam"] = bench_gradcam.measure_scorecam(
            "resnet18", settings["scorecam_layer"], device, settings["scorecam_images"], settings["scorecam_size"],
            settings["scorecam_batch"], settings["repeats"],
        )
    if "maximize" in sections:
        results["maximize"] = maximize_section(device, settings["maximize_steps"], settings["maximize_size"], settings["repeats"])
    if "report" in sections:
        results["report"] = measure_report(settings["report_images"])
    if "recording" in sections:
        results["recording"] = measure_recording(settings["recording_tests"], settings["repeats"], settings["recording_big_side"])
    results["peers"] = peer_versions()
    results["wall_s"] = round(time.perf_counter() - started, 1)

    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


def peer_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for package in ("grad-cam", "captum"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


if __name__ == "__main__":
    main()
