"""Activation maximisation: all channels as one batch vs a one-channel-at-a-time loop (flashtorch style).

Both sides run the same settings on a seeded, randomly initialised ResNet-18 (no downloaded
weights) and produce the same images up to float32 rounding (the per-unit random streams make
batching invisible; in float64 they are bit-identical, see tests/test_maximize.py). Rounding
differences between batched and single convolutions can grow over Adam's first, sign-like
steps, so the JSON line reports the image differences next to both times and their ratio.

    python benchmarks/bench_maximize.py                     # CPU, layer2, 64 channels, 128 px, 10 steps
    python benchmarks/bench_maximize.py --device cuda --steps 64
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torchvision.models import resnet18

import cnnaudit as ca
from cnnaudit.maximize import maximize

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--layer", default="layer2")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--param", default="fourier", choices=("fourier", "pixel"))
    args = parser.parse_args()

    torch.manual_seed(0)
    subject = ca.Subject(resnet18(weights=None), device=args.device, preprocess=ca.normalize(IMAGENET_MEAN, IMAGENET_STD))
    channels = list(range(args.channels))
    settings = dict(steps=args.steps, size=args.size, param=args.param, seed=0)
    maximize(subject, args.layer, [0, 1], steps=1, size=args.size, param=args.param)  # warm-up

    _synchronize(subject.device)
    start = time.perf_counter()
    batched = maximize(subject, args.layer, channels, batch_size=len(channels), **settings)
    _synchronize(subject.device)
    batched_s = time.perf_counter() - start

    start = time.perf_counter()
    singles = [maximize(subject, args.layer, [channel], **settings) for channel in channels]
    _synchronize(subject.device)
    loop_s = time.perf_counter() - start

    differences = [(single.images[0] - batched.images[k]).abs().max().item() for k, single in enumerate(singles)]
    print(json.dumps({
        "benchmark": "maximize_batched_vs_one_at_a_time",
        "model": "resnet18 (random init, seed 0)",
        "layer": args.layer,
        "channels": len(channels),
        "size": args.size,
        "steps": args.steps,
        "param": args.param,
        "device": str(subject.device),
        "threads": torch.get_num_threads(),
        "batched_s": round(batched_s, 3),
        "one_at_a_time_s": round(loop_s, 3),
        "ratio": round(loop_s / batched_s, 2),
        "max_abs_image_difference": max(differences),
        "median_of_per_channel_max_difference": sorted(differences)[len(differences) // 2],
        "channels_differing_by_more_than_1e-3": sum(d > 1e-3 for d in differences),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
