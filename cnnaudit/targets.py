"""Ready-made targets for segmentation and detection models (torchvision's output conventions).

Pass one as ``target=`` to :meth:`Subject.gradcam <cnnaudit.subject.Subject.gradcam>` or
:meth:`Subject.saliency <cnnaudit.subject.Subject.saliency>`::

    seg = ca.Subject(fcn, classes=VOC, preprocess=ca.normalize(MEAN, STD))
    seg.gradcam(images, target=targets.segmentation("cat"))                       # the predicted cat pixels
    seg.gradcam(scenes, target=targets.segmentation("cat", mask="cat"))           # an ImageSet region
    det = ca.Subject(fasterrcnn)                                                  # normalises internally
    det.gradcam(images, target=targets.detection("cat", boxes=[(10, 12, 60, 70), (0, 0, 32, 40)]))

Both read the model output as the model returns it (a dict with ``"out"``, a list of dicts), so no
``Subject(output=...)`` is needed. Each image's data (its mask, its box) is bound to the image by its
position in the audited images, also for Score-CAM's masked copies. A score that does not exist
(an empty predicted region, no matching detection) is *undefined*: the image's map is all zero and
every metric of it is NaN (counted in ``Scores.n_undefined``), never 0 or a miss.

Classes are indices into the model output (for torchvision detection models the label ids, 0 being
the background) or names from ``Subject(classes=...)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np
import torch
from torchvision.ops import box_iou

from cnnaudit.attribution.targets import ClassIndex, RegionLookup
from cnnaudit.regions import Regions

MaskLike = Union[str, Regions, np.ndarray, torch.Tensor]
BoxesLike = Union[str, Regions, np.ndarray, torch.Tensor, Sequence[Union[Sequence[float], None]]]

_NAN = float("nan")


def segmentation(cls: int | str, mask: MaskLike | None = None) -> Segmentation:
    """The summed logits of class ``cls`` inside a region of each image, for segmentation models.

    ``S_n = sum_ij M_nij * Y_n,cls,ij`` with ``Y`` the ``(N, classes, H, W)`` output (a tensor, or
    the ``"out"`` entry of torchvision's ``OrderedDict(out=..., aux=...)``) and ``M_n`` the region:

    * ``mask=None``: the predicted region, the pixels whose argmax class is ``cls``
      (``M_nij = [argmax_c Y_n,c,ij == cls]``, taken from the output without gradient); an image
      where no pixel is predicted ``cls`` has an undefined score;
    * a region name: ``images.region(name)`` of the audited ImageSet; a :class:`~cnnaudit.regions.Regions`
      (``imageset.region(name)``): rasterised at the output's resolution by the one resolution rule;
    * a boolean (or 0/1) array / tensor ``(N, H, W)``, one mask per image, or ``(H, W)`` for every
      image, at the output's resolution (torchvision's outputs are at the input size).

    An empty (or ``None``) region gives an undefined score. This is pytorch-grad-cam's
    ``SemanticSegmentationTarget(category, mask)`` (``(output[category] * mask).sum()``), with one
    mask per image, region names, and no score (instead of 0) where the region is empty.
    """
    return Segmentation(cls, mask)


def detection(cls: int | str, boxes: BoxesLike, iou: float = 0.5) -> Detection:
    """The score of the detection of class ``cls`` that best matches a given box in each image, for
    torchvision detection models (eval mode: a list of dicts with ``boxes``, ``labels``, ``scores``).

    Per image ``n`` with given box ``b_n``: among its detections ``d`` with ``label_d == cls`` and
    ``IoU(b_n, box_d) >= iou`` (``torchvision.ops.box_iou``), the one with the highest IoU (tie: the
    higher score) gives ``S_n = score_d``, the box head's softmax probability (differentiable in the
    backbone's features); no such detection, or no box for the image: undefined.

    ``boxes``: one ``(x0, y0, x1, y1)`` per image in input pixels (half-open, the project's
    convention: the same numbers as torchvision's continuous box corners), ``None`` for an image
    without one; a list, an ``(N, 4)`` array or tensor, a region name of the audited ImageSet, or a
    :class:`~cnnaudit.regions.Regions` (each image's tight box around its region). pytorch-grad-cam's
    ``FasterRCNNBoxScoreTarget`` instead sums ``IoU + score`` over the given boxes and returns 0 when
    nothing matches, which a metric would read as a real score.
    """
    return Detection(cls, boxes, iou)


@dataclass(frozen=True, eq=False)
class Segmentation:
    """:func:`segmentation`'s target (an ``ImageTarget``: bound to the audited images by the subject)."""

    cls: int | str
    mask: MaskLike | None = field(default=None, repr=False)

    def bind(self, n_images: int, class_index: ClassIndex, region: RegionLookup | None) -> SegmentationScores:
        """Class resolved, mask checked for ``n_images`` images (before any pass)."""
        index = class_index(self.cls)
        mask = self.mask
        if isinstance(mask, str):
            mask = _named_region(mask, region, "mask")
        if mask is None:
            return SegmentationScores(index, None, None)
        if isinstance(mask, Regions):
            _check_count(len(mask), n_images, "mask", "regions")
            return SegmentationScores(index, None, mask)
        return SegmentationScores(index, _mask_tensor(mask, n_images), None)


@dataclass(frozen=True, eq=False)
class Detection:
    """:func:`detection`'s target (an ``ImageTarget``: bound to the audited images by the subject)."""

    cls: int | str
    boxes: BoxesLike = field(repr=False)
    iou: float = 0.5

    def bind(self, n_images: int, class_index: ClassIndex, region: RegionLookup | None) -> DetectionScores:
        """Class resolved, boxes and IoU threshold checked for ``n_images`` images (before any pass)."""
        if isinstance(self.iou, bool) or not isinstance(self.iou, (int, float)) or not 0 < self.iou <= 1:
            raise ValueError(f"iou must be a number in (0, 1], the least overlap of a matching detection; got {self.iou!r}")
        index = class_index(self.cls)
        boxes = self.boxes
        if isinstance(boxes, str):
            boxes = _named_region(boxes, region, "boxes")
        if isinstance(boxes, Regions):
            _check_count(len(boxes), n_images, "boxes", "regions")
            boxes = boxes.boxes()
        return DetectionScores(index, _box_tensor(boxes, n_images), float(self.iou))


class SegmentationScores:
    """A bound :class:`Segmentation`: ``scores(output, rows)`` (see :func:`segmentation`)."""

    def __init__(self, index: int, masks: torch.Tensor | None, regions: Regions | None) -> None:
        self.index = index
        self._masks = masks  # bool (N or 1, H, W) on the CPU
        self._regions = regions
        self._placed: dict[tuple[tuple[int, int], torch.device], torch.Tensor] = {}

    def scores(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        logits = _segmentation_logits(output)
        if self.index >= logits.shape[1]:
            raise ValueError(
                f"class index {self.index} is out of range for a segmentation output with {logits.shape[1]} classes"
            )
        class_map = logits[:, self.index]
        if self._masks is None and self._regions is None:
            region = logits.detach().argmax(dim=1) == self.index
        else:
            region = self._region(tuple(class_map.shape[-2:]), class_map.device, rows)
        value = (class_map * region).sum(dim=(1, 2))
        return torch.where(region.flatten(1).any(dim=1), value, _NAN)

    def _region(self, size: tuple[int, int], device: torch.device, rows: torch.Tensor) -> torch.Tensor:
        """The masks of ``rows`` ``(B, H, W)`` at the output's ``size`` on its device (placed once per size and device)."""
        key = (size, device)
        if key not in self._placed:
            if self._regions is not None:
                self._placed[key] = self._regions.masks(size=size, device=device)
            else:
                assert self._masks is not None
                if tuple(self._masks.shape[-2:]) != size:
                    raise ValueError(
                        f"mask is {self._masks.shape[-2]}x{self._masks.shape[-1]} pixels but the model output is "
                        f"{size[0]}x{size[1]}; give masks at the output's resolution, or a Regions "
                        "(imageset.region(name)), which is rasterised at any resolution"
                    )
                self._placed[key] = self._masks.to(device)
        masks = self._placed[key]
        return masks.expand(rows.shape[0], *size) if masks.shape[0] == 1 else masks.index_select(0, rows)


class DetectionScores:
    """A bound :class:`Detection`: ``scores(output, rows)`` (see :func:`detection`)."""

    def __init__(self, index: int, boxes: torch.Tensor, iou: float) -> None:
        self.index = index
        self.iou = iou
        self._boxes = boxes  # float32 (N, 4) on the CPU, NaN rows for images without a box
        self._placed: dict[torch.device, torch.Tensor] = {}

    def scores(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        detections = _detections(output, rows.shape[0])
        if rows.device not in self._placed:
            self._placed[rows.device] = self._boxes.to(rows.device)
        boxes = self._placed[rows.device].index_select(0, rows)
        return torch.stack([self._match(found, box) for found, box in zip(detections, boxes)])

    def _match(self, found: dict[str, torch.Tensor], box: torch.Tensor) -> torch.Tensor:
        """The best match's score (0-d), NaN for none; the undefined value stays connected to the scores' graph."""
        scores = found["scores"]
        if scores.numel() == 0:
            return torch.where(torch.zeros((), dtype=torch.bool, device=scores.device), scores.sum(), _NAN)
        overlap = box_iou(box[None].to(found["boxes"].dtype), found["boxes"].detach())[0]  # NaN for a missing box
        candidate = (found["labels"] == self.index) & (overlap >= self.iou)
        best = torch.where(candidate, overlap, -1.0).amax()
        ties = candidate & (overlap == best)
        pick = torch.where(ties, scores.detach(), -1.0).argmax()
        return torch.where(ties.any(), scores[pick], _NAN)


def _segmentation_logits(output: Any) -> torch.Tensor:
    """The ``(N, classes, H, W)`` logits: the output itself or its ``"out"`` entry."""
    logits = output.get("out") if isinstance(output, dict) else output
    if not isinstance(logits, torch.Tensor) or logits.ndim != 4:
        got = f"a dict with keys {list(output)}" if isinstance(output, dict) else _described(output)
        raise ValueError(
            "targets.segmentation reads a (N, classes, H, W) tensor or a dict whose 'out' entry is one "
            f"(torchvision segmentation models); the model output is {got}; choose the logits with "
            "Subject(output=...)"
        )
    return logits


def _detections(output: Any, batch: int) -> Sequence[dict[str, torch.Tensor]]:
    """The per-image detection dicts, checked."""
    keys = {"boxes", "labels", "scores"}
    if not isinstance(output, (list, tuple)) or not all(isinstance(d, dict) and keys <= d.keys() for d in output):
        raise ValueError(
            "targets.detection reads a list of dicts with 'boxes', 'labels' and 'scores', one per image (torchvision "
            f"detection models in eval mode); the model output is {_described(output)}"
        )
    if len(output) != batch:
        raise ValueError(f"the detection model returned {len(output)} results for {batch} images")
    return output


def _described(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} {', '.join(sorted({type(v).__name__ for v in value}))}"
    return f"a {type(value).__name__}"


def _named_region(name: str, region: RegionLookup | None, argument: str) -> Regions:
    if region is None:
        raise ValueError(
            f"{argument}={name!r} names a region, but the audited images are not an ImageSet; pass the images as an "
            f"ImageSet with that region, or give {argument} as data"
        )
    return region(name)


def _check_count(count: int, n_images: int, argument: str, noun: str) -> None:
    if count != n_images:
        raise ValueError(f"{argument}: got {count} {noun} for {n_images} images; give one per audited image, in their order")


def _mask_tensor(mask: np.ndarray | torch.Tensor, n_images: int) -> torch.Tensor:
    """``mask`` as bool ``(N, H, W)`` or ``(1, H, W)`` on the CPU, checked."""
    if not isinstance(mask, (np.ndarray, torch.Tensor)):
        raise TypeError(
            "mask must be None (the predicted region), a region name, a Regions, or a boolean array / tensor "
            f"(N, H, W) or (H, W); got {type(mask).__name__}"
        )
    values = torch.as_tensor(mask).detach().cpu()
    if values.ndim not in (2, 3):
        raise ValueError(f"mask must be (N, H, W) (one per image) or (H, W) (for every image); got shape {tuple(values.shape)}")
    if values.dtype != torch.bool:
        if not bool(((values == 0) | (values == 1)).all()):
            raise ValueError("mask must be boolean (or hold only 0 and 1); threshold it first, e.g. mask > 0.5")
        values = values != 0
    if values.ndim == 2:
        return values[None]
    _check_count(values.shape[0], n_images, "mask", "masks")
    return values


def _box_tensor(boxes: Any, n_images: int) -> torch.Tensor:
    """One box per image as float32 ``(N, 4)`` on the CPU (NaN rows for ``None``), checked."""
    if isinstance(boxes, (np.ndarray, torch.Tensor)):
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4), one (x0, y0, x1, y1) per image; got shape {tuple(boxes.shape)}")
        entries: list[Any] = boxes.tolist()
    elif isinstance(boxes, (list, tuple)):
        entries = list(boxes)
    else:
        raise TypeError(
            "boxes must be one (x0, y0, x1, y1) per image (a list, an (N, 4) array or tensor), a region name or a "
            f"Regions; got {type(boxes).__name__}"
        )
    _check_count(len(entries), n_images, "boxes", "boxes")
    rows = []
    for i, box in enumerate(entries):
        if box is None:
            rows.append([_NAN] * 4)
            continue
        values = [float(v) for v in box] if isinstance(box, (list, tuple, np.ndarray, torch.Tensor)) else []
        if len(values) != 4 or not all(math.isfinite(v) for v in values) or values[2] <= values[0] or values[3] <= values[1]:
            raise ValueError(
                f"boxes[{i}] = {box!r} is not a box: give (x0, y0, x1, y1) in input pixels with x1 > x0 and y1 > y0, "
                "or None for an image without one"
            )
        rows.append(values)
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
