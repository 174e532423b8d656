"""Input images: one validation and conversion point for everything that takes images.

Convention: images enter as float in ``[0, 1]`` shaped ``(N,C,H,W)`` / ``(C,H,W)``, or as
uint8 ``(H,W)`` (grey) / ``(H,W,C)`` / ``(N,H,W,C)`` (divided by 255), for any channel count
``C >= 1`` (3 for RGB; 1 for grey; whatever the model's first layer takes). The result is a
float32 ``(N,C,H,W)`` tensor in ``[0, 1]``, on the CPU unless ``keep_device=True``;
``Subject.preprocess`` maps it to model input. A layout that looks transposed (a float tensor
whose last axis is at most :data:`MAX_GUESSED_CHANNELS` long while its channel axis is longer,
or a uint8 array whose first image axis is that short while its channel axis is longer) is refused
with a hint to permute it. :func:`display_rgb` is the one rule that shows ``C``-channel images in
colour.

The value check (``[0, 1]``, no NaN) reads one ``aminmax`` back to the host. The subject's
batch loop instead keeps each batch's :func:`value_range` on the device and checks them all
once with :func:`check_value_range` (``as_batch(..., check_range=False)``), so the check costs
no host synchronisation per batch.

Images reach the rest of the code in one of two forms with the same face (:class:`ImageSource`:
length, ids, batches, all as one tensor, a cache key): an ``ImageSet``, which streams from its
sources, or a converted tensor (:func:`as_source` wraps it in :class:`TensorImages`). Nothing here
imports ``cnnaudit.data``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Hashable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

_EXPECTED = (
    "expected float images in [0,1] shaped (N,C,H,W) or (C,H,W), uint8 images shaped (H,W), (H,W,C) "
    "or (N,H,W,C), a list of those, or a cnnaudit.ImageSet (C = 3 for RGB, 1 for grey)"
)
#: a trailing axis at most this long after a longer channel axis reads as a transposed layout (module docstring)
MAX_GUESSED_CHANNELS = 4


Key = tuple[Hashable, tuple[Any, ...]]
"""A cache key for images: the hashable value, and the objects it names (kept alive with the entry)."""


@runtime_checkable
class ImageSource(Protocol):
    """Images as the rest of the code sees them, whatever the caller passed (``ImageSet`` satisfies it)."""

    ids: Sequence[str]  #: one id per image

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, images[start:start + batch_size])`` as float32 tensors in ``[0,1]``."""
        ...

    def tensor(self) -> torch.Tensor:
        """All images as one float32 ``(N,C,H,W)`` tensor."""
        ...

    def cache_key(self) -> Key | None:
        """How a cache names these images (``None``: they cannot be named, do not cache)."""
        ...


class TensorImages:
    """Images already converted to one tensor (on any device), with :class:`ImageSource`'s face.

    ``original`` is what the caller passed: the cache key names it (a tensor by identity and version,
    a numpy array by its bytes, a list by its items), not the converted copy.
    """

    def __init__(self, images: torch.Tensor, original: Any) -> None:
        self.images = images
        self.original = original
        self.ids = [str(i) for i in range(images.shape[0])]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``, as ``ImageSet.image_size``."""
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def batches(self, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            yield start, self.images[start : start + batch_size]

    def tensor(self) -> torch.Tensor:
        return self.images

    def cache_key(self) -> Key | None:
        return source_key(self.original)


def as_source(images: Any, *, keep_device: bool = True, check_range: bool = False) -> ImageSource:
    """``images`` with :class:`ImageSource`'s face: an ``ImageSet`` as it is (it streams), anything else
    converted once by :func:`as_batch` (by default left on its device and not value-checked: the
    caller checks batch by batch with :func:`value_range`)."""
    if isinstance(images, ImageSource):
        return images
    return TensorImages(as_batch(images, keep_device=keep_device, check_range=check_range), images)


def source_key(images: Any) -> Key | None:
    """How a cache names ``images`` as the caller passed them (see :mod:`cnnaudit.cache`)."""
    if isinstance(images, ImageSource):
        return images.cache_key()
    if isinstance(images, torch.Tensor):
        value = tensor_key(images)
        return None if value is None else (("tensor", value), (images,))
    if isinstance(images, np.ndarray):
        digest = hashlib.sha1(np.ascontiguousarray(images).view(np.uint8)).hexdigest() if images.size else ""
        return ("array", images.dtype.str, images.shape, digest), ()
    if isinstance(images, (list, tuple)):
        parts = [source_key(item) for item in images]
        if any(part is None for part in parts):
            return None
        return ("list", tuple(p[0] for p in parts)), tuple(pin for p in parts for pin in p[1])  # type: ignore[index]
    return None


def tensor_key(tensor: torch.Tensor) -> Hashable | None:
    """A tensor named by identity, version counter, address and layout; ``None`` for inference tensors (no version)."""
    if tensor.is_inference():
        return None
    return (id(tensor), tensor._version, tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device)


def as_batch(images: Any, *, keep_device: bool = False, check_range: bool = True) -> torch.Tensor:
    """Convert ``images`` to a float32 ``(N,C,H,W)`` tensor in ``[0,1]``; raise ``ValueError`` otherwise.

    The result is on the CPU; with ``keep_device=True`` a tensor stays on its device (a GPU batch
    is not copied to the host and back). ``check_range=False`` skips the value check of float
    tensors: the caller must check with :func:`value_range` / :func:`check_value_range`.
    """
    if isinstance(images, ImageSource):
        return images.tensor()
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"got an empty list of images; {_EXPECTED}")
        parts = [as_batch(item, keep_device=keep_device, check_range=check_range) for item in images]
        sizes = {tuple(p.shape[-2:]) for p in parts}
        if len(sizes) > 1:
            raise ValueError(
                f"images in one batch must share a size, got sizes {sorted(sizes)}; "
                "resize them first (e.g. ImageSet(..., size=(H, W)))"
            )
        channels = {p.shape[1] for p in parts}
        if len(channels) > 1:
            raise ValueError(
                f"images in one batch must share a channel count, got channel counts {sorted(channels)}; "
                "convert them to the channel count the model takes first"
            )
        if len({p.device for p in parts}) > 1:
            parts = [p.cpu() for p in parts]
        return torch.cat(parts)
    if isinstance(images, np.ndarray):
        return _with_pixels(_from_numpy(images, check_range))
    if isinstance(images, torch.Tensor):
        tensor = images if keep_device else images.cpu()
        return _with_pixels(_from_tensor(tensor, check_range))
    raise ValueError(f"got {type(images).__name__}; {_EXPECTED}")


def _with_pixels(batch: torch.Tensor) -> torch.Tensor:
    """``batch``, unless its images have no pixels (a ``(N,C,0,W)`` tensor): ``ValueError``."""
    if batch.shape[-2] == 0 or batch.shape[-1] == 0:
        raise ValueError(f"got images of {batch.shape[-2]}x{batch.shape[-1]} pixels (shape {tuple(batch.shape)}); "
                         f"an image needs at least one pixel; {_EXPECTED}")
    return batch


def _from_numpy(array: np.ndarray, check_range: bool) -> torch.Tensor:
    if array.dtype == np.uint8:
        return _from_uint8(torch.from_numpy(np.ascontiguousarray(array)))
    if np.issubdtype(array.dtype, np.floating):
        return _from_tensor(torch.from_numpy(np.ascontiguousarray(array)), check_range)
    raise ValueError(f"got a numpy array of dtype {array.dtype}; {_EXPECTED}")


def _from_uint8(tensor: torch.Tensor) -> torch.Tensor:
    """uint8 ``(H,W)`` / ``(H,W,C)`` / ``(N,H,W,C)`` -> float ``(N,C,H,W)`` / 255, on the tensor's device.

    A grey stack ``(N,H,W)`` cannot be told from one ``(H,W,C)`` image: pass it as ``(N,H,W,1)``. So a 3-D
    array with more than :data:`MAX_GUESSED_CHANNELS` channels is refused (it is most likely such a stack);
    one image with that many channels is passed as ``(1,H,W,C)``.
    """
    shape = tuple(tensor.shape)
    if tensor.ndim == 2:
        tensor = tensor[:, :, None]
    if tensor.ndim == 3 and tensor.shape[-1] > MAX_GUESSED_CHANNELS:
        raise ValueError(
            f"got a uint8 array of shape {shape}, which reads as one {shape[0]}x{shape[1]} image with {shape[2]} "
            f"channels: pass a stack of grey images as (N, H, W, 1) (array[..., None]), and one image with more than "
            f"{MAX_GUESSED_CHANNELS} channels as (1, H, W, C) (array[None])"
        )
    if tensor.ndim == 3:
        tensor = tensor[None]
    channels_first = tensor.ndim == 4 and tensor.shape[1] <= MAX_GUESSED_CHANNELS < tensor.shape[-1]
    if tensor.ndim != 4 or channels_first or tensor.shape[-1] == 0:
        hint = (" (channels-first? permute it to (..., H, W, C); a stack of grey images is (N, H, W, 1); or pass "
                "float images x / 255)") if channels_first else ""
        raise ValueError(f"got a uint8 array of shape {shape}{hint}; {_EXPECTED}")
    return tensor.permute(0, 3, 1, 2).float().div_(255.0)


def _from_tensor(tensor: torch.Tensor, check_range: bool) -> torch.Tensor:
    if tensor.dtype == torch.uint8:
        return _from_uint8(tensor.detach())
    if not tensor.is_floating_point():
        raise ValueError(f"got a tensor of dtype {tensor.dtype}; {_EXPECTED}")
    if tensor.ndim == 3:
        tensor = tensor[None]
    channels_last = tensor.ndim == 4 and tensor.shape[-1] <= MAX_GUESSED_CHANNELS < tensor.shape[1]
    if tensor.ndim != 4 or channels_last or tensor.shape[1] == 0:
        hint = " (channels-last? use uint8 HxWxC or permute to (N,C,H,W))" if channels_last else ""
        raise ValueError(f"got a tensor of shape {tuple(tensor.shape)}{hint}; {_EXPECTED}")
    tensor = tensor.detach().to(torch.float32)
    if check_range and tensor.numel():
        check_value_range(value_range(tensor))
    return tensor


def display_rgb(images: torch.Tensor) -> torch.Tensor:
    """``(N,C,H,W)`` images in ``[0,1]`` as ``(N,3,H,W)`` RGB to look at (overlays, grids, evidence).

    The rule: ``C = 1`` grey (the channel in R, G and B); ``C = 2`` grey from the channel mean;
    ``C >= 3`` the first three channels as R, G, B (an RGBA image, RGB plus a near-infrared or depth
    channel: its colour part; other multispectral stacks: a false-colour view of bands 0-2).
    """
    channels = images.shape[1]
    if channels == 3:
        return images
    if channels > 3:
        return images[:, :3]
    grey = images if channels == 1 else images.mean(dim=1, keepdim=True)
    return grey.expand(-1, 3, -1, -1)


def value_range(images: torch.Tensor) -> torch.Tensor:
    """``[min, max]`` of ``images`` as a ``(2,)`` tensor on their device (one pass; NaN propagates)."""
    return torch.stack(torch.aminmax(images))


def check_value_range(ranges: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every ``[min, max]`` row of ``ranges`` ``(2,)`` / ``(B,2)`` lies in ``[0,1]``.

    Reads two numbers back to the host (one synchronisation for any number of batches).
    """
    ranges = ranges.reshape(-1, 2)
    low, high = torch.stack((ranges[:, 0].min(), ranges[:, 1].max())).tolist()
    if not (low >= 0 and high <= 1):  # NaN fails both comparisons
        raise ValueError(
            f"image values must be finite and in [0,1], got range [{low:.3g}, {high:.3g}]; "
            "pass raw [0,1] images and put normalisation in Subject(preprocess=cnnaudit.normalize(mean, std))"
        )


def iter_batches(images: Any, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, batch)`` pairs over ``images``: an ImageSet streams, anything else is converted (and
    value-checked) once, on the CPU."""
    yield from as_source(images, keep_device=False, check_range=True).batches(batch_size)
