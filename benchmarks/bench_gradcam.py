"""Grad-CAM time per image against its floor, measured side by side in one run; prints JSON.

* ``gradcam`` — ``Subject.gradcam(images)`` (predicted class) plus ``.maps`` (ReLU, bilinear
  upsampling to the input size, normalisation): everything a user gets.
* ``floor`` — the least work any Grad-CAM needs: the same host-to-device copy, normalisation and
  forward pass with frozen parameters, a hook making the layer's output a leaf, the predicted
  class score, and one ``torch.autograd.grad`` to the layer. No CAM work.
* ``plain_loop`` — what a hand-written loop usually does: parameters left requiring grad, a hook
  that stores the layer's output, ``autograd.grad`` to it.

Variants run interleaved (the order rotates each repeat) and each reports its median.
Usage: ``python benchmarks/bench_gradcam.py [--device auto] [--batch 32] [--repeats 10] [--size 224]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Callable

import torch
import torchvision

import cnnaudit as ca
from cnnaudit.subject import resolve_device

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_pass(model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor, device: torch.device, frozen: bool) -> torch.Tensor:
    preprocess = ca.normalize(MEAN, STD)
    recorded: list[torch.Tensor] = []

    def hook(module, inputs, output):
        if frozen:
            recorded.append(output.detach().requires_grad_())
            return recorded[-1]
        recorded.append(output)
        return None

    handle = layer.register_forward_hook(hook)
    try:
        output = model(preprocess(images.to(device, non_blocking=True)))
        scores = output.gather(1, output.argmax(1, keepdim=True))
        (gradient,) = torch.autograd.grad(scores.sum(), recorded[0])
    finally:
        handle.remove()
    return gradient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    subject = ca.Subject(model, layer="layer4", preprocess=ca.normalize(MEAN, STD), device=device, batch_size=args.batch)

    def gradcam() -> None:
        subject.gradcam(images).maps

    def floor() -> None:
        parameters = list(model.parameters())
        for p in parameters:
            p.requires_grad_(False)
        try:
            floor_pass(model, model.layer4, images, device, frozen=True)
        finally:
            for p in parameters:
                p.requires_grad_(True)

    def plain_loop() -> None:
        floor_pass(model, model.layer4, images, device, frozen=False)

    variants: dict[str, Callable[[], None]] = {"gradcam": gradcam, "floor": floor, "plain_loop": plain_loop}
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for repeat in range(args.warmup + args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            variants[name]()
            synchronize(device)
            if repeat >= args.warmup:
                times[name].append(time.perf_counter() - start)

    per_image_ms = {name: 1000 * statistics.median(values) / args.batch for name, values in times.items()}
    print(
        json.dumps(
            {
                "benchmark": "gradcam_vs_floor",
                "model": "resnet18",
                "layer": "layer4",
                "device": str(device),
                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "batch": args.batch,
                "size": args.size,
                "repeats": args.repeats,
                "ms_per_image": {name: round(value, 4) for name, value in per_image_ms.items()},
                "ratio_gradcam_to_floor": round(per_image_ms["gradcam"] / per_image_ms["floor"], 4),
                "ratio_gradcam_to_plain_loop": round(per_image_ms["gradcam"] / per_image_ms["plain_loop"], 4),
                "goal_ratio_to_floor": 1.15,
                "torch": torch.__version__,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
