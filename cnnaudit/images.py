"""Input images: one validation and conversion point for everything that takes images.

Convention: images enter as float in ``[0, 1]`` shaped ``(N,3,H,W)`` / ``(3,H,W)``, or as
uint8 ``(H,W,3)`` / ``(N,H,W,3)`` (divided by 255). The result is always a float32
``(N,3,H,W)`` CPU tensor in ``[0, 1]``; ``Subject.preprocess`` maps it to model input.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

_EXPECTED = (
    "expected float images in [0,1] shaped (N,3,H,W) or (3,H,W), uint8 images shaped (H,W,3) "
    "or (N,H,W,3), a list of those, or a cnnaudit.ImageSet"
)


def as_batch(images: Any) -> torch.Tensor:
    """Convert ``images`` to a float32 ``(N,3,H,W)`` CPU tensor in ``[0,1]``; raise ``ValueError`` otherwise."""
    from cnnaudit.data import ImageSet  # local: data imports this module

    if isinstance(images, ImageSet):
        return images.tensor()
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"got an empty list of images; {_EXPECTED}")
        parts = [as_batch(item) for item in images]
        sizes = {tuple(p.shape[-2:]) for p in parts}
        if len(sizes) > 1:
            raise ValueError(
                f"images in one batch must share a size, got sizes {sorted(sizes)}; "
                "resize them first (e.g. ImageSet(..., size=(H, W)))"
            )
        return torch.cat(parts)
    if isinstance(images, np.ndarray):
        return _from_numpy(images)
    if isinstance(images, torch.Tensor):
        return _from_tensor(images)
    raise ValueError(f"got {type(images).__name__}; {_EXPECTED}")


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.uint8:
        if array.ndim == 3 and array.shape[-1] == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"got a uint8 array of shape {array.shape}; {_EXPECTED}")
        return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float().div_(255.0)
    if np.issubdtype(array.dtype, np.floating):
        return _from_tensor(torch.from_numpy(np.ascontiguousarray(array)))
    raise ValueError(f"got a numpy array of dtype {array.dtype}; {_EXPECTED}")


def _from_tensor(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype == torch.uint8:
        return _from_numpy(tensor.cpu().numpy())
    if not tensor.is_floating_point():
        raise ValueError(f"got a tensor of dtype {tensor.dtype}; {_EXPECTED}")
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[1] != 3:
        hint = " (channels-last? use uint8 HxWx3 or permute to (N,3,H,W))" if tensor.ndim == 4 and tensor.shape[-1] == 3 else ""
        raise ValueError(f"got a tensor of shape {tuple(tensor.shape)}{hint}; {_EXPECTED}")
    tensor = tensor.detach().to("cpu", torch.float32)
    if tensor.numel():
        low, high = torch.aminmax(tensor)  # one pass; NaN propagates and fails both comparisons below
        if not (low >= 0 and high <= 1):
            raise ValueError(
                f"image values must be finite and in [0,1], got range [{low.item():.3g}, {high.item():.3g}]; "
                "pass raw [0,1] images and put normalisation in Subject(preprocess=cnnaudit.normalize(mean, std))"
            )
    return tensor


def batch_size_of(images: Any) -> int:
    """Number of images without loading them (for an ImageSet) or after conversion."""
    from cnnaudit.data import ImageSet

    if isinstance(images, ImageSet):
        return len(images)
    return as_batch(images).shape[0]


def iter_batches(images: Any, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, batch)`` pairs over ``images``; an ImageSet streams, anything else is converted once."""
    from cnnaudit.data import ImageSet

    if isinstance(images, ImageSet):
        yield from images.batches(batch_size)
        return
    full = as_batch(images)
    for start in range(0, full.shape[0], batch_size):
        yield start, full[start : start + batch_size]
