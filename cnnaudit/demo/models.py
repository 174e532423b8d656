"""Small CNNs trained on the people benchmark: deterministic, under a minute on a CPU, shipped or cached.

``trained_model("clean")`` learns from the curated ``"balanced"`` split and ``trained_model("biased")``
from the scraped ``"biased"`` one; architecture, initialisation, data order, loss and optimiser are
the same. The hair cue is learnt within an epoch; the faint tool textures take a few. The clean model,
for which hair carries no information, goes on to learn both tools; the biased one fits all of its
data with hair, and nothing in it pulls the model onto the tools.

Three trained models ship with the package (:data:`SHIPPED`, ``cnnaudit/demo/weights/``, 65 kB
each), so the example audits never train and give the same figures on every machine:
:func:`shipped_model` loads them with ``torch.load(..., weights_only=True)`` and ``python -m
cnnaudit.demo train`` regenerates them: bit-identical with the torch version and thread count that
``weights/manifest.json`` records; with others training takes another path, like another seed (the
README's per-seed table shows how far that moves the figures). The manifest also records the recipe
each was trained with; a test checks that it is still the current one.

Any other configuration is trained on demand by :func:`trained_model` and cached under
:func:`cache_dir` in ``people-<variant>-<hash>.pt``, the hash covering the scene and training
configuration, the variant and the torch major.minor version; files are written atomically and
loaded back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import torch
from torch import nn

from cnnaudit.demo.data import CLASSES, SceneSpec, synthesize
from cnnaudit.progress import progress

VARIANTS: dict[str, str] = {"clean": "balanced", "biased": "biased"}
"""Model variant -> the training split it learns from."""

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

_FORMAT = 3  # bump when the architecture or the training loop changes meaning


@dataclass(frozen=True)
class TrainSpec:
    """Architecture and training schedule (part of the cache key).

    The recipe is measured on seeds 0 to 7 with 1 and 2 threads (``python -m cnnaudit.demo seeds``,
    the README's per-seed table): every clean model passes every example audit and every biased model
    fails every attention audit. The default seed is the released model's; nothing about it is special.
    """

    n_train: int = 2000
    epochs: int = 14
    batch_size: int = 25
    max_lr: float = 3e-3
    widths: tuple[int, ...] = (8, 16, 32, 32)
    seed: int = 0


@dataclass(frozen=True)
class Shipped:
    """A model that ships with the package: which variant, trained with which recipe, and its role."""

    variant: str
    train: TrainSpec
    role: str


SHIPPED: dict[str, Shipped] = {
    "clean": Shipped("clean", TrainSpec(), "the released model: trained on the curated, balanced data"),
    "candidate": Shipped("clean", TrainSpec(seed=1), "the next release's candidate: the same recipe retrained with another seed"),
    "biased": Shipped("biased", TrainSpec(), "a candidate trained on scraped data in which gender goes with the class"),
}
"""The shipped models by name (``shipped_model(name)``)."""


class PeopleCNN(nn.Module):
    """Takes ``[0, 1]`` images: ``(x - 0.5) / 0.25`` -> ``features`` (conv3x3 + ReLU blocks with a 2x2
    max-pool between them, so four blocks map 64 px to an 8x8 grid) -> global average ``pool`` ->
    linear ``classifier``. Convolutions start from Kaiming-normal weights and zero biases. Weights and
    activations are kept channels-last, which runs these narrow convolutions about twice as fast on a CPU.

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
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x - 0.5) / 0.25).contiguous(memory_format=torch.channels_last)
        return self.classifier(self.pool(self.features(x)).flatten(1))


def shipped_model(name: str = "clean") -> PeopleCNN:
    """The shipped model ``name`` (a key of :data:`SHIPPED`) in eval mode, loaded from the package's
    ``weights/`` folder with ``weights_only=True``: no training, the same weights on every machine."""
    if name not in SHIPPED:
        raise ValueError(f"unknown shipped model {name!r}; expected one of {sorted(SHIPPED)}")
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed package; regenerate it with `python -m cnnaudit.demo train`"
        )
    model = PeopleCNN(SHIPPED[name].train.widths)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def write_shipped(folder: Path = WEIGHTS_DIR) -> dict[str, dict]:
    """Train every model of :data:`SHIPPED` and write ``<name>.pt`` and ``manifest.json`` into ``folder``
    (atomically); returns the manifest: per model its role, recipe, file sha256, torch version and threads."""
    manifest = {}
    with progress(len(SHIPPED), "shipped models", unit="trained") as bar:
        for name, shipped in SHIPPED.items():
            model = train_model(shipped.variant, train=shipped.train)
            path = folder / f"{name}.pt"
            _write_atomic(path, functools.partial(torch.save, model.state_dict()))
            manifest[name] = {
                "role": shipped.role,
                "recipe": recipe(shipped.variant, SceneSpec(), shipped.train),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "torch": str(torch.__version__),
                "threads": torch.get_num_threads(),
            }
            bar.advance()
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    _write_atomic(folder / "manifest.json", lambda handle: handle.write(text.encode()))
    return manifest


def trained_model(
    variant: str = "clean", *, scene: SceneSpec = SceneSpec(), train: TrainSpec = TrainSpec(), cache: bool = True
) -> PeopleCNN:
    """The ``variant`` model (``"clean"`` or ``"biased"``) in eval mode: loaded from the cache when a
    file for this exact configuration exists, otherwise trained (under a minute on a CPU) and, with
    ``cache=True``, stored there."""
    path = cache_path(variant, scene, train)
    if cache and path.is_file():
        model = PeopleCNN(train.widths)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    model = train_model(variant, scene=scene, train=train)
    if cache:
        _write_atomic(path, functools.partial(torch.save, model.state_dict()))
    return model


def train_model(variant: str, *, scene: SceneSpec = SceneSpec(), train: TrainSpec = TrainSpec()) -> PeopleCNN:
    """Train the ``variant`` model from scratch on ``train.n_train`` images of its split: per-class
    sigmoid cross-entropy on the multi-hot targets, Adam under a one-cycle learning rate peaking at
    ``max_lr``, batches in a seeded random order, the
    initialisation seeded with ``train.seed`` and deterministic algorithms on. One configuration gives
    bit-identical weights on every run with the same torch version, CPU and thread count. The global
    RNG state and the deterministic-algorithms setting are restored afterwards. The batches done show on
    one updating terminal line (:mod:`cnnaudit.progress`)."""
    _check_variant(variant)
    people = synthesize(train.n_train, VARIANTS[variant], seed=train.seed, spec=scene)
    images, targets = people.images, people.targets
    with _deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(train.seed)
        order_generator = torch.Generator().manual_seed(train.seed)
        model = PeopleCNN(train.widths)
        optimiser = torch.optim.Adam(model.parameters(), lr=train.max_lr)
        steps_per_epoch = -(-len(images) // train.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=train.max_lr, total_steps=train.epochs * steps_per_epoch, pct_start=0.15
        )
        model.train()
        what = f"train {variant} (seed {train.seed}), {train.epochs} epochs"
        with progress(train.epochs * steps_per_epoch, what, unit="batches") as bar:
            for _ in range(train.epochs):
                for batch in torch.randperm(len(images), generator=order_generator).split(train.batch_size):
                    loss = nn.functional.binary_cross_entropy_with_logits(model(images[batch]), targets[batch])
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    schedule.step()
                    bar.advance()
    return model.eval()


def recipe(variant: str, scene: SceneSpec, train: TrainSpec) -> dict:
    """Everything that determines the trained weights apart from the torch build and thread count."""
    _check_variant(variant)
    return {"format": _FORMAT, "variant": variant, "split": VARIANTS[variant], "scene": asdict(scene), "train": asdict(train)}


def config_hash(variant: str, scene: SceneSpec, train: TrainSpec) -> str:
    """sha256 (first 16 hex digits) of the :func:`recipe` and the torch major.minor version."""
    config = {**recipe(variant, scene, train), "torch": ".".join(torch.__version__.split(".")[:2])}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """``$CNNAUDIT_CACHE``, else ``$XDG_CACHE_HOME/cnnaudit``, else ``~/.cache/cnnaudit``."""
    if os.environ.get("CNNAUDIT_CACHE"):
        return Path(os.environ["CNNAUDIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnnaudit"


def cache_path(variant: str, scene: SceneSpec = SceneSpec(), train: TrainSpec = TrainSpec()) -> Path:
    """Where the weights of this configuration are (or will be) cached."""
    return cache_dir() / f"people-{variant}-{config_hash(variant, scene, train)}.pt"


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; expected one of {sorted(VARIANTS)}")


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` for the block, then the previous setting."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(handle)`` into a temporary file in the same folder, then ``os.replace`` it into place: a
    concurrent reader (another xdist worker) sees no file or a complete one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; weights are package data and shared cache files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
