"""Side-by-side timing: variants run interleaved in random order each round, warm-ups excluded, medians reported."""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a timer read measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(variants: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                warmup: int = 1, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each variant in ``repeats`` rounds, after ``warmup`` untimed rounds.

    Each round runs every variant once, in a seeded random order: slow drifts of the machine
    touch all variants alike, and no variant always follows the same one (on a CPU the variant
    after a memory-hungry one can run 30% faster, on pages the allocator already holds).
    """
    names = list(variants)
    order = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        order.shuffle(names)
        for name in names:
            synchronize(device)
            start = time.perf_counter()
            variants[name]()
            synchronize(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def spread(times: dict[str, list[float]], scale: float = 1.0) -> dict[str, dict[str, float]]:
    """Median, fastest and slowest time of each variant, in seconds times ``scale``, to 3 decimals."""
    return {
        name: {"median": round(scale * statistics.median(values), 3), "min": round(scale * min(values), 3),
               "max": round(scale * max(values), 3)}
        for name, values in times.items()
    }


def per_image_ms(times: dict[str, list[float]], images: int) -> dict[str, dict[str, float]]:
    """Median, fastest and slowest milliseconds per image of each variant."""
    return spread(times, scale=1000 / images)


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, object]:
    """Where the figures came from."""
    import torchvision

    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
    }


def emit(figures: dict, out: Path | None) -> None:
    """Print ``figures`` as JSON, and write them to ``out`` when given."""
    text = json.dumps(figures, indent=1)
    if out:
        out.write_text(text)
    print(text)
