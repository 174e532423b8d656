"""Rendering: overlays, region outlines, grids and thumbnails, as uint8 ``(H,W,3)`` numpy arrays."""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from matplotlib import colormaps


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend ``cmap(heatmap)`` over ``image``: ``(1-alpha)*image + alpha*cmap(heatmap)``.

    ``image`` is float ``(H,W,3)`` in ``[0,1]`` (or uint8), ``heatmap`` float ``(H,W)`` in ``[0,1]``.
    The colour is matplotlib's own lookup, ``table[min(floor(v * N), N - 1)]`` of the colormap's ``N``
    colours, read from a cached table rather than through ``Colormap.__call__`` (which builds float64
    RGBA and masks: most of the cost of recording evidence).
    """
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    if image.shape[:2] != heatmap.shape:
        raise ValueError(f"image {image.shape[:2]} and heatmap {heatmap.shape} differ in size")
    table = _colour_table(cmap)
    index = np.minimum((np.clip(heatmap, 0.0, 1.0) * len(table)).astype(np.intp), len(table) - 1)
    blended = (1.0 - alpha) * image[..., :3].astype(np.float32) + np.float32(alpha) * table[index]
    return (np.clip(blended, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def difference(image: np.ndarray, change: np.ndarray, alpha: float = 0.6, cmap: str = "RdBu_r") -> np.ndarray:
    """``change`` (``(H,W)`` in ``[-1, 1]``: one map minus another) in a diverging colormap over ``image`` in grey:
    red where the first map is higher, blue where the second is, white where they agree."""
    grey = image[..., :3].astype(np.float32).mean(axis=-1, keepdims=True).repeat(3, axis=-1)
    if image.dtype == np.uint8:
        grey /= 255.0
    return overlay(grey, (np.clip(change, -1.0, 1.0) + 1.0) / 2.0, alpha=alpha, cmap=cmap)


@functools.lru_cache(maxsize=8)
def _colour_table(cmap: str) -> np.ndarray:
    """The ``N`` RGB colours of matplotlib colormap ``cmap``, float32 ``(N, 3)``."""
    colormap = colormaps[cmap]
    return colormap(np.arange(colormap.N))[:, :3].astype(np.float32)


def to_rgb8(image: object) -> np.ndarray:
    """Any image as uint8 ``(H,W,3)``: numpy or torch, ``(H,W)``, ``(H,W,C)`` or ``(C,H,W)`` (channels first
    when the first axis is 1 or 3 long, or shorter than a last axis longer than 4), uint8, bool or float in
    ``[0,1]`` (``ValueError`` otherwise). Channels are shown by :func:`cnnaudit.images.display_rgb`'s rule:
    one grey, two as their mean in grey, three or more by the first three as RGB."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 3 and ((array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4))
                            or array.shape[0] < array.shape[-1] > 4):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] > 3:
        array = array[..., :3]
    if array.ndim == 3 and array.shape[-1] == 2:
        array = array.mean(axis=-1, dtype=np.float32) / (255.0 if array.dtype == np.uint8 else 1.0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[-1] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"expected an image shaped (H,W), (H,W,3) or (3,H,W), got shape {np.asarray(image).shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    array = array.astype(np.float32)
    finite = array[np.isfinite(array)]
    if finite.size != array.size or (finite.size and (finite.min() < 0.0 or finite.max() > 1.0)):
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (float("nan"), float("nan"))
        raise ValueError(
            f"float images must lie in [0,1] without NaN, got range [{low:.3g}, {high:.3g}] "
            f"({array.size - finite.size} non-finite); rescale it or pass uint8"
        )
    return (array * 255.0 + 0.5).astype(np.uint8)


def outline(image: np.ndarray, mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Draw the border of boolean ``mask`` on uint8 ``image``: white just inside, black just outside.

    Inside ring: ``mask & ~erode(mask)``; outside ring: ``dilate(mask) & ~mask`` (``width`` px each),
    so the outline stays visible on any colormap.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {image.shape[:2]} differ in size")
    inside = mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)
    outside = ndimage.binary_dilation(mask, iterations=width) & ~mask
    drawn = image.copy()
    drawn[inside] = 255
    drawn[outside] = 0
    return drawn


def grid(images: object, columns: int | None = None, pad: int = 2, background: int = 255, *,
         labels: Sequence[str] | None = None, marked: Sequence[bool] | None = None) -> np.ndarray:
    """Tile ``N`` same-sized images (``(N,3,S,S)`` float in ``[0,1]`` or ``(N,H,W,3)`` uint8) into one uint8 image.

    ``columns`` defaults to ``ceil(sqrt(N))``; tiles are separated by ``pad`` px of ``background``.
    ``labels``: a short text per tile (a channel number), drawn white on black in its top-left corner
    with PIL's default font; ``marked``: per tile, whether to mark it (a red frame and a red X: a dead
    unit). With either, tiles smaller than :data:`LABELLED_TILE` px are first enlarged by an integer
    factor (nearest neighbour) so that the text fits.
    """
    tiles = [to_rgb8(tile) for tile in images]  # type: ignore[attr-defined]
    if not tiles:
        raise ValueError("grid() needs at least one image")
    height, width = tiles[0].shape[:2]
    if any(tile.shape[:2] != (height, width) for tile in tiles):
        raise ValueError("grid() needs images of one size")
    for what, given in (("labels", labels), ("marked", marked)):
        if given is not None and len(given) != len(tiles):
            raise ValueError(f"grid() got {len(given)} {what} for {len(tiles)} images")
    if labels is not None or marked is not None:
        factor = -(-LABELLED_TILE // min(height, width))
        if factor > 1:
            tiles = [tile.repeat(factor, axis=0).repeat(factor, axis=1) for tile in tiles]
            height, width = height * factor, width * factor
        tiles = [
            _annotated(tile, None if labels is None else str(labels[k]), bool(marked is not None and marked[k]))
            for k, tile in enumerate(tiles)
        ]
    columns = columns or int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / columns))
    canvas = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, 3), background, dtype=np.uint8)
    for index, tile in enumerate(tiles):
        top = pad + (index // columns) * (height + pad)
        left = pad + (index % columns) * (width + pad)
        canvas[top : top + height, left : left + width] = tile
    return canvas


LABELLED_TILE = 64
"""Smallest side (px) of a grid tile that carries a label or a mark."""
MARK_COLOUR = (220, 20, 20)


def _annotated(tile: np.ndarray, label: str | None, marked: bool) -> np.ndarray:
    """``tile`` with ``label`` in its top-left corner (white on black) and, if ``marked``, a red frame and X."""
    from PIL import Image, ImageDraw

    height, width = tile.shape[:2]
    side = min(height, width)
    picture = Image.fromarray(tile)
    draw = ImageDraw.Draw(picture)
    if marked:
        line = max(2, side // 32)
        draw.rectangle((0, 0, width - 1, height - 1), outline=MARK_COLOUR, width=line)
        draw.line((0, 0, width - 1, height - 1), fill=MARK_COLOUR, width=line)
        draw.line((0, height - 1, width - 1, 0), fill=MARK_COLOUR, width=line)
    if label:
        font = _font(max(10, round(side * 0.18)))
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        margin = max(1, side // 40)
        draw.rectangle((0, 0, right - left + 2 * margin, bottom - top + 2 * margin), fill=(0, 0, 0))
        draw.text((margin - left, margin - top), label, fill=(255, 255, 255), font=font)
    return np.asarray(picture)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> object:
    """PIL's default font at ``size`` px (its bitmap font, of fixed size, where Pillow has no FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # an old Pillow, or one built without FreeType
        return ImageFont.load_default()


def thumbnail(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink uint8 ``image`` so that its longer side is at most ``max_side`` (box filter; never enlarges)."""
    from PIL import Image

    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
