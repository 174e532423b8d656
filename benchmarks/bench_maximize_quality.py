"""How close activation maximisation gets to what a unit can reach: cnnaudit's settings against Lucent and
flashtorch, side by side on the same units and step budget; prints JSON.

Units:

* known optimum — ``red`` / ``blue``: ``relu(r - g - b)`` / ``relu(b - r - g)`` (a 1x1 conv; optimum 1.0,
  the pure colour); ``edge``: ``relu(Sobel-x)`` of the grey image (optimum: the best of vertical stripes
  ``1,1,0,0`` at each phase, about 2); ``pattern``: the centre neuron of ``relu(conv(x) - 9.75)`` whose
  weights are ``2P - 1`` for a 3x3 pattern ``P`` of ten ones (optimum 0.25, only within 0.25 of ``P``).
  The objective is the channel mean of the ReLU's output (the pattern unit: its centre neuron).
* real networks — ``--units`` channels of a seeded random resnet18's ``layer2.0.conv1`` and
  ``layer3.0.conv1`` (post-ReLU: ``layer2.0.relu`` is shared, so the conv's own output clamped at 0 is
  scored) and of the demo's shipped clean model (``features.relu2``, ``features.relu4``), a small CNN
  trained locally by this project.

Every method's final image is scored the same way: clamped to ``[0,1]``, no transforms, cnnaudit's
objective. ``fraction_of_best`` divides by the best any method reached on that unit; ``fraction_of_optimum``
by the known optimum. Lucent (``torch-lucent``) runs ``render_vis`` with its defaults (Fourier image,
Adam 0.05, standard transforms, ImageNet normalisation, upsampling to 224 px); flashtorch runs
``GradientAscent.optimize`` (grey start, normalised gradient on the conv's channel mean, lr 1, in
normalised space). Both peers get the model behind an ImageNet de-normalisation, so that their
normalised inputs mean the same image. Peers missing (``pip install -e '.[bench]'``) are reported as such.

Usage: ``python benchmarks/bench_maximize_quality.py [--steps 128] [--size 64] [--units 8]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torchvision
from torch import nn

from cnnaudit import Subject
from cnnaudit.maximize import maximize, objectives
from cnnaudit.maximize.loop import evaluate, forward_to

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
SOBEL = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])

CNNAUDIT_METHODS = {
    "default (pixel)": {},
    "pixel, annealed only": {"ascent": "annealed"},  # the default's two runs, each alone
    "pixel, plain only": {"ascent": "plain"},  # (plain only: the default before annealing)
    "pixel, no leak": {"leak": 0.0},  # shows what the leak at the objective's ReLU changes
    "fourier": {"param": "fourier"},
    "fourier, no transforms": {"param": "fourier", "transforms": "none"},
    "multiscale": {"param": "pixel", "schedule": "multiscale"},
}


@dataclass
class Unit:
    """One unit to maximise: ``model`` (on ``[0,1]`` images), the ReLU-output ``layer`` and ``channel``."""

    family: str
    name: str
    model: nn.Module
    layer: str
    channel: int
    objective: str = "channel"
    conv: str | None = None  #: the Conv2d feeding ``layer`` (flashtorch hooks convolutions only)
    optimum: float | None = None


class Denormalised(nn.Module):
    """``model(x * std + mean)``: the peers feed ImageNet-normalised images."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * STD + MEAN)


class ClampedConv(nn.Module):
    """``relu(conv(x))`` as a module of its own, so a conv's channel is scored after its ReLU."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv, self.relu = conv, nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


def colour_unit(name: str, weights: list[float]) -> Unit:
    conv = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weights).view(1, 3, 1, 1))
        conv.bias.zero_()
    return Unit("known optimum", name, nn.Sequential(conv, nn.ReLU()).eval(), "1", 0, conv="0", optimum=1.0)


def edge_unit(size: int) -> Unit:
    conv = nn.Conv2d(3, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(SOBEL.expand(1, 3, 3, 3) / 3)
    model = nn.Sequential(conv, nn.ReLU()).eval()
    columns = torch.arange(size)
    with torch.no_grad():  # vertical stripes 1,1,0,0 at each of the four phases
        stripes = [((columns + phase) % 4 < 2).float().expand(1, 3, size, size) for phase in range(4)]
        optimum = max(model(image).mean().item() for image in stripes)
    return Unit("known optimum", "edge", model, "1", 0, conv="0", optimum=optimum)


def pattern_unit() -> Unit:
    pattern = torch.zeros(3, 3, 3)
    pattern[0] = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    pattern[1] = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    pattern[2, 1, 1] = 1.0
    conv = nn.Conv2d(3, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(2 * pattern[None] - 1)
        conv.bias.fill_(-9.75)
    return Unit("known optimum", "pattern", nn.Sequential(conv, nn.ReLU()).eval(), "1", 0, objective="neuron",
                conv="0", optimum=0.25)


def network_units(per_layer: int) -> list[Unit]:
    from cnnaudit import demo

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    units = []
    for block in ("layer2", "layer3"):
        layer = getattr(resnet, block)[0]
        layer.conv1 = ClampedConv(layer.conv1)  # the block's relu is shared by both convs: score conv1's own
        units += [Unit("random resnet18", f"{block}.0.conv1 #{c}", resnet, f"{block}.0.conv1.relu", c,
                       conv=f"{block}.0.conv1.conv") for c in range(per_layer)]
    clean = demo.shipped_model("clean").eval()
    for layer, conv in (("features.relu2", "features.conv2"), ("features.relu4", "features.conv4")):
        units += [Unit("trained demo CNN", f"{layer} #{c}", clean, layer, c, conv=conv) for c in range(per_layer)]
    return units


def score(unit: Unit, image: torch.Tensor) -> float:
    """The unit's objective on ``image`` ``(1,3,S,S)``, clamped to ``[0,1]``, no transforms."""
    subject = Subject(unit.model, device="cpu", cache=False)
    module = subject.module(unit.layer)
    with torch.no_grad():
        n_outputs = forward_to(subject, module, image).shape[1]
    objective = objectives.build(unit.objective, [unit.channel], n_outputs, classes=None, class_index=None, offset=(0, 0))
    return float(evaluate(subject, module, objective, image.clamp(0, 1))[0])


def run_cnnaudit(unit: Unit, steps: int, size: int, kwargs: dict) -> torch.Tensor:
    """``maximize`` with ``kwargs``; ``leak`` (not an argument of ``maximize``) overrides ``loop.LEAK``."""
    from cnnaudit.maximize import loop

    kwargs = dict(kwargs)
    default_leak, loop.LEAK = loop.LEAK, kwargs.pop("leak", loop.LEAK)
    try:
        subject = Subject(unit.model, device="cpu", cache=False)
        vis = maximize(subject, unit.layer, [unit.channel], objective=unit.objective, steps=steps, size=size, **kwargs)
    finally:
        loop.LEAK = default_leak
    return vis.images


def run_lucent(unit: Unit, steps: int, size: int) -> torch.Tensor:
    from lucent.optvis import objectives, param, render

    model = Denormalised(unit.model).eval()
    name = "model_" + unit.layer.replace(".", "_")
    objective = (objectives.neuron(name, unit.channel) if unit.objective == "neuron"
                 else objectives.channel(name, unit.channel))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = render.render_vis(model, objective, param_f=lambda: param.image(size), thresholds=(steps,),
                                   progress=False, show_image=False)
    return torch.from_numpy(images[-1]).permute(0, 3, 1, 2)


def run_flashtorch(unit: Unit, steps: int, size: int) -> torch.Tensor:
    from flashtorch.activmax import GradientAscent

    model = Denormalised(unit.model).eval()
    conv = dict(unit.model.named_modules())[unit.conv]
    np.random.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ascent = GradientAscent(model, img_size=size, lr=1.0)
        normalised = ascent.optimize(conv, unit.channel, num_iter=steps)[-1].detach()
    return normalised * STD + MEAN


def methods(peers: bool) -> dict[str, Callable[[Unit, int, int], torch.Tensor]]:
    found: dict[str, Callable[[Unit, int, int], torch.Tensor]] = {
        name: (lambda unit, steps, size, kwargs=kwargs: run_cnnaudit(unit, steps, size, kwargs))
        for name, kwargs in CNNAUDIT_METHODS.items()
    }
    if peers:
        found["Lucent defaults"] = run_lucent
        found["flashtorch"] = run_flashtorch
    return found


def measure_quality(steps: int = 128, size: int = 64, per_layer: int = 8, peers: bool = True) -> dict:
    """Per unit and method: value reached, fraction of the best and of the optimum, seconds; summaries per family."""
    torch.set_grad_enabled(True)
    units = [colour_unit("red", [1.0, -1.0, -1.0]), colour_unit("blue", [-1.0, -1.0, 1.0]), edge_unit(size),
             pattern_unit(), *network_units(per_layer)]
    available = methods(peers)
    missing = []
    for peer, module in (("Lucent defaults", "lucent.optvis.render"), ("flashtorch", "flashtorch.activmax")):
        try:
            __import__(module)
        except ImportError:
            available.pop(peer, None)
            missing.append(peer)
    rows = []
    for unit in units:
        values, seconds = {}, {}
        for name, method in available.items():
            begin = time.perf_counter()
            image = method(unit, steps, size)
            seconds[name] = time.perf_counter() - begin
            values[name] = score(unit, image)
        best = max(values.values())
        rows.append({
            "family": unit.family, "unit": unit.name, "optimum": unit.optimum, "best": round(best, 5),
            "value": {m: round(v, 5) for m, v in values.items()},
            "fraction_of_best": {m: round(v / best, 3) if best > 0 else None for m, v in values.items()},
            "fraction_of_optimum": {m: round(v / unit.optimum, 3) for m, v in values.items()} if unit.optimum else None,
            "seconds": {m: round(s, 3) for m, s in seconds.items()},
        })
    summary = {}
    for family in dict.fromkeys(r["family"] for r in rows):
        live = [r for r in rows if r["family"] == family and r["best"] > 1e-6]
        summary[family] = {
            m: {"mean_fraction_of_best": round(statistics.mean(r["fraction_of_best"][m] for r in live), 3) if live else None,
                "min_fraction_of_best": round(min(r["fraction_of_best"][m] for r in live), 3) if live else None,
                "seconds_per_unit": round(statistics.mean(r["seconds"][m] for r in rows if r["family"] == family), 3)}
            for m in available
        }
    return {"steps": steps, "size": size, "units_per_layer": per_layer, "methods": list(available),
            "peers_missing": missing, "summary": summary, "units": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--units", type=int, default=8, help="units per layer of the real networks")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = measure_quality(args.steps, args.size, args.units, peers=not args.no_peers)
    print(json.dumps({"benchmark": "maximize_quality", "torch": torch.__version__, **figures}, indent=1))


if __name__ == "__main__":
    main()
