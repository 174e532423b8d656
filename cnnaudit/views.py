"""The classic views, as uint8 ``(H,W,3)`` arrays recorded as evidence of the running test.

* :func:`filter_grid` — a conv layer's kernels as tiles (first-layer filters of a ResNet: 64 tiles of 7x7);
* :func:`feature_map_grid` — the first channels of a layer's output for one image;
* :func:`deepdream` — gradient ascent on a photograph's pixels to amplify what a layer sees.

Each function announces its result with ``evidence.notify(View(name, image))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from torch import nn

from cnnaudit import evidence, layouts
from cnnaudit.engine import AuditedModel
from cnnaudit.images import as_batch, display_rgb
from cnnaudit.layers import resolve_layer
from cnnaudit.maximize.loop import forward_to, per_image_normalised, placement
from cnnaudit.render import grid, to_rgb8

#: tiles smaller than this many pixels are enlarged by an integer factor (nearest neighbour)
MIN_TILE = 32


@dataclass(frozen=True)
class View:
    """A rendered classic view: ``image`` is uint8 ``(H,W,3)``."""

    name: str
    image: np.ndarray


def filter_grid(subject_or_model: Any, layer: str | None = None, *, limit: int = 64, columns: int = 8) -> np.ndarray:
    """The first ``limit`` kernels of a conv layer (default: the model's first ``Conv2d``), tiled.

    Kernels with 3 input channels are shown in colour, others as the grey mean over inputs;
    values map to ``0.5 + 0.5 * w / max|W|`` with one scale for the whole layer, so a weak
    filter looks flat grey and zero is mid-grey.
    """
    is_model = isinstance(subject_or_model, nn.Module)
    model = subject_or_model if is_model else subject_or_model.model
    if layer is None:
        layer, module = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
        if module is None:
            raise ValueError("the model has no nn.Conv2d layer; pass layer= naming a layer with a (out, in, kh, kw) weight")
    else:
        module = resolve_layer(model, layer) if is_model else subject_or_model.module(layer)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        raise ValueError(f"layer {layer!r} ({type(module).__name__}) has no 4-D conv weight; pick a Conv2d layer")
    w = weight.detach().float().cpu()
    w = w if w.shape[1] == 3 else w.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    peak = w.abs().max()
    w = w[:limit]
    tiles = (0.5 + 0.5 * w / peak).clamp(0.0, 1.0) if peak > 0 else torch.full_like(w, 0.5)
    return _record(f"filters {layer}", grid(_enlarged(tiles), columns=min(columns, len(tiles))))


def feature_map_grid(subject: AuditedModel, image: Any, layer: str, *, limit: int = 64, columns: int = 8,
                     cmap: str = "viridis") -> np.ndarray:
    """The first ``limit`` channels of ``layer``'s output for one image, each scaled by its own min..max (a token
    grid or channels-last output read as ``(N, C, h, w)``, see :mod:`cnnaudit.layouts`)."""
    batch = as_batch(image)[:1].to(**placement(subject))
    module = subject.module(layer)
    with subject.audit(), torch.no_grad():
        out = _layer_map(subject, layer, forward_to(subject, module, batch), batch)
    if out.ndim != 4:
        raise ValueError(f"layer {layer!r} outputs shape {tuple(out.shape)}; feature maps need an (N,C,h,w) output")
    maps = out[0, :limit].float().cpu()
    low = maps.flatten(1).amin(dim=1)[:, None, None]
    span = maps.flatten(1).amax(dim=1)[:, None, None] - low
    scaled = torch.where(span > 0, (maps - low) / span.clamp(min=1e-12), torch.zeros_like(maps))
    colored = torch.from_numpy(colormaps[cmap](scaled.numpy())[..., :3]).permute(0, 3, 1, 2).float()
    return _record(f"feature maps {layer}", grid(_enlarged(colored), columns=min(columns, len(colored))))


def deepdream(subject: AuditedModel, image: Any, layer: str, *, channel: int | None = None, steps: int = 10,
              lr: float = 0.02, octaves: int = 3, octave_scale: float = 1.4, jitter: int = 4, seed: int = 0) -> np.ndarray:
    """DeepDream: ascend ``J = mean(a^2)`` over ``layer``'s output (or ``mean(a[channel])``, ``a`` read as
    ``(N, C, h, w)``, see :mod:`cnnaudit.layouts`) from a photograph.

    Octaves from ``1/octave_scale^(octaves-1)`` of the size up to full size, the detail added so
    far carried up between them; ``steps`` per octave of ``x <- clamp(x + lr * g / (rms(g) + 1e-5), 0, 1)``
    with ``g = dJ/dx`` taken on the image rolled by a seeded random ``±jitter`` px shift.
    """
    base = as_batch(image)[:1].to(**placement(subject))
    height, width = base.shape[-2:]
    module = subject.module(layer)
    generator = torch.Generator().manual_seed(seed)
    sizes = [(round(height / octave_scale**k), round(width / octave_scale**k)) for k in range(octaves - 1, -1, -1)]
    detail = torch.zeros(1, base.shape[1], *sizes[0], device=base.device, dtype=base.dtype)
    with subject.audit():
        for size in sizes:
            octave = F.interpolate(base, size=size, mode="bilinear", align_corners=False, antialias=True)
            detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
            x = (octave + detail).clamp(0.0, 1.0)
            for _ in range(steps):
                x = _dream_step(subject, module, layer, x, channel, lr, jitter, generator)
            detail = x - octave
    return _record(f"deepdream {layer}" + ("" if channel is None else f" channel {channel}"), to_rgb8(display_rgb(x)[0].cpu()))


def _dream_step(subject: AuditedModel, module: nn.Module, layer: str, x: torch.Tensor, channel: int | None, lr: float,
                jitter: int, generator: torch.Generator) -> torch.Tensor:
    dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator))
    shifted = torch.roll(x, shifts=(dy, dx), dims=(2, 3)).requires_grad_(True)
    out = forward_to(subject, module, shifted)
    objective = out.pow(2).mean() if channel is None else _layer_map(subject, layer, out, shifted)[:, channel].mean()
    (grad,) = torch.autograd.grad(objective, shifted)
    grad = torch.roll(per_image_normalised(grad), shifts=(-dy, -dx), dims=(2, 3))
    return (x + lr * grad).clamp(0.0, 1.0).detach()


def _layer_map(subject: AuditedModel, layer: str, out: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``layer``'s output ``out`` for ``images`` read as ``(N, C, h, w)`` (:func:`cnnaudit.layouts.reader`)."""
    read = layouts.reader(subject.reshape_for(layer), out, subject.prepare(images).shape[-2:], layer)
    return read(out) if read is not None else out


def _enlarged(tiles: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour enlargement of ``(N,3,h,w)`` tiles to at least ``MIN_TILE`` px high."""
    factor = max(1, MIN_TILE // tiles.shape[-2])
    return tiles.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3) if factor > 1 else tiles


def _record(name: str, image: np.ndarray) -> np.ndarray:
    evidence.notify(View(name, image))
    return image
