"""Every unit, not a sample: how close each of cnnaudit's maximisation settings gets to the best of them;
prints JSON.

``bench_maximize_quality.py`` compares with the peers on a few units per layer (Lucent takes 28 s per
resnet18 unit). This sweep asks the issue's question of every live unit of the layers below: does the
default reach at least 0.9 of the best value any of cnnaudit's settings reaches on that unit?

Layers: ``features.relu1``, ``relu2`` and ``relu4`` of the three shipped demo CNNs (trained locally by
this project; every channel: 8 + 16 + 32 each) and ``--resnet-units`` channels of a seeded random resnet18's
``layer2.0.relu`` and ``layer3.1.relu``. Each setting optimises all of a layer's units in one call (same
steps, size and seed); the value is ``vis.achieved``, the objective on the final untransformed image.
A unit is live when some setting drives it above 1e-6. Per layer and setting: the mean and min of
``value / best`` over the live units and how many are below 0.9; per setting: seconds per unit.

Usage: ``python benchmarks/bench_maximize_sweep.py [--steps 128] [--size 64] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torchvision
from torch import nn

from cnnaudit import Subject, demo
from cnnaudit.maximize import maximize

SETTINGS = {
    "default": {},
    "annealed only": {"ascent": "annealed"},
    "plain only": {"ascent": "plain"},
    "fourier": {"param": "fourier"},
    "fourier, no transforms": {"param": "fourier", "transforms": "none"},
    "multiscale": {"schedule": "multiscale"},
}
LIVE, GOOD = 1e-6, 0.9


def layers(resnet_units: int) -> list[tuple[str, nn.Module, str, list[int]]]:
    """``(model name, model, layer, channels)`` of the sweep."""
    found = []
    for name in demo.SHIPPED:
        model = demo.shipped_model(name).eval()
        for layer, conv in (("features.relu1", model.features.conv1), ("features.relu2", model.features.conv2),
                            ("features.relu4", model.features.conv4)):
            found.append((name, model, layer, list(range(conv.out_channels))))
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    found += [("random resnet18", resnet, layer, list(range(resnet_units))) for layer in ("layer2.0.relu", "layer3.1.relu")]
    return found


def sweep(steps: int, size: int, resnet_units: int) -> dict:
    rows, seconds, units = [], {s: 0.0 for s in SETTINGS}, 0
    for name, model, layer, channels in layers(resnet_units):
        values = {}
        for setting, kwargs in SETTINGS.items():
            begin = time.perf_counter()
            vis = maximize(Subject(model, device="cpu", cache=False), layer, channels, steps=steps, size=size, **kwargs)
            seconds[setting] += time.perf_counter() - begin
            values[setting] = vis.achieved
        units += len(channels)
        best = np.maximum.reduce(list(values.values()))
        live = best > LIVE
        fraction = {s: v[live] / best[live] for s, v in values.items()}
        rows.append({
            "model": name, "layer": layer, "units": len(channels), "live": int(live.sum()),
            "mean_fraction_of_best": {s: round(float(f.mean()), 3) for s, f in fraction.items()},
            "min_fraction_of_best": {s: round(float(f.min()), 3) for s, f in fraction.items()},
            "below_0.9": {s: int((f < GOOD).sum()) for s, f in fraction.items()},
            "units_below_0.9": {s: [c for c, ok in zip(np.array(channels)[live], f >= GOOD) if not ok]
                                for s, f in fraction.items()},
        })
    return {
        "steps": steps, "size": size, "settings": SETTINGS, "layers": rows,
        "live_units": sum(r["live"] for r in rows),
        "below_0.9": {s: sum(r["below_0.9"][s] for r in rows) for s in SETTINGS},
        "min_fraction_of_best": {s: min(r["min_fraction_of_best"][s] for r in rows) for s in SETTINGS},
        "seconds_per_unit": {s: round(t / units, 3) for s, t in seconds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--resnet-units", type=int, default=16, help="channels per resnet18 layer")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = sweep(args.steps, args.size, args.resnet_units)
    print(json.dumps({"benchmark": "maximize_sweep", "torch": torch.__version__, **figures}, indent=1, default=int))


if __name__ == "__main__":
    main()
