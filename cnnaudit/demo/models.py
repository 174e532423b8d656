"""Small CNNs trained on the people benchmark, deterministically, on the CPU, cached by configuration.

``trained_model("clean")`` learns from the ``"balanced"`` split, ``trained_model("biased")`` from the
``"biased"`` one; everything else (architecture, initialisation, data order, optimiser) is the same.
Weights are cached under :func:`cache_dir` in a file named by a hash of the scene, training and
model configuration, the variant and the torch major.minor version, and loaded back with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from cnnaudit.demo.data import CLASSES, SceneSpec, synthesize

VARIANTS: dict[str, str] = {"clean": "balanced", "biased": "biased"}
"""Model variant -> the training split it learns from."""

_FORMAT = 1  # bump when the architecture or the training loop changes meaning


@dataclass(frozen=True)
class TrainSpec:
    """Architecture and training schedule (part of the cache key)."""

    n_train: int = 2000
    epochs: int = 8
    batch_size: int = 50
    max_lr: float = 3e-3
    widths: tuple[int, ...] = (8, 16, 32, 32)
    seed: int = 0


class PeopleCNN(nn.Module):
    """Takes ``[0, 1]`` images: ``(x - 0.5) / 0.25`` -> ``features`` (conv3x3-ReLU blocks with a 2x2
    max-pool between them, so four blocks map 64 px to an 8x8 grid) -> global average ``pool`` ->
    linear ``classifier``. Convolutions start from Kaiming-normal weights and zero biases.

    Layer names: ``features.conv{k}``, ``features.relu{k}``, ``features.pool{k}``; ``"features"`` is the
    last block's ReLU output, the natural Grad-CAM layer.
    """

    def __init__(self, widths: tuple[int, ...] = TrainSpec.widths, n_classes: int = len(CLASSES)) -> None:
        super().__init__()
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        channels = 3
        for k, width in enumerate(widths, start=1):
            blocks[f"conv{k}"] = nn.Conv2d(channels, width, kernel_size=3, padding=1)
            blocks[f"relu{k}"] = nn.ReLU()
            if k < len(widths):
                blocks[f"pool{k}"] = nn.MaxPool2d(2)
            channels = width
        self.features = nn.Sequential(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, n_classes)
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features((x - 0.5) / 0.25)).flatten(1))


def trained_model(
    variant: str = "clean", *, scene: SceneSpec = SceneSpec(), train: TrainSpec = TrainSpec(), cache: bool = True
) -> PeopleCNN:
    """The ``variant`` model (``"clean"`` or ``"biased"``) in eval mode: loaded from the cache when a
    file for this exact configuration exists, otherwise trained (seconds on a CPU) and cached."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    path = cache_dir() / f"people-{variant}-{config_hash(variant, scene, train)}.pt"
    model = PeopleCNN(train.widths)
    if cache and path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        model = train_model(variant, scene=scene, train=train)
        if cache:
            _save_atomic(model.state_dict(), path)
    return model.eval()


def train_model(variant: str, *, scene: SceneSpec = SceneSpec(), train: TrainSpec = TrainSpec()) -> PeopleCNN:
    """Train the ``variant`` model from scratch on ``train.n_train`` images of its split: cross-entropy,
    Adam with a one-cycle learning rate (peak ``max_lr``), batches in a seeded random order;
    ``torch.manual_seed(train.seed)`` and deterministic algorithms, so one configuration gives
    bit-identical weights on every run on the same machine, torch version and thread count."""
    people = synthesize(train.n_train, VARIANTS[variant], seed=train.seed, spec=scene)
    images, targets = people.images, people.targets
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        generator = torch.Generator().manual_seed(train.seed)
        torch.manual_seed(train.seed)
        model = PeopleCNN(train.widths)
        optimiser = torch.optim.Adam(model.parameters(), lr=train.max_lr)
        steps_per_epoch = -(-len(images) // train.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=train.max_lr, total_steps=train.epochs * steps_per_epoch, pct_start=0.15
        )
        model.train()
        for _ in range(train.epochs):
            order = torch.randperm(len(images), generator=generator)
            for start in range(0, len(order), train.batch_size):
                batch = order[start : start + train.batch_size]
                loss = nn.functional.cross_entropy(model(images[batch]), targets[batch])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
    finally:
        torch.use_deterministic_algorithms(previous)
    return model.eval()


def config_hash(variant: str, scene: SceneSpec, train: TrainSpec) -> str:
    """sha256 (first 16 hex digits) of everything that determines the trained weights."""
    config = {
        "format": _FORMAT,
        "variant": variant,
        "split": VARIANTS[variant],
        "scene": asdict(scene),
        "train": asdict(train),
        "torch": ".".join(torch.__version__.split(".")[:2]),
    }
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """``$CNNAUDIT_CACHE``, else ``$XDG_CACHE_HOME/cnnaudit``, else ``~/.cache/cnnaudit``."""
    if os.environ.get("CNNAUDIT_CACHE"):
        return Path(os.environ["CNNAUDIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnnaudit"


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write to a temporary file in the same folder, then ``os.replace`` it into place, so a
    concurrent reader sees either no file or a complete one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
