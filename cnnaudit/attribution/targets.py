"""Turning ``target=`` into one differentiable score per image.

A target is one of

* ``None`` — the predicted class (argmax of the output) of each image;
* an ``int`` class index or a ``str`` class name (``Subject(classes=...)``), the same for every image
  (a 0-d numpy array or tensor, or a numpy scalar, counts as one);
* a sequence (list, tuple, numpy array, 1-D tensor) of indices / names, one per image;
* a callable ``f(output) -> (B,)`` scores computed differentiably from the model output (after
  the subject's output selector) — e.g. the mean logit of class ``c`` inside a mask for a
  segmentation model: ``lambda out: (out[:, c] * mask).sum((1, 2)) / mask.sum()``.

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
from typing import Any, Callable

import numpy as np
import torch

ScoreFunction = Callable[[torch.Tensor], torch.Tensor]
CALLABLE_CONTRACT = (
    "a callable target receives the model output for some rows (a batch of images, or for Score-CAM "
    "masked copies of the images) and must return one score per row, computed from that row alone"
)


@dataclass(frozen=True)
class Target:
    """A parsed target: per-image class indices (CPU int64), the predicted class, or a score function.

    ``highest`` is the largest class index (checked against the model output without reading
    device values back).
    """

    indices: torch.Tensor | None = None
    function: ScoreFunction | None = None
    highest: int = -1


def parse_target(target: Any, n_images: int, class_index: Callable[[int | str], int]) -> Target:
    """Validate ``target`` for ``n_images`` images before any forward pass (see the module docstring)."""
    if target is None:
        return Target()
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
        f"target must be None, a class index, a class name, one of those per image, or a callable "
        f"returning one score per image; got {type(target).__name__}"
    )


def select_scores(target: Target, output: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``(B,)`` and class indices ``(B,)`` (``-1`` for a callable) for the batch at ``start``.

    Everything stays on ``output``'s device; no values are copied to the host.
    """
    batch = output.shape[0]
    if target.function is not None:
        return score_rows(target.function, output), torch.full((batch,), -1, dtype=torch.int64, device=output.device)
    if output.ndim != 2:
        raise ValueError(
            f"a class target needs a model output shaped (N, classes), got {tuple(output.shape)}; "
            "for segmentation / detection outputs pass a callable target returning one score per image, "
            "or choose the logits with Subject(output=...)"
        )
    if target.indices is None:
        indices = output.detach().argmax(dim=1)
    else:
        if target.highest >= output.shape[1]:
            raise ValueError(f"class index {target.highest} is out of range for a model with {output.shape[1]} outputs")
        indices = target.indices[start : start + batch].to(output.device, non_blocking=True)
    return output.gather(1, indices[:, None])[:, 0], indices


def predicted(output: torch.Tensor) -> torch.Tensor:
    """The predicted class of each row ``(B,)`` (argmax of a ``(N, classes)`` output; ``-1`` for other outputs), on the device."""
    if output.ndim != 2:
        return torch.full((output.shape[0],), -1, dtype=torch.int64, device=output.device)
    return output.detach().argmax(dim=1)


def score_rows(function: ScoreFunction, output: torch.Tensor) -> torch.Tensor:
    """``function(output)``, checked to be a 1-D tensor with one score per row of ``output`` (see the module docstring)."""
    rows = output.shape[0]
    scores = function(output)
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (rows,):
        got = f"a tensor of shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else f"a {type(scores).__name__}"
        raise ValueError(f"{CALLABLE_CONTRACT}: a 1-D tensor of shape ({rows},) here; got {got}")
    return scores
