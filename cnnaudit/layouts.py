"""Layer-output layouts: how a recorded activation becomes the ``(N, C, h, w)`` map the CAM formulas read.

For a model input of ``(H, W)`` pixels, a layer output is read as (:func:`infer`):

* ``(N, C, h, w)`` — as it is (every CNN layer), whenever dims 2-3 are a plausible grid, and also
  when no reading fits (the layout cnnaudit always assumed);
* ``(N, h, w, C)`` — channels-last (torchvision ``swin_t`` stages) when dims 1-2 are a plausible
  grid and dims 2-3 are not; ``A = out.permute(0, 3, 1, 2)``;
* ``(N, T, C)`` — a token grid (ViT / DeiT encoder layers): ``T = e + h*w`` with ``e`` leading
  extra tokens (class, distillation, register tokens; ``0 <= e <=`` :data:`MAX_EXTRA_TOKENS`) and
  ``h*w`` patch tokens in row-major order; ``A = out[:, e:].unflatten(1, (h, w)).permute(0, 3, 1, 2)``,
  the ``e`` extra tokens dropped.

A grid ``(h, w)`` is *plausible* for ``(H, W)`` when one stride ``s >= 1`` (a real number: padding
and kernels round) gives both sides up to rounding, ``|h - H/s| < 1`` and ``|w - W/s| < 1``. A token
grid needs an integer patch size ``p`` with ``(h, w) = (floor(H/p), floor(W/p))`` or
``(ceil(H/p), ceil(W/p))``; it *tiles exactly* when ``h*p = H`` and ``w*p = W``. Several token
readings are resolved only when both clues agree (one reading tiles exactly and it alone has the
fewest extra tokens, e.g. ``T = 17`` at 64 px: ``4x4 +1`` with ``p = 16``, not ``3x3 +8``);
otherwise :func:`infer` raises a ``ValueError`` listing them and naming ``Subject(..., reshape=...)``.

Every reading is a view of the recorded tensor that selects and rearranges elements, so the
gradient with respect to the recorded tensor, read the same way, is the gradient with respect to
``A``. A user's :class:`Reshape` is held to that too (:func:`custom`): it may only select and
rearrange elements of one image into that image's map, which is checked on an index tensor.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

MAX_EXTRA_TOKENS = 8
"""The most leading extra tokens (class, distillation, registers) a token grid is read with."""

REMEDY = (
    "pass Subject(..., reshape=callable), a function (output, input_size) -> (N, C, h, w) tensor (for every layer), "
    "or a dict {layer name: function}"
)


class Reshape(Protocol):
    """A user's reading of a layer output: ``(output, (H, W) of the model input) -> (N, C, h, w)``."""

    def __call__(self, output: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class Layout:
    """How one layer output is read as ``(N, C, h, w)``.

    ``kind``: ``"nchw"`` (as is), ``"channels-last"``, ``"tokens"`` (``extra`` leading tokens dropped)
    or ``"reshape"`` (a user's :class:`Reshape`, kept as the element ``index`` it selects).
    """

    kind: str
    grid: tuple[int, int]
    extra: int = 0
    index: torch.Tensor | None = None  #: ``(N, C, h, w)`` positions in the flattened output (``"reshape"``)

    def apply(self, out: torch.Tensor) -> torch.Tensor:
        """``out`` (the layer output, or the gradient with respect to it) read as ``(N, C, h, w)``."""
        if self.kind == "channels-last":
            return out.permute(0, 3, 1, 2)
        if self.kind == "tokens":
            return out[:, self.extra :].unflatten(1, self.grid).permute(0, 3, 1, 2)
        if self.kind == "reshape":
            assert self.index is not None
            return out.flatten()[self.index]
        return out

    @property
    def description(self) -> str | None:
        """``"tokens 4x4 +1"`` (grid, dropped leading tokens), ``"channels-last 7x7"``, ``"reshape 7x7"``;
        ``None`` as is."""
        if self.kind == "nchw":
            return None
        grid = f"{self.grid[0]}x{self.grid[1]}"
        return f"tokens {grid} +{self.extra}" if self.kind == "tokens" else f"{self.kind} {grid}"


def plausible_grid(h: int, w: int, size: tuple[int, int]) -> bool:
    """Whether ``(h, w)`` is ``(H, W) / s`` for one real stride ``s >= 1``, each side rounded (``|h - H/s| < 1``)."""
    H, W = size
    low, high = 1.0, math.inf
    for n, length in ((h, H), (w, W)):
        if n < 1:
            return False
        low = max(low, length / (n + 1))
        high = min(high, length / (n - 1) if n > 1 else math.inf)
    return low < high


def _patch_sizes(h: int, w: int, size: tuple[int, int]) -> tuple[bool, bool]:
    """(some integer patch size ``p`` gives ``(h, w)``, floored or ceiled on both sides; one tiles ``(H, W)``
    exactly)."""
    H, W = size
    fits = exact = False
    for p in range(max(1, H // (h + 1)), H // max(h - 1, 1) + 2):
        if (h, w) in ((H // p, W // p), (-(-H // p), -(-W // p))):
            fits = True
            exact = exact or (h * p == H and w * p == W)
    return fits, exact


@functools.lru_cache(maxsize=256)
def token_grids(tokens: int, size: tuple[int, int]) -> tuple[tuple[int, int, int, bool], ...]:
    """Every reading ``(extra, h, w, tiles exactly)`` of ``tokens`` tokens as ``extra + h*w`` (``h*w >= 2``: one
    patch is no map) for an ``(H, W)`` input."""
    found = []
    for extra in range(min(MAX_EXTRA_TOKENS, tokens - 2) + 1):
        patches = tokens - extra
        for h in range(1, patches + 1):
            if patches % h == 0:
                fits, exact = _patch_sizes(h, patches // h, size)
                if fits:
                    found.append((extra, h, patches // h, exact))
    return tuple(found)


def _token_layout(tokens: int, size: tuple[int, int], what: str) -> Layout:
    readings = token_grids(tokens, size)
    if len(readings) > 1:
        fewest = min(extra for extra, *_ in readings)
        agreed = [r for r in readings if r[3] and r[0] == fewest]
        if len(agreed) == 1 and sum(r[0] == fewest for r in readings) == 1:
            readings = tuple(agreed)
    if len(readings) == 1:
        extra, h, w, _ = readings[0]
        return Layout("tokens", (h, w), extra)
    listed = "; ".join(f"{h}x{w} grid + {extra} leading token(s){' (tiles exactly)' if exact else ''}"
                       for extra, h, w, exact in readings)
    why = f"is ambiguous: it reads as {listed}" if readings else (
        f"matches no grid: no {tokens} - e tokens (e = 0..{MAX_EXTRA_TOKENS} leading tokens) form an h x w grid with "
        f"the input's aspect and an integer patch size")
    raise ValueError(f"{what} {why}; {REMEDY}")


def infer(shape: tuple[int, ...], input_size: tuple[int, int], layer: str = "the layer") -> Layout:
    """The layout of an output of ``shape`` (batch first) for a model input of ``input_size`` (module docstring).

    ``ValueError`` naming ``layer`` for an output that is not 3-D or 4-D and for a token count with
    no reading, or several.
    """
    shape = tuple(int(n) for n in shape)
    size = (int(input_size[0]), int(input_size[1]))
    what = f"layer {layer!r} outputs shape {shape} for a {size[0]}x{size[1]} input, which as a token grid (N, T, C)"
    if len(shape) == 4:
        _, d1, d2, d3 = shape
        if plausible_grid(d2, d3, size) or not plausible_grid(d1, d2, size):
            return Layout("nchw", (d2, d3))
        return Layout("channels-last", (d1, d2))
    if len(shape) == 3:
        return _token_layout(shape[1], size, what)
    raise ValueError(
        f"layer {layer!r} outputs shape {shape}, but CAM methods need a 4-D (N, C, h, w) feature map (or a token "
        f"grid (N, T, C), or channels-last (N, h, w, C)); pick a convolutional or token layer from subject.layers(), "
        f"or {REMEDY}"
    )


def custom(reshape: Reshape, out: torch.Tensor, input_size: tuple[int, int], layer: str = "the layer") -> Layout:
    """The layout of ``reshape`` on ``out``, checked: a ``(N, C, h, w)`` tensor whose row ``n`` only selects and
    rearranges elements of image ``n`` of ``out`` (each at most once), found by applying ``reshape`` to the
    positions of ``out``'s elements; ``ValueError`` naming ``layer`` and saying what is wrong otherwise."""
    size = (int(input_size[0]), int(input_size[1]))
    about = f"reshape for layer {layer!r} (output {tuple(out.shape)}, input {size[0]}x{size[1]})"
    try:
        result = reshape(out.detach(), size)
    except Exception as error:  # the user's function: say whose it is and for which layer
        raise ValueError(f"{about} raised {type(error).__name__}: {error}; it gets the layer's output and the model "
                         "input's (H, W) and must return (N, C, h, w)") from error
    if not isinstance(result, torch.Tensor) or result.ndim != 4 or result.shape[0] != out.shape[0]:
        got = f"shape {tuple(result.shape)}" if isinstance(result, torch.Tensor) else type(result).__name__
        raise ValueError(f"{about} returned {got}; it must return a 4-D (N, C, h, w) tensor with the output's batch "
                         f"size N = {out.shape[0]} first")
    positions = reshape(torch.arange(out.numel(), dtype=torch.float64, device=out.device).view(out.shape), size)
    index = positions.long() if isinstance(positions, torch.Tensor) else None
    per_image = out[0].numel()
    rows = torch.arange(out.shape[0], device=out.device).view(-1, 1, 1, 1)
    if (
        index is None or positions.shape != result.shape or not torch.equal(index.to(positions.dtype), positions)
        or not bool(((index >= 0) & (index < out.numel())).all())
        or not torch.equal(out.detach().flatten()[index.clamp(0, out.numel() - 1)], result)
    ):
        raise ValueError(f"{about} computes new values: it must only select and rearrange the output's elements "
                         "(slicing, view / reshape, permute, flatten / unflatten), because the gradient is read "
                         "through it the same way")
    if not bool((index // per_image == rows).all()) or index.unique().numel() != index.numel():
        raise ValueError(f"{about} mixes images or repeats elements: row n of its result must hold elements of "
                         "image n only, each at most once")
    return Layout("reshape", (int(result.shape[2]), int(result.shape[3])), index=index)


def reader(reshape: Reshape | None, out: torch.Tensor, input_size: tuple[int, int],
           layer: str = "the layer") -> Callable[[torch.Tensor], torch.Tensor] | None:
    """How outputs shaped like ``out`` are read as ``(N, C, h, w)``, whatever their batch size: ``reshape`` (checked
    on ``out`` by :func:`custom`), else the layout :func:`infer` finds; ``None`` for an output that is
    ``(N, C, h, w)`` or ``(N, C)`` already (activation maximisation and the classic views read channels with it)."""
    size = (int(input_size[0]), int(input_size[1]))
    if reshape is not None:
        custom(reshape, out, size, layer)
        return lambda output: reshape(output, size)
    if out.ndim not in (3, 4):
        return None
    layout = infer(out.shape, size, layer)
    return layout.apply if layout.kind != "nchw" else None
