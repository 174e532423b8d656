"""Rendering: overlays, region outlines, grids and thumbnails, as uint8 ``(H,W,3)`` numpy arrays."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend ``cmap(heatmap)`` over ``image``: ``(1-alpha)*image + alpha*cmap(heatmap)``.

    ``image`` is float ``(H,W,3)`` in ``[0,1]`` (or uint8), ``heatmap`` float ``(H,W)`` in ``[0,1]``.
    """
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    if image.shape[:2] != heatmap.shape:
        raise ValueError(f"image {image.shape[:2]} and heatmap {heatmap.shape} differ in size")
    colored = colormaps[cmap](np.clip(heatmap, 0.0, 1.0))[..., :3]
    blended = (1.0 - alpha) * image[..., :3] + alpha * colored
    return (np.clip(blended, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
