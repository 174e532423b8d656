"""``ImageSet``: images with labels, named regions, groups and ids, loaded lazily.

Images are kept as *sources*: an in-memory ``(C,H,W)`` tensor, a file path, or a zero-argument
loader returning anything :func:`cnnaudit.images.as_batch` accepts for one image. Files and loaders
are read only by :meth:`ImageSet.batches`, :meth:`ImageSet.tensor` and integer indexing, so a set of
10,000 images costs a list of paths, not 10,000 decoded images. ``size=(H, W)`` resizes every image
on load (bilinear, antialiased, ``align_corners=False``) and scales its regions with it.

Region coordinates given to ``ImageSet`` are in each image's own pixels as stored (before
``size=``). A ``Regions`` object passed instead carries its own frames.

Channels: the images of one set share one channel count ``C`` (an image that differs is an error
naming it and the image that set the count). Files are read as RGB (3 channels, as stored colour
or grey repeated) unless ``channels=`` says otherwise: ``channels=1`` reads them as grey (PIL's
``L``: ``0.299 R + 0.587 G + 0.114 B``; 16- and 32-bit grey scaled by their bit depth), ``4`` as
RGBA. Other channel counts come from in-memory images or loaders (a zero-argument function
returning ``(C,H,W)``); with ``channels=`` given, those are checked to have it.

Folder layout for :meth:`ImageSet.from_folder` — ``annotations.json`` next to the images::

    {"images": [
      {"file": "img_001.jpg",              # required, relative to the folder
       "id": "img_001",                    # optional, default: the file name without extension
       "label": "doctor",                  # optional
       "size": [480, 640],                 # optional original (H, W); saves reading file headers
       "regions": {                        # optional; a name missing for an image means no region
         "tools": [120, 200, 260, 330],                   # box (x0, y0, x1, y1), half-open pixels
         "face": {"polygon": [[300, 40], [380, 40], [340, 150]]},
         "coat": [[10, 200, 90, 470], [500, 210, 600, 470]],  # several boxes: their union
         "hair": {"mask": "masks/img_001_hair.png"}},         # non-zero pixels, read lazily
       "groups": {"gender": "female", "site": "A"}}          # optional
    ]}

(a bare list of image records is accepted too).

Other formats, read by :mod:`cnnaudit.annotations` and checked at the door: COCO boxes, polygons and
RLE masks (:meth:`ImageSet.from_coco`), Pascal VOC XML (:meth:`ImageSet.from_voc`) and per-image
class-index mask PNGs (:meth:`ImageSet.from_masks`). For the same scene every format gives the same
regions as ``annotations.json`` (``tests/test_annotations.py`` checks it).
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    import PIL.Image

from cnnaudit.annotations import Loaded, read_coco, read_masks, read_voc
from cnnaudit.annotations import inside as _inside
from cnnaudit.annotations import read_json as _read_json
from cnnaudit.groups import GroupColumn
from cnnaudit.images import Key, as_batch, tensor_key
from cnnaudit.regions import Regions, Size, _parse_entry, _positions, unknown_name

Source = Union[torch.Tensor, str, Callable[[], Any]]
_FILE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
"""How files are read for each ``channels=`` (PIL modes); ``None`` reads RGB."""


class ImageSet:
    """Images + labels + named regions + groups + ids (see the module docstring).

    ``images``: anything ``as_batch`` accepts, or a list whose items are file paths, zero-argument
    loaders or in-memory images. ``labels``: one per image. ``regions``: ``{name: per-image entries
    (see Regions) | bool (N,H,W) masks | Regions}``. ``groups``: ``{name: one value per image}``.
    ``ids``: unique strings (default ``"0"``, ``"1"``, ...). ``size``: ``(H, W)`` to resize to on load.
    ``channels``: the channel count every image must have, and how files are read (module docstring);
    ``None``: files as RGB, other images as they are.
    """

    def __init__(
        self,
        images: Any,
        labels: Sequence[Any] | None = None,
        regions: dict[str, Any] | None = None,
        groups: dict[str, Sequence[Any]] | None = None,
        ids: Sequence[Any] | None = None,
        size: Size | None = None,
        channels: int | None = None,
    ) -> None:
        if size is not None and not (isinstance(size, (tuple, list)) and len(size) == 2
                                     and all(isinstance(v, (int, np.integer)) and v > 0 for v in size)):
            raise ValueError(f"ImageSet(size={size!r}): size is the (H, W) to resize every image to, two positive integers")
        self.size: Size | None = None if size is None else (int(size[0]), int(size[1]))
        if channels is not None and (isinstance(channels, bool) or not isinstance(channels, (int, np.integer))
                                     or channels < 1):
            raise ValueError(f"ImageSet(channels={channels!r}): channels is the number of channels every image has, "
                             "a positive integer")
        self.channels: int | None = None if channels is None else int(channels)
        self._sources, self._frames = _sources(images, self.size)
        files = any(isinstance(source, str) for source in self._sources)
        if self.channels is not None and self.channels not in _FILE_MODES and files:
            raise ValueError(f"ImageSet(channels={self.channels}): files load with 1, 3 or 4 channels (grey, RGB, RGBA); "
                             "load other channel counts with loaders, zero-argument functions returning (C,H,W) arrays")
        self._first_channels: tuple[int, str] | None = None  # (C, id of the image that set it)
        n = len(self._sources)
        self.labels: np.ndarray | None = None if labels is None else _column(labels, n, "labels", as_object=True)
        self._groups = {str(k): _column(v, n, f"group {k!r}") for k, v in (groups or {}).items()}
        self._regions: dict[str, Any] = {}
        for name, value in (regions or {}).items():
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            if isinstance(value, np.ndarray) and value.dtype == bool and value.ndim == 3:
                value = list(value)
            if not isinstance(value, Regions):  # parsed now so bad regions fail here, not at region()
                value = [_parse_entry(entry, i, str(name)) for i, entry in enumerate(value)]
            if len(value) != n:
                raise ValueError(f"region {name!r} has {len(value)} entries for {n} images")
            self._regions[str(name)] = value
        self.ids: list[str] = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
        if len(self.ids) != n:
            raise ValueError(f"{len(self.ids)} ids for {n} images")
        if len(set(self.ids)) != n:
            raise ValueError("ids must be unique")
        for i, source in enumerate(self._sources):
            if isinstance(source, torch.Tensor):
                self._check_channels(i, source)

    # ---- loaders --------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, path: str | os.PathLike, size: Size | None = None, annotations: str = "annotations.json",
                    *, allow_outside: bool = False, channels: int | None = None) -> ImageSet:
        """Images of a folder described by its JSON annotation file (format in the module docstring).
        ``channels=1`` reads the images as grey, ``4`` as RGBA (default: RGB).

        Image and mask paths must stay inside the folder (after ``..`` and symbolic links are
        resolved) unless ``allow_outside=True``: annotations from elsewhere cannot make an audit read
        any file on the machine."""
        root = Path(path)
        file = root / annotations
        if not file.is_file():
            raise FileNotFoundError(
                f"{file} not found; ImageSet.from_folder needs an annotation file listing the images, e.g. "
                '{"images": [{"file": "a.jpg", "label": "cat", "regions": {"head": [x0, y0, x1, y1]}, "groups": {"site": "A"}}]}'
            )
        records = _read_json(file)
        records = records.get("images") if isinstance(records, dict) else records
        if not isinstance(records, list):
            raise ValueError(f"{file}: expected a list of image records, or {{\"images\": [...]}}")
        for i, record in enumerate(records):
            if not isinstance(record, dict) or not isinstance(record.get("file"), str):
                raise ValueError(f"{file}: image record {i} needs a \"file\" (a path relative to the folder), got {record!r:.80}")
            if "size" in record and not (isinstance(record["size"], list) and len(record["size"]) == 2
                                         and all(isinstance(v, int) and v > 0 for v in record["size"])):
                raise ValueError(f"{file}: image record {i} has size {record['size']!r:.40}; expected [height, width] in pixels")
        region_names = sorted({name for r in records for name in r.get("regions", {})})
        group_names = sorted({name for r in records for name in r.get("groups", {})})
        has_labels = any("label" in r for r in records)
        inside = functools.partial(_inside, root, file, allow_outside=allow_outside)

        def region(i: int, name: str) -> Any:
            return _resolve_masks(records[i].get("regions", {}).get(name), functools.partial(inside, what=f"a mask of image record {i}"))

        out = cls(
            [inside(r["file"], f"image record {i}") for i, r in enumerate(records)],
            labels=[r.get("label") for r in records] if has_labels else None,
            regions={name: [region(i, name) for i in range(len(records))] for name in region_names},
            groups={name: [r.get("groups", {}).get(name) for r in records] for name in group_names},
            ids=[r.get("id", Path(r["file"]).stem) for r in records],
            size=size,
            channels=channels,
        )
        out._frames = [(int(r["size"][0]), int(r["size"][1])) if "size" in r else None for r in records]
        return out

    @classmethod
    def from_coco(
        cls,
        json_path: str | os.PathLike,
        image_dir: str | os.PathLike | None = None,
        size: Size | None = None,
        groups: Sequence[str] = (),
        *,
        shapes: str = "boxes",
        allow_outside: bool = False,
        channels: int | None = None,
    ) -> ImageSet:
        """Images of a COCO-style detection file; each category becomes a named region.

        Reads ``{"images": [{"id", "file_name", "height"?, "width"?, ...}], "categories": [{"id",
        "name"}], "annotations": [{"image_id", "category_id", "bbox", "segmentation"?}]}``. An image's
        region for a category is the union of its annotations of that category, ``None`` where the
        category is absent: with ``shapes="boxes"`` (default) their ``bbox = [x, y, w, h]`` ->
        ``(x, y, x + w, y + h)``; with ``shapes="segmentation"`` their polygons or RLE masks
        (uncompressed counts or COCO's compressed string; format and checks in
        :func:`cnnaudit.annotations.read_coco`).
        Labels: an image whose annotations all have one category is labelled with that category's
        name (so ``where(label="cat")`` works); an image with no annotation, or with annotations of
        several categories, has the label ``None`` (select those by region instead:
        ``s.where(s.region("cat").defined)``). When the file has no annotations at all the set has
        no labels. ``groups`` names extra fields of the image records to expose as groups. Ids are
        the image ids. ``file_name`` is relative to ``image_dir``, by default the JSON file's folder;
        file names must stay inside it unless ``allow_outside=True`` (see :meth:`from_folder`).
        Image ids, category ids and names must be unique, and every annotation's image and category
        known; errors name the file and the record. ``channels`` as in :meth:`from_folder`.
        """
        loaded = read_coco(json_path, image_dir, groups, shapes, allow_outside=allow_outside)
        return cls._from_loaded(loaded, size, channels)

    @classmethod
    def from_voc(
        cls,
        xml_dir: str | os.PathLike,
        image_dir: str | os.PathLike | None = None,
        size: Size | None = None,
        groups: Sequence[str] = (),
        *,
        classes: Sequence[str] | None = None,
        allow_outside: bool = False,
        channels: int | None = None,
    ) -> ImageSet:
        """Images described by Pascal VOC XML files, one per image (``<annotation><filename>``,
        optional ``<size>``, ``<object><name>`` with ``<bndbox>`` xmin/ymin/xmax/ymax).

        Each object name becomes a region: the union of the image's boxes of that name, ``None``
        where absent. VOC coordinates are 1-based inclusive pixel indices; they become cnnaudit's
        0-based half-open boxes ``(xmin - 1, ymin - 1, xmax, ymax)``, so a VOC box covers exactly the
        pixels it names. Ids: the XML file names without ``.xml``. Labels as in :meth:`from_coco`.
        ``image_dir``: where ``<filename>`` lives, by default the sibling ``JPEGImages`` folder when
        there is one (VOCdevkit), else ``xml_dir``; paths must stay inside it unless
        ``allow_outside=True``. ``classes``: the allowed object names (an unknown one is an error).
        ``groups``: element paths under ``<annotation>`` whose text becomes a group. Documents with
        a DTD or entities are refused. Format and checks: :func:`cnnaudit.annotations.read_voc`.
        ``channels`` as in :meth:`from_folder`.
        """
        loaded = read_voc(xml_dir, image_dir, groups, classes, allow_outside=allow_outside)
        return cls._from_loaded(loaded, size, channels)

    @classmethod
    def from_masks(
        cls,
        image_dir: str | os.PathLike,
        mask_dir: str | os.PathLike,
        classes: dict[int, str | None],
        size: Size | None = None,
        *,
        mask_suffix: str = ".png",
        allow_outside: bool = False,
        channels: int | None = None,
    ) -> ImageSet:
        """Images with class-index segmentation masks: ``mask_dir/<stem><mask_suffix>`` (a
        single-channel PNG: grey values or palette indices) for each image ``image_dir/<stem>.*``.

        ``classes`` maps pixel values to region names (``{1: "tools", 2: "face"}``; several values
        may share a name; ``None`` leaves a value's pixels out, e.g. ``{255: None}`` for VOC's
        borders; 0 is background unless named). An image's region is the pixels of its values,
        ``None`` when its mask has none, as in :meth:`from_coco`; labels as there too. Ids: the
        stems. Every mask is read once here to check it (its image's size exactly, no value missing
        from ``classes``, an image for every mask); regions read it again lazily, images are read
        only when used. Format and checks: :func:`cnnaudit.annotations.read_masks`. ``channels`` as in
        :meth:`from_folder`.
        """
        loaded = read_masks(image_dir, mask_dir, classes, mask_suffix=mask_suffix, allow_outside=allow_outside)
        return cls._from_loaded(loaded, size, channels)

    @classmethod
    def _from_loaded(cls, loaded: Loaded, size: Size | None, channels: int | None) -> ImageSet:
        out = cls(loaded.sources, labels=loaded.labels, regions=loaded.regions, groups=loaded.groups, ids=loaded.ids,
                  size=size, channels=channels)
        out._frames = list(loaded.frames)
        return out

    # ---- container ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._sources)

    def __getitem__(self, index: Any) -> Any:
        """``s[i]`` -> float ``(C,H,W)`` image ``i`` (loaded); ``s[slice | int array | bool mask]`` -> ``ImageSet``."""
        if isinstance(index, (int, np.integer)):
            return self._load(int(index))
        return self._take(_positions(index, len(self)))

    def __repr__(self) -> str:
        return (
            f"ImageSet(n={len(self)}, size={self.size}, labels={self.labels is not None}, "
            f"regions={sorted(self._regions)}, groups={sorted(self._groups)})"
        )

    def _take(self, positions: np.ndarray) -> ImageSet:
        out = ImageSet.__new__(ImageSet)
        out.size = self.size
        out.channels, out._first_channels = self.channels, self._first_channels
        out._sources = [self._sources[p] for p in positions]
        out._frames = [self._frames[p] for p in positions]
        out.labels = None if self.labels is None else self.labels[positions]
        out._groups = {k: v[positions] for k, v in self._groups.items()}
        out._regions = {k: v[positions] if isinstance(v, Regions) else [v[p] for p in positions] for k, v in self._regions.items()}
        out.ids = [self.ids[p] for p in positions]
        return out

    def where(self, mask: Any = None, /, **equals: Any) -> ImageSet:
        """Images where ``mask`` (bool per image) holds and, for each keyword, label/group == value.

        ``where(label="doctor", gender="female")``; ``where(s.group("age") > 40)``.
        A selection that matches no image (of a non-empty set) warns with a ``UserWarning`` naming the
        filters and the values that exist, and returns the empty set.
        """
        keep = np.ones(len(self), dtype=bool)
        filters: list[tuple[str, np.ndarray, np.ndarray | None]] = []  # (filter as written, its matches, its column)
        if mask is not None:
            matches = _bool_mask(mask, len(self))
            label = getattr(mask, "label", None)
            filters.append((f"mask {label}" if label else "mask", matches, None))
        for key, value in equals.items():
            if key == "label":
                if self.labels is None:
                    raise ValueError("this ImageSet has no labels; pass labels= or use a group")
                column = self.labels
            else:
                column = self.group(key)
            filters.append((f"{key}={value!r}", np.array([item == value for item in column], dtype=bool), column))
        for _, matches, _ in filters:
            keep &= matches
        if len(self) and not keep.any() and filters:
            warnings.warn(_nothing_matched(filters, len(self)), UserWarning, stacklevel=2)
        return self._take(np.flatnonzero(keep))

    def group(self, name: str) -> GroupColumn:
        """The group column ``name``, one value per image; ``s.group("g") == "f"`` is a bool mask
        that names itself ``g=f`` (see :mod:`cnnaudit.groups`)."""
        if name not in self._groups:
            raise KeyError(unknown_name(name, sorted(self._groups), "group"))
        return GroupColumn(self._groups[name], name)

    @property
    def region_names(self) -> list[str]:
        return sorted(self._regions)

    def region(self, name: str) -> Regions:
        """The named region of every image as ``Regions`` in frames of ``image_size``."""
        if name not in self._regions:
            raise KeyError(unknown_name(name, sorted(self._regions), "region"))
        value = self._regions[name]
        if isinstance(value, Regions):
            regions = value[:]
        elif self.size is None:
            for i, source in enumerate(self._sources):  # a file's header is cheap; a loader is loaded only if needed
                if self._frames[i] is None and isinstance(source, str):
                    self._original_size(i)
            common = self.image_size if any(frame is None for frame in self._frames) else None
            regions = Regions(value, image_size=[frame or common for frame in self._frames])
        else:
            regions = Regions(value, image_size=[self._original_size(i) for i in range(len(self))])
        regions.name = name
        return regions if self.size is None else regions.rescaled(self.size)

    # ---- pixels ---------------------------------------------------------------------------
    @property
    def image_size(self) -> Size:
        """``(H, W)`` of the images as batched: ``size`` if given, else the first image's (loaded if unknown)."""
        if self.size is not None:
            return self.size
        known = {frame for frame in self._frames if frame is not None}
        if len(known) > 1:
            raise ValueError(f"images have different sizes {sorted(known)}; pass ImageSet(..., size=(H, W)) to resize on load")
        if not len(self):
            raise ValueError("an empty ImageSet has no image size")
        if self._frames[0] is None:
            self._load(0)
        return self._frames[0]  # type: ignore[return-value]

    def tensor(self) -> torch.Tensor:
        """All images as float32 ``(N,C,H,W)`` in ``[0,1]`` on the CPU."""
        if not len(self):
            raise ValueError("the ImageSet is empty")
        return _stack([self._load(i) for i in range(len(self))], self.ids)

    def cache_key(self) -> Key | None:
        """How a cache names this set: its ``size``, ``channels`` and its sources (paths by value; loaders and in-memory
        images by identity, tensors also by version); ``None`` for an inference-mode tensor source."""
        parts = [source if isinstance(source, str) else tensor_key(source) if isinstance(source, torch.Tensor) else id(source)
                 for source in self._sources]
        if any(part is None for part in parts):
            return None
        return ("imageset", self.size, self.channels, tuple(parts)), (tuple(self._sources),)

    def batches(self, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, images[start:start+batch_size])`` as float32 CPU tensors, loading one batch at a time."""
        first: Size | None = None
        for start in range(0, len(self), batch_size):
            batch = _stack([self._load(i) for i in range(start, min(start + batch_size, len(self)))], self.ids[start:])
            first = first or tuple(batch.shape[-2:])  # type: ignore[assignment]
            if tuple(batch.shape[-2:]) != first:
                raise ValueError(
                    f"images from {self.ids[start]!r} on are {tuple(batch.shape[-2:])}, earlier ones {first}; "
                    "pass ImageSet(..., size=(H, W)) to resize on load"
                )
            yield start, batch

    def _load(self, i: int) -> torch.Tensor:
        source = self._sources[i]
        if isinstance(source, torch.Tensor):
            return source
        image = self._check_channels(i, _read(source, self.ids[i], self.channels))
        actual = (int(image.shape[-2]), int(image.shape[-1]))
        declared = self._frames[i]
        if declared is not None and tuple(declared) != actual:
            where = source if isinstance(source, str) else f"image {self.ids[i]!r}"
            raise ValueError(
                f"{where} is {actual[0]}x{actual[1]} (H x W) but its record declares size {list(declared)}; its "
                "regions are in the declared frame and would be rescaled silently: fix or remove \"size\" in the "
                "annotations (COCO: \"height\"/\"width\"; VOC: <size>)"
            )
        self._frames[i] = actual
        return image if self.size is None else _resize(image, self.size)

    def _check_channels(self, i: int, image: torch.Tensor) -> torch.Tensor:
        """``image`` (image ``i``), unless its channel count differs from ``channels`` or from the set's first
        image's: ``ValueError`` naming both."""
        count = int(image.shape[0])
        where = f"image {self.ids[i]!r}" + (f" ({self._sources[i]})" if isinstance(self._sources[i], str) else "")
        if self.channels is not None and count != self.channels:
            raise ValueError(f"{where} has {count} channel{'s' * (count != 1)}, but the set was made with "
                             f"channels={self.channels}; convert it, or pass the channel count it has")
        if self._first_channels is None:
            self._first_channels = (count, self.ids[i])
        elif count != self._first_channels[0]:
            first, first_id = self._first_channels
            raise ValueError(f"{where} has {count} channel{'s' * (count != 1)}, image {first_id!r} has {first}; the "
                             "images of one ImageSet share one channel count: convert them to the count the model "
                             "takes (e.g. ImageSet(..., channels=1) reads files as grey)")
        return image

    def _original_size(self, i: int) -> Size:
        """Image ``i``'s size before ``size=``: known, from the file header, or by loading it."""
        if self._frames[i] is None:
            source = self._sources[i]
            if isinstance(source, str):
                from PIL import Image

                with Image.open(source) as image:
                    self._frames[i] = (image.height, image.width)
            else:
                self._load(i)
        return self._frames[i]  # type: ignore[return-value]


# ---- helpers ---------------------------------------------------------------------------------
def scores_group(source: dict[str, Any] | None, name: str, n: int) -> np.ndarray:
    """Group ``name`` of the ImageSet behind attention Scores, one value per score (``Scores.by(name)``).

    ``source`` is the Scores' ``source``: its ``heatmaps`` must have been computed from an ``ImageSet``
    (``Heatmaps.images``); ``source["index"][k]`` is the image of value ``k`` (a ``where()`` subset
    keeps it aligned). ``ValueError`` saying to pass the values when there is no ImageSet behind them;
    ``KeyError`` listing the groups for an unknown name."""
    source = source or {}
    images = getattr(source.get("heatmaps"), "images", None)
    if not isinstance(images, ImageSet):
        why = ("they were not computed from heatmaps" if source.get("heatmaps") is None
               else "their heatmaps were computed from " + ("no images" if images is None else f"a {type(images).__name__}, not an ImageSet"))
        raise ValueError(
            f"by({name!r}): a group name is looked up in the ImageSet the scores' heatmaps were computed on, but {why}; "
            f"pass one group value per score instead, e.g. scores.by(images.group({name!r}))"
        )
    column = np.asarray(images.group(name))
    index = source.get("index")
    positions = np.arange(len(images)) if index is None else np.asarray(index, dtype=np.int64)
    if positions.shape != (n,):
        raise ValueError(f"by({name!r}): {n} scores but the heatmaps' ImageSet has {len(images)} images and the scores "
                         "record no index into it; pass one group value per score instead")
    return column[positions]


def _sources(images: Any, size: Size | None) -> tuple[list[Source], list[Size | None]]:
    """Per-image sources and their known original sizes; in-memory images are validated (and resized) now."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    sources: list[Source] = []
    frames: list[Size | None] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) or callable(item):
            sources.append(os.fspath(item) if isinstance(item, os.PathLike) else item)
            frames.append(None)
            continue
        batch = as_batch(item)
        for image in batch:
            frames.append((int(image.shape[-2]), int(image.shape[-1])))
            sources.append(image if size is None else _resize(image, size))
    return sources, frames


def _read(source: Source, label: str, channels: int | None) -> torch.Tensor:
    if isinstance(source, str):
        from PIL import Image

        with Image.open(source) as image:
            batch = as_batch(_pixels(image, 3 if channels is None else channels))
    else:
        try:
            batch = as_batch(source())
        except ValueError as error:
            raise ValueError(f"loader of image {label!r} returned something unusable: {error}") from None
    if batch.shape[0] != 1:
        raise ValueError(f"image {label!r} loaded as {batch.shape[0]} images; a source must give exactly one")
    return batch[0]


def _pixels(image: PIL.Image.Image, channels: int) -> np.ndarray | torch.Tensor:
    """An opened image as ``as_batch`` input with ``channels`` (1, 3 or 4: PIL's ``L``, ``RGB``, ``RGBA``)
    channels: uint8, or float in [0, 1] for 16- and 32-bit grey images (``convert`` would clip every
    value above 255), scaled by their bit depth (grey repeated into R, G, B; alpha 1)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(image, dtype=np.float64)
        depth = 65535.0 if image.mode.startswith("I;16") or grey.max(initial=0) <= 65535 else 2.0**32 - 1
        planes = [grey / depth] * min(channels, 3) + [np.ones_like(grey)] * (channels == 4)
        return torch.from_numpy(np.stack(planes)).float()
    return np.array(image.convert(_FILE_MODES[channels]))


def _resize(image: torch.Tensor, size: Size) -> torch.Tensor:
    if tuple(image.shape[-2:]) == size:
        return image
    resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)
    return resized[0].clamp_(0.0, 1.0)


def _stack(images: list[torch.Tensor], ids: list[str]) -> torch.Tensor:
    sizes = [tuple(image.shape[-2:]) for image in images]
    for k, image_size in enumerate(sizes):
        if image_size != sizes[0]:
            raise ValueError(
                f"image {ids[k]!r} is {image_size} but image {ids[0]!r} is {sizes[0]}; images batched together "
                "must share a size: pass ImageSet(..., size=(H, W)) to resize on load"
            )
    return torch.stack(images)


def _column(values: Sequence[Any], n: int, what: str, as_object: bool = False) -> np.ndarray:
    """One value per image: a 1-D numpy array of the values' natural dtype (or object)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if as_object or array.ndim != 1 or array.dtype == object:
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
    if len(array) != n:
        raise ValueError(f"{what} has {len(array)} values for {n} images")
    return array


def _nothing_matched(filters: list[tuple[str, np.ndarray, np.ndarray | None]], n: int) -> str:
    """The warning of a ``where()`` that selected nothing: each filter's count, the values its column has."""
    called = ", ".join(written for written, _, _ in filters)
    parts = []
    for written, matches, column in filters:
        if column is None:
            parts.append(f"the {written} selects {int(matches.sum())}")
            continue
        key = written.split("=", 1)[0]
        present = list(dict.fromkeys(map(repr, column.tolist())))  # reprs: values need not be hashable
        listed = ", ".join(present[:_LISTED]) + (f", ... ({len(present)} values)" if len(present) > _LISTED else "")
        what = "labels" if key == "label" else f"values of group {key!r}"
        parts.append(f"{written} matches {int(matches.sum())} ({what}: {listed})")
    if any(column is not None and not matches.any() for _, matches, column in filters):
        hint = "check the spelling and the type of the value (1 is not '1')"
    elif any(not matches.any() for _, matches, _ in filters):
        hint = "the mask is False for every image"
    else:
        hint = "each filter matches some images, but no image matches them all"
    return f"ImageSet.where({called}) matched none of the {n} images: {'; '.join(parts)}; {hint}"


_LISTED = 20
"""At most this many distinct values are listed in the warning of an empty ``where()``."""


def _bool_mask(mask: Any, n: int) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    array = np.asarray(mask)
    if array.dtype != bool or array.shape != (n,):
        raise ValueError(f"where() takes a boolean mask with one value per image ({n},), got {array.dtype} {array.shape}")
    return array


def _resolve_masks(entry: Any, resolve: Callable[[str], str]) -> Any:
    """Replace ``{"mask": "relative.png"}`` paths by ``resolve(path)`` (anywhere inside a region entry)."""
    if isinstance(entry, dict) and isinstance(entry.get("mask"), str):
        return {"mask": resolve(entry["mask"])}
    if isinstance(entry, list) and any(isinstance(e, dict) for e in entry):
        return [_resolve_masks(e, resolve) for e in entry]
    return entry
