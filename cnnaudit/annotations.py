"""Readers of the annotation formats ``ImageSet`` loads besides its own ``annotations.json``.

* COCO detection files (:func:`read_coco`, behind ``ImageSet.from_coco``): each annotation's box
  (``bbox``) or its segmentation — polygons, or an RLE mask given as an uncompressed ``counts`` list
  or as COCO's compressed string, decoded here (:func:`decode_rle`, :func:`encode_rle`; no
  pycocotools).
* Pascal VOC XML (:func:`read_voc`, behind ``ImageSet.from_voc``): one file per image, boxes.
* Class-index mask PNGs (:func:`read_masks`, behind ``ImageSet.from_masks``): one per image, each
  pixel value mapped to a region name.

Every reader checks what it reads at the door and returns a :class:`Loaded` (image sources, ids,
per-image region shapes, groups, known image sizes) that ``ImageSet`` turns into a set. Images stay
unread; only where a mask must match its image's size and the size is not declared is the image's
file header read. Errors read ``"<file>: <entry>: what was wrong; how to fix"``. Image and mask
paths must stay inside their folder (after ``..`` and symbolic links are resolved) unless
``allow_outside=True`` (:func:`inside`).

Labels follow one rule in every format: an image whose regions all have one name is labelled with
that name; an image with no region, or with regions of several names, has the label ``None``; a set
where no image has any region has no labels.
"""

from __future__ import annotations

import json
import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cnnaudit.regions import Box, Mask, Polygon, Shape, Size, class_pixels, unknown_name

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
"""File name endings (any case) ``read_masks`` takes for images."""


@dataclass
class Loaded:
    """What a reader found, one entry per image in order: ``sources`` (file paths), ``ids``,
    ``regions`` (``{name: per image a list of shapes, or None}``), ``frames`` (the ``(H, W)`` each
    image's coordinates are in, ``None`` where unknown until the image is read), ``groups``."""

    sources: list[str]
    ids: list[str]
    regions: dict[str, list[list[Shape] | None]]
    frames: list[Size | None]
    groups: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def labels(self) -> list[str | None] | None:
        """The name of an image's regions when they all have one name (see the module docstring)."""
        present = [[name for name, entries in self.regions.items() if entries[i]] for i in range(len(self.ids))]
        if not any(present):
            return None
        return [names[0] if len(names) == 1 else None for names in present]


# ---- shared helpers ---------------------------------------------------------------------------
def read_json(path: Path) -> Any:
    """The parsed JSON of ``path``; ``ValueError`` naming the file, line and column when it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}") from None


def inside(root: Path, source: str | os.PathLike, relative: str, what: str, *, allow_outside: bool) -> str:
    """``root / relative`` as a string; ``ValueError`` naming ``source`` and ``what`` if it resolves
    (``..``, an absolute path, a symbolic link) to a file outside ``root`` and ``allow_outside`` is off."""
    path = root / relative
    if not allow_outside and not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(
            f"{source}: {what} points outside {root}: {relative!r} resolves to {path.resolve()}; keep the data "
            "inside the folder, or pass allow_outside=True if you trust the annotations"
        )
    return str(path)


def _header_size(path: str) -> Size:
    """``(H, W)`` of an image file from its header (the pixels are not decoded)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.height, image.width


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _pixels(value: Any) -> bool:
    """A positive whole number of pixels (``480`` or ``480.0``)."""
    return _number(value) and np.isfinite(value) and value > 0 and float(value).is_integer()


def _listed(values: Sequence[Any], most: int = 8) -> str:
    shown = ", ".join(map(str, values[:most]))
    return shown + (f", ... ({len(values)} in all)" if len(values) > most else "")


def _region_lists(names: Sequence[str], n: int) -> dict[str, list[list[Shape]]]:
    return {name: [[] for _ in range(n)] for name in names}


def _finished(regions: dict[str, list[list[Shape]]]) -> dict[str, list[list[Shape] | None]]:
    """Empty per-image lists become ``None``: the image has no such region."""
    return {name: [shapes or None for shapes in entries] for name, entries in regions.items()}


# ---- COCO ---------------------------------------------------------------------------------------
def read_coco(json_path: str | os.PathLike, image_dir: str | os.PathLike | None = None, groups: Sequence[str] = (),
              shapes: str = "boxes", *, allow_outside: bool = False) -> Loaded:
    """A COCO detection file: ``{"images": [...], "categories": [...], "annotations": [...]}``.

    Each category becomes a region named after it; an image's region is the union of its
    annotations of that category, ``None`` where there are none. ``shapes="boxes"`` reads each
    annotation's ``bbox = [x, y, w, h]`` as the half-open box ``(x, y, x + w, y + h)``;
    ``shapes="segmentation"`` reads its ``segmentation``: polygons ``[[x1, y1, x2, y2, ...], ...]``
    (coordinates in the same continuous pixel frame as boxes, rasterised by cnnaudit's resolution
    rule, see :mod:`cnnaudit.regions`, which can differ by a pixel along edges from pycocotools'
    rasteriser), or an RLE mask ``{"counts": [...] | "compressed string", "size": [height, width]}``
    (column-major runs starting with background, decoded lazily). Polygons of fewer than three
    vertices cover no pixel and are left out with a warning.

    Checked at the door: image ids unique, category ids and names unique, every annotation's
    ``image_id`` among the images and ``category_id`` among the categories, boxes with non-negative
    sizes, polygons with an even number of finite coordinates, RLE runs summing to ``size`` and
    ``size`` equal to the image's ``height``/``width`` (its file header when the record has none).
    ``file_name`` is relative to ``image_dir``, by default the JSON file's folder. ``groups``
    names fields of the image records to expose as groups.
    """
    if shapes not in ("boxes", "segmentation"):
        raise ValueError(f"from_coco(shapes={shapes!r}): expected 'boxes' (each annotation's \"bbox\") or "
                         "'segmentation' (its polygons or RLE mask)")
    path = Path(json_path)
    coco = read_json(path)
    images = coco.get("images") if isinstance(coco, dict) else None
    if not isinstance(images, list) or not all(isinstance(i, dict) and "id" in i and isinstance(i.get("file_name"), str) for i in images):
        raise ValueError(f"{path}: a COCO file needs \"images\": a list of records with \"id\" and \"file_name\"")
    root = path.parent if image_dir is None else Path(image_dir)
    position: dict[Any, int] = {}
    by_text: dict[str, int] = {}
    sources: list[str] = []
    frames: list[Size | None] = []
    for i, image in enumerate(images):
        key = image["id"]
        if not isinstance(key, (int, str)) or isinstance(key, bool):
            raise ValueError(f"{path}: image {i} ({image['file_name']!r}) has id {key!r}; an image id is an integer or a string")
        if str(key) in by_text:
            raise ValueError(f"{path}: image {i} ({image['file_name']!r}) repeats id {key!r} of image {by_text[str(key)]}; "
                             "image ids must be unique")
        position[key], by_text[str(key)] = i, i
        sources.append(inside(root, path, image["file_name"], f"image id {key!r}", allow_outside=allow_outside))
        if "height" in image or "width" in image:
            height, width = image.get("height"), image.get("width")
            if not (_pixels(height) and _pixels(width)):
                raise ValueError(f"{path}: image id {key!r} has height {height!r} and width {width!r}; give both as "
                                 "positive integers (pixels), or neither to read the sizes from the image files")
            frames.append((int(height), int(width)))
        else:
            frames.append(None)
    names = _coco_categories(path, coco.get("categories", []))
    annotations = coco.get("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(f"{path}: \"annotations\" must be a list of records, got {type(annotations).__name__}")
    regions = _region_lists(list(names.values()), len(images))
    annotation_ids: dict[Any, int] = {}
    degenerate: list[int] = []
    for k, annotation in enumerate(annotations):
        where = f"{path}: annotation {k}"
        if not isinstance(annotation, dict):
            raise ValueError(f"{where} is {annotation!r:.60}; expected a record with \"image_id\", \"category_id\" and \"bbox\"")
        if shapes == "boxes":
            found, rle_size = _coco_box(annotation, where), None
        else:
            found, rle_size = _coco_segmentation(annotation, where, k, degenerate)
        image_id = annotation.get("image_id")
        if not isinstance(image_id, (int, str)) or image_id not in position:
            raise ValueError(f"{where} refers to image id {image_id!r}, which is not in 'images'")
        category = annotation.get("category_id")
        if not isinstance(category, (int, str)) or category not in names:
            known = ", ".join(f"{c!r} ({n})" for c, n in list(names.items())[:10]) or "none"
            raise ValueError(f"{where} has category_id {category!r}, which is not in 'categories' (ids: {known}); "
                             "add the category to 'categories' or remove the annotation")
        if "id" in annotation:
            if isinstance(annotation["id"], (int, str)) and annotation["id"] in annotation_ids:
                raise ValueError(f"{where} repeats id {annotation['id']!r} of annotation {annotation_ids[annotation['id']]}; "
                                 "annotation ids must be unique (was a file merged twice?)")
            if isinstance(annotation["id"], (int, str)):
                annotation_ids[annotation["id"]] = k
        i = position[image_id]
        if rle_size is not None:
            if frames[i] is None:
                try:
                    frames[i] = _header_size(sources[i])
                except FileNotFoundError:
                    raise FileNotFoundError(
                        f"{where}: image id {image_id!r} has no \"height\"/\"width\", so its file {sources[i]} is read to "
                        "check the RLE mask's size, but it does not exist; add the file, or height and width to the record"
                    ) from None
            if tuple(rle_size) != frames[i]:
                raise ValueError(
                    f"{where}: the RLE mask is {rle_size[0]}x{rle_size[1]} (height x width, its \"size\") but image id "
                    f"{image_id!r} is {frames[i][0]}x{frames[i][1]}; a mask covers its whole image at the image's size"
                )
        regions[names[category]][i].extend(found)
    if degenerate:
        warnings.warn(f"{path}: {len(degenerate)} polygons with fewer than 3 vertices (annotations "
                      f"{_listed(sorted(set(degenerate)))}) cover no pixel and were left out", UserWarning, stacklevel=3)
    for name in groups:
        if not any(name in image for image in images):
            fields = sorted({f for image in images for f in image} - {"id", "file_name"})
            raise ValueError(f"{path}: groups: no image record has a field {name!r}; fields: {', '.join(map(repr, fields)) or 'none'}")
    return Loaded(
        sources=sources,
        ids=[str(image["id"]) for image in images],
        regions=_finished(regions),
        frames=frames,
        groups={name: [image.get(name) for image in images] for name in groups},
    )


def _coco_categories(path: Path, categories: Any) -> dict[Any, str]:
    if not isinstance(categories, list):
        raise ValueError(f"{path}: \"categories\" must be a list of {{\"id\": ..., \"name\": ...}}, got {type(categories).__name__}")
    names: dict[Any, str] = {}
    for k, category in enumerate(categories):
        if not (isinstance(category, dict) and isinstance(category.get("id"), (int, str)) and not isinstance(category.get("id"), bool)
                and isinstance(category.get("name"), str) and category["name"]):
            raise ValueError(f"{path}: category {k} needs \"id\" (an integer) and \"name\" (a string), got {category!r:.80}")
        key, name = category["id"], category["name"]
        if key in names:
            raise ValueError(f"{path}: category {k} repeats id {key!r} (of {names[key]!r}); category ids must be unique")
        if name in names.values():
            other = next(c for c, n in names.items() if n == name)
            raise ValueError(f"{path}: category {k} (id {key!r}) repeats the name {name!r} of category id {other!r}; each "
                             "category becomes the region of its name, so names must be unique")
        names[key] = name
    return names


def _coco_box(annotation: dict, where: str) -> list[Shape]:
    bbox = annotation.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
        hint = "; or pass shapes='segmentation' to read its \"segmentation\"" if "segmentation" in annotation else ""
        raise ValueError(f"{where} needs \"bbox\": [x, y, width, height], got {bbox!r:.60}{hint}")
    x, y, w, h = (float(v) for v in bbox)
    if not np.isfinite([x, y, w, h]).all() or w < 0 or h < 0:
        raise ValueError(f"{where} has \"bbox\" {bbox}: width and height must be finite and not negative (COCO boxes are "
                         "[x, y, width, height], not [x0, y0, x1, y1])")
    return [Box(x, y, x + w, y + h)]


def _coco_segmentation(annotation: dict, where: str, k: int, degenerate: list[int]) -> tuple[list[Shape], Size | None]:
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, dict):
        counts, size = _rle_parts(segmentation, where)
        return [Mask(_RLEMask(counts, size, f"{where} (RLE mask)"))], size
    if isinstance(segmentation, list) and segmentation and all(_number(v) for v in segmentation):
        raise ValueError(f"{where}: \"segmentation\" is a flat list of numbers; COCO wraps each polygon in a list: "
                         "[[x1, y1, x2, y2, ...]]")
    if not (isinstance(segmentation, list) and segmentation and all(isinstance(p, list) for p in segmentation)):
        raise ValueError(f"{where} needs \"segmentation\": polygons [[x1, y1, x2, y2, ...], ...] or an RLE mask "
                         f"{{\"counts\": ..., \"size\": [height, width]}}, got {segmentation!r:.60}; or pass shapes='boxes' "
                         "to read its \"bbox\"")
    found: list[Shape] = []
    for j, polygon in enumerate(segmentation):
        if not all(_number(v) for v in polygon) or len(polygon) % 2:
            raise ValueError(f"{where}: polygon {j} of \"segmentation\" needs an even number of coordinates "
                             f"[x1, y1, x2, y2, ...], got {polygon!r:.60}")
        vertices = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(vertices).all():
            raise ValueError(f"{where}: polygon {j} of \"segmentation\" has a coordinate that is not finite")
        if len(vertices) < 3:
            degenerate.append(k)
            continue
        found.append(Polygon(vertices))
    return found, None


# ---- RLE ----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _RLEMask:
    """A validated RLE, decoded into its boolean mask each time it is called (``Mask`` source)."""

    counts: np.ndarray
    size: Size
    where: str

    def __call__(self) -> np.ndarray:
        return _counts_mask(self.counts, self.size)

    def __str__(self) -> str:
        return self.where


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """The boolean ``(height, width)`` mask of a COCO RLE ``{"counts": ..., "size": [height, width]}``.

    ``counts`` is either the list of run lengths (uncompressed RLE) or COCO's compressed string;
    runs go down the columns (column-major) and start with background (a mask whose first pixel is
    set starts with a run of 0). ``ValueError`` when the runs do not cover ``size``."""
    counts, size = _rle_parts(rle, "RLE")
    return _counts_mask(counts, size)


def encode_rle(mask: Any, compressed: bool = True) -> dict[str, Any]:
    """The COCO RLE of a boolean ``(height, width)`` mask: ``{"size": [h, w], "counts": ...}`` with
    ``counts`` COCO's compressed string (``compressed=True``, as pycocotools writes it) or the list of
    run lengths. ``decode_rle`` inverts it."""
    array = np.asarray(mask, dtype=bool)
    if array.ndim != 2:
        raise ValueError(f"encode_rle takes one (height, width) mask, got shape {array.shape}")
    flat = array.ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    size = [int(array.shape[0]), int(array.shape[1])]
    return {"size": size, "counts": _counts_string(counts) if compressed else counts}


def _rle_parts(rle: Mapping[str, Any], where: str) -> tuple[np.ndarray, Size]:
    """Validated run lengths and ``(height, width)`` of an RLE (compressed or not)."""
    size = rle.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ValueError(f"{where}: an RLE mask needs \"size\": [height, width] in pixels, got {size!r:.40}")
    counts = rle.get("counts")
    if isinstance(counts, (str, bytes)):
        runs = _string_counts(counts, where)
    elif isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
        runs = np.asarray(counts, dtype=np.int64)
        if (runs < 0).any():
            raise ValueError(f"{where}: RLE \"counts\" has a negative run length ({int(runs.min())})")
    else:
        raise ValueError(f"{where}: RLE \"counts\" must be a list of run lengths or COCO's compressed string, got {counts!r:.40}")
    total, pixels = int(runs.sum()), size[0] * size[1]
    if total != pixels:
        raise ValueError(f"{where}: the RLE runs cover {total} pixels but \"size\" {size} has {pixels}; the counts are "
                         "truncated or belong to a mask of another size")
    return runs, (size[0], size[1])


def _string_counts(text: str | bytes, where: str) -> np.ndarray:
    """Run lengths of COCO's compressed RLE string (pycocotools' ``rleFrString``): each count is a
    little-endian sequence of 5-bit groups, one per character (``chr(48 + group)``, bit 0x20: more
    groups follow, bit 0x10 of the last group: negative), and from the fourth count on it is stored
    as the difference to the count two before."""
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    counts: list[int] = []
    value = groups = 0
    for p, character in enumerate(text):
        c = ord(character) - 48
        if not 0 <= c < 64:
            raise ValueError(f"{where}: the RLE string has {character!r} at position {p}; COCO's compressed counts use "
                             "only the characters '0' to 'o'")
        value |= (c & 0x1F) << (5 * groups)
        groups += 1
        if c & 0x20:
            continue
        if c & 0x10:
            value -= 1 << (5 * groups)  # sign extension
        if len(counts) > 2:
            value += counts[-2]
        if value < 0:
            raise ValueError(f"{where}: the RLE string decodes to a negative run at count {len(counts)}; it is not a "
                             "COCO compressed RLE")
        counts.append(value)
        value = groups = 0
    if groups:
        raise ValueError(f"{where}: the RLE string ends inside a count (its last character says more follow); it is truncated")
    return np.asarray(counts, dtype=np.int64)


def _counts_string(counts: Sequence[int]) -> str:
    """COCO's compressed string of run lengths (pycocotools' ``rleToString``), the inverse of ``_string_counts``."""
    out = []
    for i, count in enumerate(counts):
        value = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = value & 0x1F
            value >>= 5
            more = value != -1 if c & 0x10 else value != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def _counts_mask(counts: np.ndarray, size: Size) -> np.ndarray:
    inside_run = np.zeros(len(counts), dtype=bool)
    inside_run[1::2] = True
    return np.repeat(inside_run, counts).reshape(size, order="F")


# ---- Pascal VOC ---------------------------------------------------------------------------------
def read_voc(xml_dir: str | os.PathLike, image_dir: str | os.PathLike | None = None, groups: Sequence[str] = (),
             classes: Sequence[str] | None = None, *, allow_outside: bool = False) -> Loaded:
    """Pascal VOC XML files, one per image (every ``*.xml`` in ``xml_dir``, in name order)::

        <annotation>
          <filename>2007_000027.jpg</filename>          <!-- required, relative to image_dir -->
          <size><width>486</width><height>500</height></size>   <!-- optional -->
          <object><name>person</name>
            <bndbox><xmin>174</xmin><ymin>101</ymin><xmax>349</xmax><ymax>351</ymax></bndbox>
          </object> ...
        </annotation>

    Each object name becomes a region: the union of that image's boxes of the name, ``None`` where
    it has none. VOC coordinates are 1-based *inclusive* pixel indices (``xmin = 1`` is the first
    column, and ``xmax`` is the last column inside), so ``<bndbox>`` becomes the 0-based half-open
    box ``(xmin - 1, ymin - 1, xmax, ymax)``. Ids are the XML file names without ``.xml``; ``<size>``
    is the frame of the boxes (compared with the image when it is read). ``image_dir`` defaults to
    the sibling ``JPEGImages`` folder when there is one (the VOCdevkit layout), else ``xml_dir``.
    ``classes``: the names objects may have (their regions exist even where absent); an unknown
    name is then an error. ``groups``: element paths under ``<annotation>`` (``"segmented"``,
    ``"source/database"``) whose text becomes a group (``None`` where missing).

    Checked at the door: one ``<annotation>`` per file, a ``<filename>`` described by no other file,
    ``<size>`` positive integers, every object with a ``<name>`` and a ``<bndbox>`` of four numbers
    with ``xmin <= xmax`` and ``ymin <= ymax``. Files declaring a DTD or entities are refused
    (``<!DOCTYPE``, ``<!ENTITY``: entity expansion can exhaust memory or pull in local files).
    """
    folder = Path(xml_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; ImageSet.from_voc reads the Pascal VOC XML files in it, one "
                                "per image (e.g. VOCdevkit/VOC2012/Annotations)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder} has no .xml files; ImageSet.from_voc reads one Pascal VOC XML file per image from it")
    if image_dir is not None:
        root = Path(image_dir)
    else:
        root = folder.parent / "JPEGImages" if (folder.parent / "JPEGImages").is_dir() else folder
    known = None if classes is None else _voc_classes(classes)
    described: dict[str, Path] = {}
    sources: list[str] = []
    frames: list[Size | None] = []
    per_image: list[dict[str, list[Shape]]] = []
    group_values: dict[str, list[Any]] = {name: [] for name in groups}
    for file in files:
        document = _read_xml(file)
        if document.tag != "annotation":
            raise ValueError(f"{file}: the root element is <{document.tag}>; a Pascal VOC file is an <annotation>")
        filename = (document.findtext("filename") or "").strip()
        if not filename:
            raise ValueError(f"{file}: <filename> is missing or empty; a VOC file names its image in <annotation><filename>")
        if filename in described:
            raise ValueError(f"{file}: <filename> {filename!r} is described by {described[filename].name} too; one XML file per image")
        described[filename] = file
        sources.append(inside(root, file, filename, "<filename>", allow_outside=allow_outside))
        frames.append(_voc_size(document, file))
        boxes: dict[str, list[Shape]] = {}
        for j, element in enumerate(document.findall("object")):
            name = (element.findtext("name") or "").strip()
            if not name:
                raise ValueError(f"{file}: <object> {j} has no <name>; every object names its class")
            if known is not None and name not in known:
                raise ValueError(f"{file}: <object> {j}: {unknown_name(name, known, 'class')}; add it to classes= or fix the name")
            boxes.setdefault(name, []).append(_voc_box(element, file, j, name))
        per_image.append(boxes)
        for path in groups:
            text = document.findtext(path)
            group_values[path].append(None if text is None else text.strip())
    for path, values in group_values.items():
        if all(value is None for value in values):
            raise ValueError(f"{folder}: groups: no file has an element <{path}> under <annotation>; name an element path such as "
                             "'segmented' or 'source/database'")
    names = known if known is not None else sorted({name for boxes in per_image for name in boxes})
    return Loaded(
        sources=sources,
        ids=[file.stem for file in files],
        regions={name: [boxes.get(name) for boxes in per_image] for name in names},
        frames=frames,
        groups=group_values,
    )


class _RefuseDoctype(ET.TreeBuilder):
    """A tree builder that stops at a document type declaration (which is where entities are declared)."""

    def __init__(self, file: Path) -> None:
        super().__init__()
        self.file = file

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise ValueError(_doctype_refused(self.file))


def _doctype_refused(file: Path) -> str:
    return (f"{file}: the document declares a DTD or entities (<!DOCTYPE or <!ENTITY); cnnaudit refuses them in annotation "
            "files, since entity expansion can exhaust memory or read local files; remove the declaration (VOC files "
            "need none)")


def _read_xml(file: Path) -> ET.Element:
    """The root element of an XML file, refusing DTDs and entities (checked on the bytes, whatever the
    encoding, and again by the parser) and naming the file, line and column of a syntax error."""
    data = file.read_bytes()
    flat = data.replace(b"\x00", b"").upper()  # UTF-16/32 text has NULs between ASCII characters
    if b"<!DOCTYPE" in flat or b"<!ENTITY" in flat:
        raise ValueError(_doctype_refused(file))
    parser = ET.XMLParser(target=_RefuseDoctype(file))
    try:
        parser.feed(data)
        return parser.close()
    except ET.ParseError as error:
        raise ValueError(f"{file} is not valid XML: {error}") from None


def _voc_classes(classes: Sequence[str]) -> list[str]:
    if isinstance(classes, str) or not all(isinstance(c, str) and c for c in classes):
        raise ValueError(f"from_voc(classes={classes!r:.60}): classes is a list of object names, e.g. ['cat', 'dog']")
    if len(set(classes)) != len(classes):
        raise ValueError(f"from_voc(classes=...): {sorted(c for c in set(classes) if list(classes).count(c) > 1)} repeated")
    return list(classes)


def _voc_size(document: ET.Element, file: Path) -> Size | None:
    size = document.find("size")
    if size is None:
        return None
    width, height = (size.findtext(tag) for tag in ("width", "height"))
    try:
        frame = (int((height or "").strip()), int((width or "").strip()))
    except ValueError:
        frame = (0, 0)
    if min(frame) <= 0:
        raise ValueError(f"{file}: <size> has <width> {width!r} and <height> {height!r}; expected positive integers (pixels), "
                         "or no <size> to read the image's size from its file")
    return frame


def _voc_box(element: ET.Element, file: Path, j: int, name: str) -> Box:
    box = element.find("bndbox")
    if box is None:
        raise ValueError(f"{file}: <object> {j} ({name!r}) has no <bndbox>; from_voc reads boxes "
                         "<bndbox><xmin>..</xmin><ymin>..</ymin><xmax>..</xmax><ymax>..</ymax></bndbox>")
    values = {}
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = box.findtext(tag)
        try:
            values[tag] = float((text or "").strip())
        except ValueError:
            values[tag] = float("nan")
        if not np.isfinite(values[tag]):
            raise ValueError(f"{file}: <object> {j} ({name!r}): <bndbox><{tag}> is {text!r}; expected a number (a 1-based pixel index)")
    if values["xmax"] < values["xmin"] or values["ymax"] < values["ymin"]:
        raise ValueError(f"{file}: <object> {j} ({name!r}): <bndbox> has xmin {values['xmin']:g}, xmax {values['xmax']:g}, "
                         f"ymin {values['ymin']:g}, ymax {values['ymax']:g}; VOC boxes are inclusive pixel indices with "
                         "xmin <= xmax and ymin <= ymax")
    return Box(values["xmin"] - 1, values["ymin"] - 1, values["xmax"], values["ymax"])


# ---- class-index masks --------------------------------------------------------------------------
def read_masks(image_dir: str | os.PathLike, mask_dir: str | os.PathLike, classes: Mapping[int, str | None], *,
               mask_suffix: str = ".png", allow_outside: bool = False) -> Loaded:
    """Class-index segmentation masks, one per image: ``mask_dir/<stem><mask_suffix>`` for the image
    ``image_dir/<stem>.<png|jpg|...>``; every mask file in ``mask_dir`` (in name order) is one image.

    A mask is a single-channel image whose pixel values are classes (8- or 16-bit grey, or a palette
    PNG read as its indices, like VOC's SegmentationClass). ``classes`` maps pixel values to region
    names (``{1: "tools", 2: "face"}``); several values may share a name (their union); a value
    mapped to ``None`` is left out (``{255: None}`` for VOC's object borders); 0 is background unless
    ``classes`` names it. An image's region is the pixels of its values, ``None`` when the mask has
    none of them. Ids are the stems.

    Checked at the door (each mask is read once, and its image's file header): a mask for every
    image found and an image for every mask, one image per stem, a single-channel mask of exactly
    its image's height and width, and no pixel value missing from ``classes``. The regions read the
    mask file again, lazily, when rasterised.
    """
    images_root, masks_root = Path(image_dir), Path(mask_dir)
    for folder, what in ((images_root, "image_dir"), (masks_root, "mask_dir")):
        if not folder.is_dir():
            raise FileNotFoundError(f"from_masks({what}={os.fspath(folder)!r}): not a folder")
    values = _mask_classes(classes)
    names = list(dict.fromkeys(name for name in values.values() if name is not None))
    values.setdefault(0, None)
    if not isinstance(mask_suffix, str) or not mask_suffix or "/" in mask_suffix or os.sep in mask_suffix:
        raise ValueError(f"from_masks(mask_suffix={mask_suffix!r}): the end of every mask's file name after the image's "
                         "stem, e.g. '.png' or '_mask.png'")
    masks = sorted(p for p in masks_root.iterdir() if p.name.endswith(mask_suffix) and p.is_file())
    if not masks:
        raise FileNotFoundError(f"{masks_root} has no files ending in {mask_suffix!r}; from_masks reads one class-index mask "
                                "per image from it (pass mask_suffix= if they are named otherwise)")
    by_stem: dict[str, list[Path]] = {}
    for candidate in sorted(images_root.iterdir()):
        if candidate.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(candidate.stem, []).append(candidate)
    regions = _region_lists(names, len(masks))
    sources: list[str] = []
    frames: list[Size | None] = []
    ids: list[str] = []
    for i, mask in enumerate(masks):
        stem = mask.name[: -len(mask_suffix)]
        found = by_stem.get(stem, [])
        if not found:
            raise ValueError(f"{mask}: no image {stem}.* ({', '.join(IMAGE_SUFFIXES)}) in {images_root}; every mask needs "
                             f"its image, named like the mask without {mask_suffix!r}")
        if len(found) > 1:
            raise ValueError(f"{mask}: several images have the stem {stem!r} ({', '.join(p.name for p in found)}); keep one")
        image = found[0]
        if image.resolve() == mask.resolve():
            raise ValueError(f"{mask}: is its own image (image_dir and mask_dir are one folder and every {mask_suffix!r} file "
                             "counts as a mask); name the masks apart, e.g. mask_suffix='_mask.png'")
        source = inside(images_root, images_root, image.name, f"image {image.name!r}", allow_outside=allow_outside)
        mask_path = inside(masks_root, masks_root, mask.name, f"mask {mask.name!r}", allow_outside=allow_outside)
        pixels = _mask_pixels(mask_path)
        frame = _header_size(source)
        if pixels.shape != frame:
            raise ValueError(f"{mask_path}: the mask is {pixels.shape[0]}x{pixels.shape[1]} (H x W) but its image {source} is "
                             f"{frame[0]}x{frame[1]}; a class mask has its image's size")
        present = [int(v) for v in np.unique(pixels)]
        unknown = [v for v in present if v not in values]
        if unknown:
            listed = ", ".join(f"{v}: {n!r}" for v, n in sorted(values.items()))
            raise ValueError(f"{mask_path}: pixel values {_listed(unknown)} are not in classes ({{{listed}}}); add them to "
                             "classes, mapping a value to None to leave its pixels out (e.g. {255: None} for VOC's borders)")
        for value in present:
            if values[value] is not None:
                regions[values[value]][i].append(Mask(mask_path, value=value))
        sources.append(source)
        frames.append(frame)
        ids.append(stem)
    return Loaded(sources=sources, ids=ids, regions=_finished(regions), frames=frames)


def _mask_classes(classes: Any) -> dict[int, str | None]:
    example = "e.g. {1: 'tools', 2: 'face'}"
    if not isinstance(classes, Mapping) or not classes:
        raise ValueError(f"from_masks(classes={classes!r:.60}): classes maps the masks' pixel values to region names, {example}")
    out: dict[int, str | None] = {}
    for value, name in classes.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"from_masks(classes=...): key {value!r} is not a pixel value (a non-negative integer); {example}")
        if name is not None and not (isinstance(name, str) and name):
            raise ValueError(f"from_masks(classes=...): value {value} maps to {name!r}; a region name is a non-empty string, "
                             "or None to leave those pixels out")
        out[int(value)] = name
    return out


def _mask_pixels(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return class_pixels(image, path)
