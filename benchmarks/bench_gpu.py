"""The GPU benchmark of ``gpu_check.sh`` (no peers needed): Grad-CAM throughput against the model's own
forward pass, and batched against one-at-a-time activation maximisation; prints JSON.

* ``gradcam`` — ResNet-50 (seeded random weights), ``--batch`` images of 224 px per call: milliseconds
  per image of the model's forward pass alone (``torch.no_grad``), of the floor any Grad-CAM needs
  (forward + one ``autograd.grad`` to ``layer4``) and of ``Subject.gradcam`` (maps at input
  resolution), interleaved round by round; ratios to the forward pass and to the floor.
* ``maximize`` — ``bench_maximize.measure_maximize``: 64 channels of ResNet-18's ``layer2`` as one
  batch against one at a time.

Usage: ``python benchmarks/bench_gpu.py [--device cuda] [--batch 64] [--repeats 5] [--out gpu.json]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.models import resnet50

import cnnaudit as ca
from bench_maximize import measure_maximize
from timing import emit, environment, interleaved, per_image_ms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def measure_gradcam(device: torch.device, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = resnet50(weights=None).eval().to(device)
    images = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    subject = ca.Subject(model, layer="layer4", device=device, cache=False, batch_size=batch,
                         preprocess=ca.normalize(MEAN, STD))
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    targets = torch.zeros(batch, dtype=torch.long, device=device)

    def forward() -> None:
        with torch.no_grad():
            model((images.to(device, non_blocking=True) - mean) / std)

    def floor() -> None:
        captured = {}
        handle = model.layer4.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
        try:
            logits = model((images.to(device, non_blocking=True) - mean) / std)
            torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), captured["a"])
        finally:
            handle.remove()

    def gradcam() -> None:
        subject.gradcam(images, target=0).maps

    times = interleaved({"forward": forward, "floor": floor, "gradcam": gradcam}, device, repeats)
    ms = per_image_ms(times, batch)
    return {"model": "resnet50 (random init, seed 0)", "batch": batch, "size": 224, "device": str(device),
            "repeats": repeats, "ms_per_image": ms,
            "gradcam_to_forward": round(ms["gradcam"]["median"] / ms["forward"]["median"], 2),
            "gradcam_to_floor": round(ms["gradcam"]["median"] / ms["floor"]["median"], 2),
            "images_per_second": round(1000 / ms["gradcam"]["median"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--maximize-steps", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    figures = {
        "environment": environment(device),
        "gradcam": measure_gradcam(device, args.batch, args.repeats),
        "maximize": measure_maximize(device, steps=args.maximize_steps, repeats=3),
    }
    emit(figures, args.out)


if __name__ == "__main__":
    main()
