"""Image parameterisations: what the optimiser changes, and how it becomes an image in ``[0,1]``.

Images have ``channels`` channels (the subject's ``image_channels``: 3 for RGB, 1 for grey, any
``C``), always float32; only RGB images get the colour decorrelation.

* :class:`PixelImage` — the pixels themselves, started flashtorch-style from uniform grey
  ``150..179 / 255`` (or from uniform noise in ``[0,1)``) and kept in ``[0,1]`` by clamping after
  each update.
* :class:`FourierImage` — Olah et al. 2017 (Lucid ``param.image(fft=True, decorrelate=True)``):
  a spectrum ``s`` (initialised ``N(0, 0.01^2)``) scaled by ``1 / max(f, 1/S)`` per frequency ``f``
  (cycles/pixel), the constant term (``f = 0``) by :data:`DC_BOOST` times that,
  ``t = irfft2(scale * s, norm="ortho") / 4``, colours decorrelated by the square root of ImageNet's
  colour covariance ``rgb = M t``, and ``image = sigmoid(rgb)`` (for ``C != 3`` channels there is no
  colour covariance to undo: ``image = sigmoid(t)``).

  Why the boost: with Lucid's scale an Adam step of ``lr`` on the constant term moves every
  pre-sigmoid value by ``lr * S / (S * 4) = lr / 4``, and the sigmoid's slope is at most ``1/4``, so the
  image's mean colour moves ``lr / 16`` per step while pixel mode moves a pixel by ``lr``: a unit that
  wants a colour (``relu(r - g - b)``) reached 0.19 of its optimum in 128 steps. Boosted 16x, the
  mean colour moves as fast as pixels do (0.97).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

#: how much faster than Lucid's scale the constant (f = 0) Fourier term moves (see the module docstring)
DC_BOOST = 16.0
#: square root of ImageNet's colour covariance (Lucid), columns normalised by the largest column norm
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_DECORRELATION = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


class PixelImage:
    """Pixels in ``[0,1]`` as the parameter."""

    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels = pixels.detach().clone().requires_grad_(True)

    @classmethod
    def grey_noise(cls, size: int, generators: Sequence[torch.Generator], placement: dict,
                   channels: int = 3) -> PixelImage:
        """flashtorch's start: integers uniform in ``[150, 180)`` divided by 255, one stream per image."""
        pixels = torch.stack([torch.randint(150, 180, (channels, size, size), generator=g) for g in generators])
        return cls(pixels.to(**placement).div(255.0))

    @classmethod
    def uniform_noise(cls, size: int, generators: Sequence[torch.Generator], placement: dict,
                      channels: int = 3) -> PixelImage:
        """Pixels uniform in ``[0,1)``, one stream per image: a start far from grey."""
        return cls(torch.stack([torch.rand((channels, size, size), generator=g) for g in generators]).to(**placement))

    def leaves(self) -> list[torch.Tensor]:
        return [self.pixels]

    def image(self) -> torch.Tensor:
        return self.pixels

    def project(self) -> None:
        """Keep pixels valid: ``clamp(x, 0, 1)``."""
        with torch.no_grad():
            self.pixels.clamp_(0.0, 1.0)

    def resized(self, size: int) -> PixelImage:
        """The same images bicubically resized (fastai's upscaling step), clamped to ``[0,1]``."""
        with torch.no_grad():
            bigger = F.interpolate(self.pixels, size=(size, size), mode="bicubic", align_corners=False)
        return PixelImage(bigger.clamp(0.0, 1.0))


class FourierImage:
    """Decorrelated-colour Fourier parameterisation (see the module docstring)."""

    def __init__(self, size: int, generators: Sequence[torch.Generator], placement: dict, sd: float = 0.01,
                 channels: int = 3) -> None:
        fy = torch.fft.fftfreq(size)[:, None]
        fx = torch.fft.rfftfreq(size)[None, :]
        freqs = torch.sqrt(fx * fx + fy * fy)
        self.size = size
        scale = 1.0 / freqs.clamp(min=1.0 / size)
        scale[0, 0] *= DC_BOOST
        self.scale = scale.to(**placement)
        shape = (channels, size, size // 2 + 1, 2)
        spectrum = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) * sd for g in generators])
        self.spectrum = spectrum.to(**placement).requires_grad_(True)
        self.color = COLOR_DECORRELATION.to(**placement) if channels == 3 else None

    def leaves(self) -> list[torch.Tensor]:
        return [self.spectrum]

    def image(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        t = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho") / 4.0
        if self.color is None:
            return torch.sigmoid(t)
        return torch.sigmoid(torch.einsum("dc,kchw->kdhw", self.color, t))

    def project(self) -> None:
        """Every spectrum is valid: nothing to do."""
