"""Random transformations that make a visualisation robust (Lucid's ``standard_transforms``).

Each image of a batch draws its own parameters from its own generator at every step, so no
image's transformation depends on another's. The chain pad -> jitter -> scale -> rotate ->
jitter is applied as ONE affine resampling per image (``affine_grid`` + ``grid_sample``), i.e.
output pixel ``u`` (normalised coordinates) samples the padded image at
``x = R(-theta) (u - t2) / s - t1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Transforms:
    """Pad (constant 0.5), jitter ``±jitter`` px, scale ``U(scale)``, rotate ``U(±rotate)`` degrees, jitter ``±jitter_after`` px."""

    pad: int = 12
    jitter: int = 8
    scale: tuple[float, float] = (0.9, 1.1)
    rotate: float = 10.0
    jitter_after: int = 4

    @classmethod
    def standard(cls, size: int) -> Transforms:
        """Lucid's values for 128 px images (pad 12, jitter 8 and 4, scale 0.9..1.1, ±10°), pixel amounts scaled by ``size/128``."""
        k = size / 128.0
        return cls(pad=round(12 * k), jitter=round(8 * k), jitter_after=round(4 * k))

    @classmethod
    def none(cls) -> Transforms:
        return cls(pad=0, jitter=0, scale=(1.0, 1.0), rotate=0.0, jitter_after=0)

    @property
    def is_identity(self) -> bool:
        return self == Transforms.none()

    def __call__(self, images: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Transform image ``k`` with 6 uniforms drawn from ``generators[k]``; output is the padded size."""
        if self.is_identity:
            return images
        if self.pad:
            images = F.pad(images, (self.pad,) * 4, value=0.5)
        if self.jitter == self.jitter_after == 0 and self.scale == (1.0, 1.0) and self.rotate == 0:
            return images
        uniforms = torch.stack([torch.rand(6, generator=g) for g in generators])
        theta = self.thetas(uniforms, images.shape[-1])
        grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def thetas(self, u: torch.Tensor, width: int) -> torch.Tensor:
        """The ``(N,2,3)`` sampling matrices from 6 uniforms in ``[0,1)`` per image (``(N,6)``), all at once."""
        to_unit = 2.0 / width
        t1 = (2 * u[:, 0:2] - 1) * self.jitter * to_unit
        s = self.scale[0] + u[:, 2] * (self.scale[1] - self.scale[0])
        angle = math.radians(self.rotate) * (2 * u[:, 3] - 1)
        t2 = (2 * u[:, 4:6] - 1) * self.jitter_after * to_unit
        cos, sin = torch.cos(angle), torch.sin(angle)
        rotation = torch.stack([torch.stack([cos, sin], dim=1), torch.stack([-sin, cos], dim=1)], dim=1)  # R(-angle)
        a = rotation / s[:, None, None]
        b = -(a @ t2[:, :, None])[:, :, 0] - t1
        return torch.cat([a, b[:, :, None]], dim=2)
