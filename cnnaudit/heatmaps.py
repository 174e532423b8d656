"""``Heatmaps``: attribution maps for a batch of images, and the metrics asked of them.

Definitions (one convention everywhere):

* ``raw``  — the signed map at layer resolution, before ReLU, float32 ``(N,h,w)``.
* ``mass`` — ``bilinear(relu(raw))`` at input resolution (``align_corners=False``), not
  normalised. Attention metrics are computed on this.
* ``maps`` — ``mass / max(mass)`` per image, in ``[0,1]``. A map whose mass is all zero stays
  zero and is flagged in ``zero``; it is never rescaled into noise.

``mass`` and ``maps`` are computed lazily on the device, in chunks when streamed with
:meth:`Heatmaps.mass_batches`, so a large set never needs all full-resolution maps at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cnnaudit import evidence, metrics
from cnnaudit.engine import AuditedModel

if TYPE_CHECKING:
    from cnnaudit.scores import Scores


class Heatmaps:
    """Attribution maps for ``N`` images (see the module docstring for ``raw`` / ``mass`` / ``maps``)."""

    def __init__(
        self,
        raw: torch.Tensor,
        *,
        image_size: tuple[int, int],
        method: str,
        layer: str | None = None,
        targets: torch.Tensor | Sequence[int] | None = None,
        images: Any = None,
        ids: Sequence[str] | None = None,
        subject: AuditedModel | None = None,
        predictions: torch.Tensor | Sequence[int] | None = None,
        layout: str | None = None,
    ) -> None:
        if raw.ndim != 3:
            raise ValueError(f"raw maps must be shaped (N,h,w), got {tuple(raw.shape)}")
        n = raw.shape[0]
        self.raw = raw.detach().to(torch.float32)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.method = method
        self.layer = layer
        self.layout = layout
        """How the layer output was read as ``(N, C, h, w)`` when it was not that already: ``"tokens 14x14 +1"``
        (a 14x14 patch-token grid, 1 leading class / register token dropped), ``"channels-last 7x7"``,
        ``"reshape 7x7"`` (``Subject(reshape=...)``); ``None``: as is (:mod:`cnnaudit.layouts`)."""
        self.targets = _on_host(targets, n)
        self.predictions = _on_host(predictions, n)
        """The model's predicted class per image (``-1``: not known, or an output that is not ``(N, classes)``)."""
        self.images = images
        self.ids = list(ids) if ids is not None else [str(i) for i in range(n)]
        self.subject = subject
        if len(self.ids) != n or self.targets.shape != (n,) or self.predictions.shape != (n,):
            raise ValueError(f"{n} maps but {len(self.ids)} ids, {tuple(self.targets.shape)} targets and "
                             f"{tuple(self.predictions.shape)} predictions")
        self.zero = (self.raw.clamp(min=0).flatten(1).amax(dim=1) <= 0).cpu() if n else torch.zeros(0, dtype=torch.bool)
        self._maps: torch.Tensor | None = None
        evidence.notify(self)

    def __len__(self) -> int:
        return self.raw.shape[0]

    def __repr__(self) -> str:
        return (
            f"Heatmaps(method={self.method!r}, layer={self.layer!r}, n={len(self)}, "
            f"raw={tuple(self.raw.shape[1:])}, size={self.image_size}, zero={int(self.zero.sum())}"
            + (f", layout={self.layout!r})" if self.layout is not None else ")")
        )

    # ---- maps ---------------------------------------------------------------------------
    def upsample(self, raw: torch.Tensor) -> torch.Tensor:
        """``bilinear(relu(raw))`` to the input size, ``align_corners=False``, on ``raw``'s device."""
        positive = raw.clamp(min=0)[:, None]
        if tuple(positive.shape[-2:]) != self.image_size:
            positive = F.interpolate(positive, size=self.image_size, mode="bilinear", align_corners=False)
        return positive[:, 0]

    def mass_batches(self, batch_size: int = 64) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, mass)`` chunks of the un-normalised, upsampled, ReLU'd maps."""
        for start in range(0, len(self), batch_size):
            yield start, self.upsample(self.raw[start : start + batch_size])

    @property
    def mass(self) -> torch.Tensor:
        """Un-normalised ``bilinear(relu(raw))`` at input resolution, float32 ``(N,H,W)``."""
        return self.upsample(self.raw)

    @property
    def maps(self) -> torch.Tensor:
        """Per-image max-normalised maps in ``[0,1]``, float32 ``(N,H,W)``; all-zero maps stay zero."""
        if self._maps is None:
            mass = self.mass
            peak = mass.flatten(1).amax(dim=1).clamp(min=torch.finfo(mass.dtype).tiny)
            self._maps = mass / peak[:, None, None]
        return self._maps

    def image(self, i: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Image ``i`` as float ``(H,W,3)`` in ``[0,1]`` (for overlays; other channel counts shown by
        :func:`cnnaudit.images.display_rgb`: grey for one channel); resized to ``size`` (antialiased bilinear)
        when given."""
        if self.images is None:
            raise ValueError("these heatmaps were made without their images; pass images= to overlay them")
        from cnnaudit.images import ImageSource, as_batch, display_rgb

        batched = isinstance(self.images, ImageSource) or getattr(self.images, "ndim", 0) == 4
        picked = self.images[i : i + 1] if batched else as_batch(self.images)[i : i + 1]  # convert one image, not all
        image = as_batch(picked)
        if size is not None and tuple(image.shape[-2:]) != tuple(size):
            image = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        return display_rgb(image)[0].permute(1, 2, 0).numpy()

    def overlay(self, i: int, alpha: float = 0.5) -> np.ndarray:
        """Map ``i`` drawn with the jet colormap over its image, uint8 ``(H,W,3)``."""
        from cnnaudit.render import overlay

        return overlay(self.image(i), self.maps[i].cpu().numpy(), alpha=alpha)

    # ---- metrics (definitions live in cnnaudit.metrics) ------------------------------------
    # ``regions``: a ``Regions`` (``images.region("tools")``), raw entries per image, or a region name
    # ("tools"), looked up in the ImageSet these maps were computed on (see metrics.named_region).
    def mass_in(self, regions: Any) -> "Scores":
        """Fraction of heatmap mass inside ``regions`` (see :func:`cnnaudit.metrics.mass_in`)."""
        return metrics.mass_in(self, regions)

    def enrichment(self, regions: Any) -> "Scores":
        """Mass fraction divided by area fraction (see :func:`cnnaudit.metrics.enrichment`)."""
        return metrics.enrichment(self, regions)

    def pointing_game(self, regions: Any, tolerance: float = metrics.POINTING_TOLERANCE) -> "Scores":
        """1 if the map's peak lies within ``tolerance`` px of the region (see :func:`cnnaudit.metrics.pointing_game`)."""
        return metrics.pointing_game(self, regions, tolerance=tolerance)

    def localization_iou(self, regions: Any, threshold: float = metrics.IOU_THRESHOLD) -> "Scores":
        """Grad-CAM paper box IoU (see :func:`cnnaudit.metrics.localization_iou`)."""
        return metrics.localization_iou(self, regions, threshold=threshold)

    def rank_accuracy(self, regions: Any) -> "Scores":
        """Relevance rank accuracy (see :func:`cnnaudit.metrics.rank_accuracy`)."""
        return metrics.rank_accuracy(self, regions)

    def deletion(self, subject: AuditedModel | None = None, *, steps: int = metrics.CURVE_STEPS,
                 substrate: Any = metrics.DELETION_SUBSTRATE) -> "Scores":
        """RISE deletion AUC, lower is better (see :func:`cnnaudit.metrics.deletion`)."""
        return metrics.deletion(self, subject, steps=steps, substrate=substrate)

    def insertion(self, subject: AuditedModel | None = None, *, steps: int = metrics.CURVE_STEPS,
                  substrate: Any = metrics.INSERTION_SUBSTRATE) -> "Scores":
        """RISE insertion AUC, higher is better (see :func:`cnnaudit.metrics.insertion`)."""
        return metrics.insertion(self, subject, steps=steps, substrate=substrate)


def _on_host(classes: torch.Tensor | Sequence[int] | None, n: int) -> torch.Tensor:
    """Class indices as an int64 CPU tensor (``-1`` each when ``None``); a CPU tensor is not copied or read again."""
    tensor = torch.as_tensor(classes if classes is not None else [-1] * n, dtype=torch.int64)
    return tensor if tensor.device.type == "cpu" else tensor.cpu()
