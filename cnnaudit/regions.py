"""``Regions``: where, in each image, an annotated thing is.

Coordinates are input pixels: ``x`` to the right, ``y`` down; pixel (row ``r``, column ``c``)
covers ``[c, c+1) x [r, r+1)`` and its centre is ``(c + 0.5, r + 0.5)``. Each image's shapes live
in that image's *frame* (its ``(H, W)``).

Shapes:

* box ``(x0, y0, x1, y1)``, half-open — integer boxes are exactly the numpy slice
  ``[y0:y1, x0:x1]``;
* polygon ``[(x, y), ...]`` (at least three vertices), rasterised with ``skimage.draw.polygon``;
* mask — boolean ``(h, w)`` covering the whole frame at its own resolution; or a file (its non-zero
  pixels, or with ``Mask.value`` its pixels of one class value) or a zero-argument callable returning
  the array (a COCO RLE), both read only when rasterised. Its shape must have the frame's
  aspect ratio (within a pixel: ``|h * W / H - w| <= 1``), so a lower-resolution segmentation is
  fine; a mask of another aspect (cropped, padded, transposed, of another image) is refused with
  ``ValueError`` unless ``Regions(..., stretch_masks=True)`` asks for it to be stretched.

An image's entry is ``None`` (no region: metrics give NaN), one shape, or a list of shapes (their
union). Several named regions per image are several ``Regions`` (see ``ImageSet.region``).

**Resolution rule** (the only one, for every shape and every resolution): a pixel of an
``(H', W')`` grid belongs to the region iff its centre, mapped into the image's frame
(``x = (c + 0.5) * W / W'``, ``y = (r + 0.5) * H / H'``), lies in the region: inside the box
(``x0 <= x < x1`` and ``y0 <= y < y1``), inside the polygon, or in the mask pixel that contains the
point. A centre exactly on a polygon's edge counts when a point just below-right of it is inside
(the "top-left" fill rule), which is what half-open boxes do too: a rectangle polygon and the
equal box give the same pixels at every resolution.

Boxes must be finite and not inverted (``x1 >= x0``, ``y1 >= y0``), otherwise ``ValueError``. A
box reaching outside its frame is clipped to it and counted in ``clipped`` (so are polygons with a
vertex outside, which rasterisation clips).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

import numpy as np
import torch
from skimage.draw import polygon as draw_polygon

from cnnaudit.layers import close_matches

if TYPE_CHECKING:
    import PIL.Image

Size = tuple[int, int]
_EDGE = 1e-6  # pixels; see Polygon.rasterise


@dataclass(frozen=True)
class Box:
    """Half-open box ``(x0, y0, x1, y1)`` in frame pixels."""

    x0: float
    y0: float
    x1: float
    y1: float

    def scaled(self, sy: float, sx: float) -> Box:
        return Box(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy)

    def rasterise(self, frame: Size, size: Size) -> np.ndarray:
        rows = _inside(_centres(size[0], frame[0]), self.y0, self.y1)
        cols = _inside(_centres(size[1], frame[1]), self.x0, self.x1)
        return rows[:, None] & cols[None, :]


@dataclass(frozen=True, eq=False)
class Polygon:
    """Polygon with vertices ``(x, y)`` in frame pixels, shape ``(K, 2)``, ``K >= 3``."""

    vertices: np.ndarray

    def scaled(self, sy: float, sx: float) -> Polygon:
        return Polygon(self.vertices * np.array([sx, sy]))

    def rasterise(self, frame: Size, size: Size) -> np.ndarray:
        # skimage puts pixel centres at integer coordinates (shift by half a pixel) and counts points
        # on the boundary as inside; moving the polygon up-left by _EDGE gives the top-left rule.
        rows = self.vertices[:, 1] * size[0] / frame[0] - 0.5 - _EDGE
        cols = self.vertices[:, 0] * size[1] / frame[1] - 0.5 - _EDGE
        out = np.zeros(size, dtype=bool)
        rr, cc = draw_polygon(rows, cols, shape=size)
        out[rr, cc] = True
        return out


@dataclass(frozen=True, eq=False)
class Mask:
    """Boolean mask covering the whole frame.

    ``source``: a boolean array; an image file (non-zero pixels are inside); or a zero-argument
    callable returning a boolean ``(h, w)`` array (a lazily decoded mask such as a COCO RLE; its
    ``str()`` names it in errors). Files and callables are read each time the mask is rasterised.
    """

    source: Union[np.ndarray, str, Callable[[], np.ndarray]]
    frame: Size | None = None
    """The image frame the mask must match in aspect ratio (``None``: stretch to any frame)."""
    value: int | None = None
    """For a file: the region is the pixels whose stored value equals ``value`` (a class-index mask,
    read without colour conversion by :func:`class_pixels`) instead of the non-zero pixels."""

    def scaled(self, sy: float, sx: float) -> Mask:
        return self

    def array(self) -> np.ndarray:
        if isinstance(self.source, np.ndarray):
            return self.source
        if callable(self.source):
            mask, where = np.asarray(self.source(), dtype=bool), str(self.source)
        else:
            from PIL import Image

            with Image.open(self.source) as image:
                if self.value is None:
                    mask = np.asarray(image.convert("L")) > 0
                else:
                    mask = class_pixels(image, self.source) == self.value
            where = f"mask file {self.source}"
        if mask.ndim != 2:
            raise ValueError(f"{where}: a mask is one (H, W) plane, got shape {mask.shape}")
        if self.frame is not None and not same_aspect(mask.shape, self.frame):
            raise ValueError(f"{where}: {_aspect_problem(mask.shape, self.frame)}")
        return mask

    def rasterise(self, frame: Size, size: Size) -> np.ndarray:
        mask = self.array()
        if mask.shape == tuple(size):
            return mask.copy()
        rows = np.minimum((_centres(size[0], mask.shape[0])).astype(np.int64), mask.shape[0] - 1)
        cols = np.minimum((_centres(size[1], mask.shape[1])).astype(np.int64), mask.shape[1] - 1)
        return mask[np.ix_(rows, cols)]


Shape = Union[Box, Polygon, Mask]

_CLASS_MODES = ("1", "L", "P", "I;16", "I;16L", "I;16B", "I;16N", "I")


def class_pixels(image: PIL.Image.Image, where: Any = "mask") -> np.ndarray:
    """The stored pixel values of a single-channel class-index mask, as an integer ``(H, W)`` array.

    Palette (``P``) images give their palette indices, not colours (Pascal VOC's SegmentationClass
    PNGs); 8- and 16-bit grey give their values. Colour images are refused with ``ValueError``
    naming ``where``: their classes would have to be guessed from colours."""
    if image.mode not in _CLASS_MODES:
        raise ValueError(
            f"{where}: the mask has mode {image.mode}; a class mask has one channel holding a class value per "
            "pixel (8- or 16-bit grey, or a palette image): convert its colours to class indices first"
        )
    return np.asarray(image).astype(np.int64)


def _centres(n: int, extent: float) -> np.ndarray:
    """Centres of ``n`` pixels spanning ``[0, extent)``: ``(i + 0.5) * extent / n``."""
    return (np.arange(n) + 0.5) * (extent / n)


def _inside(points: np.ndarray, low: float, high: float) -> np.ndarray:
    return (points >= low) & (points < high)


class Regions:
    """Named per-image regions (see the module docstring for shapes and the resolution rule).

    ``entries``: one entry per image — ``None``, a box ``(x0, y0, x1, y1)``, ``{"box": ...}``,
    ``{"polygon": [[x, y], ...]}``, ``{"mask": array_or_path_or_callable}``, a ``Box``, ``Polygon`` or
    ``Mask``, a boolean ``(h, w)`` array, or a
    list of these (union) — or a boolean ``(N, H, W)`` array/tensor (one mask per image).
    ``image_size``: the frame ``(H, W)`` shared by all images, or one per image; it may be left out
    only when every entry is a mask array (the frame is then the mask's shape).
    ``stretch_masks``: accept masks whose aspect ratio differs from their image's (see the module
    docstring); by default they are an error.
    """

    def __init__(self, entries: Any, image_size: Size | Sequence[Size] | None = None, name: str = "region", *,
                 stretch_masks: bool = False) -> None:
        if isinstance(entries, torch.Tensor):
            entries = entries.detach().cpu().numpy()
        if isinstance(entries, np.ndarray):
            if entries.dtype != bool or entries.ndim != 3:
                raise ValueError(f"region masks must be a boolean (N,H,W) array, got {entries.dtype} {entries.shape}")
            entries = list(entries)
        entries = list(entries)
        self.name = name
        parsed = [_parse_entry(entry, i, name) for i, entry in enumerate(entries)]
        self.frames = _frames(parsed, image_size, name)
        self._entries: list[tuple[Shape, ...] | None] = []
        clipped = np.zeros(len(parsed), dtype=np.int64)
        for i, (shapes, frame) in enumerate(zip(parsed, self.frames)):
            if shapes is None:
                self._entries.append(None)
                continue
            kept = []
            for shape in shapes:
                if isinstance(shape, Mask) and not stretch_masks:
                    shape = _checked_mask(shape, frame, f"region {name!r} of image {i}")
                shape, was_clipped = _clip(shape, frame)
                clipped[i] += was_clipped
                kept.append(shape)
            self._entries.append(tuple(kept))
        self._clipped = clipped

    @classmethod
    def _from_parts(cls, name: str, entries: list, frames: list[Size], clipped: np.ndarray) -> Regions:
        out = cls.__new__(cls)
        out.name, out._entries, out.frames, out._clipped = name, entries, frames, clipped
        return out

    # ---- container ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: Any) -> Any:
        """``r[i]`` -> image ``i``'s shapes (tuple) or ``None``; ``r[slice]`` / ``r[int or bool array]`` -> ``Regions``."""
        if isinstance(index, (int, np.integer)):
            return self._entries[index]
        positions = _positions(index, len(self))
        return Regions._from_parts(
            self.name,
            [self._entries[p] for p in positions],
            [self.frames[p] for p in positions],
            self._clipped[positions],
        )

    def __repr__(self) -> str:
        missing = sum(entry is None for entry in self._entries)
        return f"Regions({self.name!r}, n={len(self)}, none={missing}, clipped={self.clipped})"

    @property
    def clipped(self) -> int:
        """Number of shapes that reached outside their image and were clipped to it."""
        return int(self._clipped.sum())

    @property
    def clipped_per_image(self) -> np.ndarray:
        """Clipped shapes per image, int64 ``(N,)``."""
        return self._clipped.copy()

    @property
    def defined(self) -> np.ndarray:
        """bool ``(N,)``: images that have an entry (not ``None``)."""
        return np.array([entry is not None for entry in self._entries], dtype=bool)

    # ---- geometry -------------------------------------------------------------------------
    def rescaled(self, size: Size) -> Regions:
        """The same regions in frames of ``size`` for every image (boxes and polygons scaled, masks unchanged)."""
        size = (int(size[0]), int(size[1]))
        entries = []
        for shapes, frame in zip(self._entries, self.frames):
            sy, sx = size[0] / frame[0], size[1] / frame[1]
            entries.append(None if shapes is None else tuple(s.scaled(sy, sx) for s in shapes))
        return Regions._from_parts(self.name, entries, [size] * len(self), self._clipped.copy())

    def mask(self, i: int, size: Size | None = None) -> np.ndarray:
        """Image ``i``'s region as bool ``(H, W)`` at ``size`` (default: its frame); all False for ``None``."""
        frame = self.frames[i]
        size = frame if size is None else (int(size[0]), int(size[1]))
        out = np.zeros(size, dtype=bool)
        for shape in self._entries[i] or ():
            out |= shape.rasterise(frame, size)
        return out

    def masks(self, size: Size | None = None, device: torch.device | str | None = None) -> torch.Tensor:
        """All regions as ``torch.bool (N, H, W)`` at ``size`` by the resolution rule."""
        if size is None:
            if len(set(self.frames)) > 1:
                raise ValueError(f"regions {self.name!r} have frames of several sizes; pass size=(H, W)")
            size = self.frames[0] if self.frames else (0, 0)
        stacked = np.stack([self.mask(i, size) for i in range(len(self))]) if len(self) else np.zeros((0, *size), bool)
        return torch.from_numpy(stacked).to(device or "cpu")

    def boxes(self, size: Size | None = None) -> list[tuple[int, int, int, int] | None]:
        """Per image, the tight half-open pixel box ``(x0, y0, x1, y1)`` of ``mask(i, size)``; ``None`` if empty."""
        return [mask_box(self.mask(i, size)) for i in range(len(self))]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight half-open box ``(x0, y0, x1, y1)`` around the True pixels of ``mask``, or ``None``."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def as_regions(regions: Any, image_size: Size, n: int, name: str = "region") -> Regions:
    """``regions`` as a ``Regions`` of ``n`` images; raw entries are taken in frames of ``image_size``."""
    if not isinstance(regions, Regions):
        regions = Regions(regions, image_size=image_size, name=name)
    if len(regions) != n:
        raise ValueError(f"regions {regions.name!r} cover {len(regions)} images but there are {n} maps")
    return regions


def unknown_name(name: str, options: Sequence[str], what: str) -> str:
    """Error text for an unknown ``name`` of kind ``what`` (region, group): close matches, then all options."""
    return f"unknown {what} {name!r}{close_matches(name, options)}; available: {', '.join(map(repr, options)) or 'none'}"


# ---- parsing ---------------------------------------------------------------------------------
def _parse_entry(entry: Any, i: int, name: str) -> tuple[Shape, ...] | None:
    if entry is None:
        return None
    try:
        return _parse(entry)
    except (ValueError, TypeError) as error:
        raise ValueError(f"region {name!r} of image {i}: {error}") from None


def _parse(entry: Any) -> tuple[Shape, ...]:
    if isinstance(entry, (Box, Polygon, Mask)):
        return (entry,)
    if isinstance(entry, torch.Tensor):
        entry = entry.detach().cpu().numpy()
    if isinstance(entry, dict):
        return (_parse_dict(entry),)
    if isinstance(entry, np.ndarray):
        if entry.dtype == bool and entry.ndim == 2:
            return (Mask(entry),)
        if np.issubdtype(entry.dtype, np.number) and entry.ndim in (1, 2) and entry.shape[-1] == 4:
            return tuple(_box(row) for row in entry.reshape(-1, 4))
        raise ValueError(f"an array region must be a boolean (H,W) mask, a box (4,) or boxes (K,4); got {entry.dtype} {entry.shape}")
    if _is_box(entry):
        return (_box(entry),)
    if isinstance(entry, (list, tuple)):
        return tuple(shape for part in entry for shape in _parse(part))
    raise TypeError(
        f"cannot read {type(entry).__name__} as a region; use (x0, y0, x1, y1), {{'polygon': [[x, y], ...]}}, "
        "{'mask': array_or_path}, a boolean (H,W) array, a list of these, or None"
    )


def _parse_dict(entry: dict) -> Shape:
    if set(entry) == {"box"}:
        return _box(entry["box"])
    if set(entry) == {"polygon"}:
        vertices = np.asarray(entry["polygon"], dtype=np.float64)
        if vertices.ndim != 2 or vertices.shape[1] != 2 or len(vertices) < 3:
            raise ValueError(f"a polygon needs at least 3 vertices [x, y], got shape {vertices.shape}")
        if not np.isfinite(vertices).all():
            raise ValueError("polygon vertices must be finite")
        return Polygon(vertices)
    if set(entry) == {"mask"}:
        source = entry["mask"]
        if isinstance(source, (str, os.PathLike)):
            return Mask(os.fspath(source))
        if callable(source):
            return Mask(source)
        (shape,) = _parse(np.asarray(source))
        return shape
    raise ValueError(f"a region dict has exactly one key: 'box', 'polygon' or 'mask'; got {sorted(entry)}")


def _is_box(entry: Any) -> bool:
    return isinstance(entry, (list, tuple)) and len(entry) == 4 and all(isinstance(v, Real) for v in entry)


def _box(values: Sequence[float]) -> Box:
    x0, y0, x1, y1 = (float(v) for v in values)
    if not all(np.isfinite([x0, y0, x1, y1])):
        raise ValueError(f"box {tuple(values)} is not finite")
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box (x0, y0, x1, y1) = {tuple(values)} is inverted; boxes need x0 <= x1 and y0 <= y1")
    return Box(x0, y0, x1, y1)


def same_aspect(shape: Sequence[int], frame: Size) -> bool:
    """Whether an ``(h, w)`` mask has the aspect ratio of an ``(H, W)`` frame, within a pixel: ``|h * W / H - w| <= 1``."""
    return abs(shape[0] * frame[1] / frame[0] - shape[1]) <= 1.0


def _aspect_problem(shape: Sequence[int], frame: Size) -> str:
    return (
        f"the mask is {shape[0]}x{shape[1]} (HxW) but its image is {frame[0]}x{frame[1]}, another aspect ratio, so it "
        "cannot cover the same picture (cropped, padded, transposed or of another image?); save the mask at the "
        "image's size, or pass Regions(..., stretch_masks=True) to stretch it over the image"
    )


def _checked_mask(mask: Mask, frame: Size, where: str) -> Mask:
    """``mask`` bound to ``frame``: an array is checked now, a file or a callable when it is read."""
    if isinstance(mask.source, np.ndarray):
        if not same_aspect(mask.source.shape, frame):
            raise ValueError(f"{where}: {_aspect_problem(mask.source.shape, frame)}")
        return mask
    return dataclasses.replace(mask, frame=frame)


def _frames(parsed: list, image_size: Any, name: str) -> list[Size]:
    if image_size is None:
        frames = []
        for i, shapes in enumerate(parsed):
            arrays = [s.source for s in shapes or () if isinstance(s, Mask) and isinstance(s.source, np.ndarray)]
            if len(arrays) != len(shapes or ()):
                raise ValueError(f"region {name!r} of image {i} has boxes, polygons or mask files: pass image_size=(H, W)")
            frames.append(arrays[0].shape if arrays else (1, 1))
        return [(int(h), int(w)) for h, w in frames]
    sizes = np.asarray(image_size, dtype=np.int64)
    if sizes.shape == (2,):
        return [(int(sizes[0]), int(sizes[1]))] * len(parsed)
    if sizes.shape != (len(parsed), 2):
        raise ValueError(f"image_size must be (H, W) or one (H, W) per image ({len(parsed)}), got shape {sizes.shape}")
    return [(int(h), int(w)) for h, w in sizes]


def _clip(shape: Shape, frame: Size) -> tuple[Shape, bool]:
    height, width = frame
    if isinstance(shape, Box):
        clipped = Box(
            min(max(shape.x0, 0.0), width), min(max(shape.y0, 0.0), height),
            min(max(shape.x1, 0.0), width), min(max(shape.y1, 0.0), height),
        )
        return clipped, clipped != shape
    if isinstance(shape, Polygon):
        v = shape.vertices
        outside = bool((v[:, 0] < 0).any() or (v[:, 0] > width).any() or (v[:, 1] < 0).any() or (v[:, 1] > height).any())
        return shape, outside
    return shape, False


def _positions(index: Any, n: int) -> np.ndarray:
    """Integer positions selected by a slice, an int array or a bool mask of length ``n``."""
    if isinstance(index, slice):
        return np.arange(n)[index]
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().numpy()
    array = np.asarray(index)
    if array.dtype == bool:
        if array.shape != (n,):
            raise ValueError(f"a boolean mask must have shape ({n},), got {array.shape}")
        return np.flatnonzero(array)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        if array.size == 0:
            return np.zeros(0, dtype=np.int64)
        raise TypeError(f"index with an int, a slice, an integer array or a boolean mask; got {array.dtype} {array.shape}")
    if array.size and (array.max() >= n or array.min() < -n):
        raise IndexError(f"index out of range for {n} images")
    return array % n if n else array
