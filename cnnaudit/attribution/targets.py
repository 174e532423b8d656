"""Turning ``target=`` into one differentiable score per image.

A target is one of

* ``None`` — the predicted class (argmax of the output) of each image;
* an ``int`` class index or a ``str`` class name (``Subject(classes=...)``), the same for every image
  (a 0-d numpy array or tensor, or a numpy scalar, counts as one);
* a sequence (list, tuple, numpy array, 1-D tensor) of indices / names, one per image;
* a callable ``f(output) -> (B,)`` scores computed differentiably from the model output (after
  the subject's output selector) — e.g. the mean logit of class ``c`` inside a mask for a
  segmentation model: ``lambda out: (out[:, c] * mask).sum((1, 2)) / mask.sum()``;
* an :class:`ImageTarget` (``cnnaudit.targets``): a target with per-image data (a mask or a box per
  image). It is bound to the audited images before any pass (:meth:`ImageTarget.bind`, which checks
  its arguments), and the bound :class:`ImageScores` gets each row's image index in the whole set,
  so masked copies and batches read the right image's data. It may read a non-tensor model output
  (a dict of segmentation maps, a list of detections): the subject passes such an output through
  unselected when ``Subject(output=...)`` is not set.

A score of NaN is *undefined* (a detection target with no matching detection): its map is all zero,
so every metric of that image is NaN (undefined, never a hit or a miss), and Score-CAM gives a masked
copy whose score is undefined weight 0.

The contract of a callable target (:data:`CALLABLE_CONTRACT`): it receives the model output for
*some rows* and must return one score per row, computed from that row alone. The rows are one
batch of images, without its offset in the set (Grad-CAM family, saliency), or masked copies of
several images (Score-CAM), so a callable that indexes per-image data of the whole set (a mask per
image, labels) would silently read the wrong image's data. :func:`score_rows` checks the part
that can be checked: a 1-D tensor with one value per row.

Class scores are the model's output *before* softmax (the Grad-CAM convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch

if TYPE_CHECKING:
    from cnnaudit.regions import Regions

ScoreFunction = Callable[[torch.Tensor], torch.Tensor]
ClassIndex = Callable[[int | str], int]
RegionLookup = Callable[[str], "Regions"]
CALLABLE_CONTRACT = (
    "a callable target receives the model output for some rows (a batch of images, or for Score-CAM "
    "masked copies of the images) and must return one score per row, computed from that row alone"
)


class ImageScores(Protocol):
    """A target bound to the audited images: one score per row of a model output."""

    def scores(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """``(B,)`` scores, differentiable in ``output``, NaN where undefined; ``rows`` ``(B,)`` int64 on the output's
        device: each row's image index in the whole image set."""
        ...


@runtime_checkable
class ImageTarget(Protocol):
    """A target with per-image data (the targets of :mod:`cnnaudit.targets`)."""

    def bind(self, n_images: int, class_index: ClassIndex, region: RegionLookup | None) -> ImageScores:
        """Checked for ``n_images`` images before any pass: class names resolved with ``class_index``, region names
        with ``region`` (the audited ImageSet's ``region``; ``None`` for other images)."""
        ...


@dataclass(frozen=True)
class Target:
    """A parsed target: per-image class indices (CPU int64), the predicted class, a score function, or a
    bound :class:`ImageTarget` (``per_image``).

    ``highest`` is the largest class index (checked against the model output without reading
    device values back).
    """

    indices: torch.Tensor | None = None
    function: ScoreFunction | None = None
    highest: int = -1
    per_image: ImageScores | None = None

    @property
    def reads_any_output(self) -> bool:
        """Whether the target reads a non-tensor model output as it is (see the module docstring)."""
        return self.per_image is not None


def parse_target(target: Any, n_images: int, class_index: ClassIndex, region: RegionLookup | None = None) -> Target:
    """Validate ``target`` for ``n_images`` images before any forward pass (see the module docstring).

    ``region``: the audited ImageSet's ``region`` (for an :class:`ImageTarget` naming a region), else ``None``.
    """
    if target is None:
        return Target()
    if isinstance(target, ImageTarget):
        return Target(per_image=target.bind(n_images, class_index, region))
    if callable(target) and not isinstance(target, (str, torch.Tensor, np.ndarray)):
        return Target(function=target)
    if isinstance(target, (np.ndarray, np.generic, torch.Tensor)) and target.ndim == 0:
        target = target.item()  # a 0-d array / tensor or a numpy scalar: one class index (or name) for all images
    if isinstance(target, (str, int)):
        index = class_index(target)
        return Target(indices=torch.full((n_images,), index, dtype=torch.int64), highest=index)
    if isinstance(target, (list, tuple, np.ndarray, torch.Tensor)):
        values = target.tolist() if isinstance(target, (np.ndarray, torch.Tensor)) else list(target)
        if len(values) != n_images:
            raise ValueError(
                f"got {len(values)} targets for {n_images} images; give one target per image, "
                "or a single class index / name for all of them"
            )
        indices = [class_index(v) for v in values]
        return Target(indices=torch.tensor(indices, dtype=torch.int64), highest=max(indices, default=-1))
    raise TypeError(
        f"target must be None, a class index, a class name, one of those per image, a callable returning one "
        f"score per image, or a cnnaudit.targets target; got {type(target).__name__}"
    )


def select_scores(target: Target, output: Any, start: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``(B,)`` (NaN where undefined) and class indices ``(B,)`` (``-1`` for a callable or an image
    target) for the ``batch`` images at ``start``.

    Everything stays on the output's device; no values are copied to the host. ``output`` is a tensor
    unless ``target.reads_any_output``.
    """
    if target.per_image is not None:
        device = output_device(output)
        rows = torch.arange(start, start + batch, device=device)
        return image_scores(target.per_image, output, rows), torch.full((batch,), -1, dtype=torch.int64, device=device)
    if target.function is not None:
        return score_rows(target.function, output), torch.full((batch,), -1, dtype=torch.int64, device=output.device)
    if output.ndim != 2:
        raise ValueError(
            f"a class target needs a model output shaped (N, classes), got {tuple(output.shape)}; "
            "for a segmentation model pass target=cnnaudit.targets.segmentation(cls, mask=...), for a detection "
            "model target=cnnaudit.targets.detection(cls, boxes=...), or a callable target returning one score per "
            "image; or choose the logits with Subject(output=...)"
        )
    if target.indices is None:
        indices = output.detach().argmax(dim=1)
    else:
        if target.highest >= output.shape[1]:
            raise ValueError(f"class index {target.highest} is out of range for a model with {output.shape[1]} outputs")
        indices = target.indices[start : start + batch].to(output.device, non_blocking=True)
    return output.gather(1, indices[:, None])[:, 0], indices


def predicted(output: Any, batch: int) -> torch.Tensor:
    """The predicted class of each of the ``batch`` rows ``(B,)`` (argmax of a ``(N, classes)`` output; ``-1`` for
    other outputs, tensors or not), on the device."""
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        return torch.full((batch,), -1, dtype=torch.int64, device=output_device(output))
    return output.detach().argmax(dim=1)


def output_tensors(output: Any) -> list[torch.Tensor]:
    """The tensors inside a model output: itself, or those in (nested) lists, tuples and dicts."""
    if isinstance(output, torch.Tensor):
        return [output]
    items = output.values() if isinstance(output, dict) else output if isinstance(output, (list, tuple)) else ()
    return [tensor for item in items for tensor in output_tensors(item)]


def output_device(output: Any) -> torch.device:
    """The device of a model output's first tensor (the CPU when it holds none)."""
    tensors = output_tensors(output)
    return tensors[0].device if tensors else torch.device("cpu")


def image_scores(bound: ImageScores, output: Any, rows: torch.Tensor) -> torch.Tensor:
    """``bound.scores(output, rows)``, checked to be a 1-D float tensor with one score per row."""
    scores = bound.scores(output, rows)
    if isinstance(scores, torch.Tensor) and tuple(scores.shape) == tuple(rows.shape) and scores.is_floating_point():
        return scores
    got = f"a {scores.dtype} tensor {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else f"a {type(scores).__name__}"
    raise ValueError(f"{type(bound).__name__}.scores must return a float tensor of shape ({rows.shape[0]},); got {got}")


def undefined_to_zero(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(where(defined, scores, 0), defined)``, ``defined = ~isnan(scores)`` ``(B,)`` bool: the scores to
    differentiate (an undefined row contributes no gradient; the others keep theirs) and which rows have a
    score (their maps are kept; the others' are set to 0 by the engines)."""
    defined = ~scores.isnan()
    return torch.where(defined, scores, 0.0), defined


def score_rows(function: ScoreFunction, output: torch.Tensor) -> torch.Tensor:
    """``function(output)``, checked to be a 1-D tensor with one score per row of ``output`` (see the module docstring)."""
    rows = output.shape[0]
    scores = function(output)
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (rows,):
        got = f"a tensor of shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else f"a {type(scores).__name__}"
        raise ValueError(f"{CALLABLE_CONTRACT}: a 1-D tensor of shape ({rows},) here; got {got}")
    return scores
