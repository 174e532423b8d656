"""Activation maximisation: all channels as one batch vs a one-channel-at-a-time loop (flashtorch style).

Both sides run the same settings on a seeded, randomly initialised ResNet-18 (no downloaded
weights), interleaved round by round (``timing.interleaved``), and produce the same images up to
float32 rounding (the per-unit random streams make batching invisible; in float64 they are
bit-identical, see tests/test_maximize.py). Rounding differences between batched and single
convolutions can grow over Adam's first, sign-like steps, so the result reports the image
differences next to both times and their ratio.

    python benchmarks/bench_maximize.py                     # CPU, layer2, 64 channels, 128 px, 10 steps
    python benchmarks/bench_maximize.py --device cuda --steps 64
"""

from __future__ import annotations

import argparse
import json

import torch
from torchvision.models import resnet18

import cnnaudit as ca
from cnnaudit.subject import resolve_device
from cnnaudit.maximize import Visualizations, maximize
from timing import interleaved, spread

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def measure_maximize(device: torch.device, *, layer: str = "layer2", channels: int = 64, steps: int = 10,
                     size: int = 128, param: str = "fourier", repeats: int = 3) -> dict:
    """Seconds for ``channels`` channels of ``layer`` batched and one at a time (median of ``repeats`` rounds)."""
    torch.manual_seed(0)
    subject = ca.Subject(resnet18(weights=None), device=device, preprocess=ca.normalize(IMAGENET_MEAN, IMAGENET_STD))
    units = list(range(channels))
    settings = dict(steps=steps, size=size, param=param, seed=0)
    outputs: dict[str, list[Visualizations]] = {}

    def batched() -> None:
        outputs["batched"] = [maximize(subject, layer, units, batch_size=channels, **settings)]

    def one_at_a_time() -> None:
        outputs["one_at_a_time"] = [maximize(subject, layer, [unit], **settings) for unit in units]

    times = interleaved({"batched": batched, "one_at_a_time": one_at_a_time}, subject.device, repeats)
    together = outputs["batched"][0].images
    differences = sorted((single.images[0] - together[k]).abs().max().item() for k, single in enumerate(outputs["one_at_a_time"]))
    seconds = spread(times)
    return {
        "model": "resnet18 (random init, seed 0)",
        "layer": layer,
        "channels": channels,
        "size": size,
        "steps": steps,
        "param": param,
        "device": str(subject.device),
        "repeats": repeats,
        "seconds": seconds,
        "ratio": round(seconds["one_at_a_time"]["median"] / seconds["batched"]["median"], 2),
        "max_abs_image_difference": differences[-1],
        "median_of_per_channel_max_difference": differences[len(differences) // 2],
        "channels_differing_by_more_than_1e-3": sum(d > 1e-3 for d in differences),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--layer", default="layer2")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--param", default="fourier", choices=("fourier", "pixel"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = measure_maximize(resolve_device(args.device), layer=args.layer, channels=args.channels, steps=args.steps,
                              size=args.size, param=args.param, repeats=args.repeats)
    print(json.dumps({"benchmark": "maximize_batched_vs_one_at_a_time", **result, "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()
