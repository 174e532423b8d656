"""Image statistics behind the ``Visualizations`` checks, as plain functions on ``(N,C,H,W)`` tensors."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from skimage.metrics import structural_similarity

#: spectral power above this radial frequency (cycles/pixel; Nyquist is 0.5) counts as high frequency
HIGH_FREQUENCY = 0.25


def high_frequency_share(images: torch.Tensor, cutoff: float = HIGH_FREQUENCY) -> np.ndarray:
    """Per image: ``sum_{|f| > cutoff} P(f) / sum_{f != 0} P(f)``, NaN for a constant image.

    ``P = sum_c |FFT2(x_c - mean(x_c))|^2`` over the colour channels; ``|f| = sqrt(fx^2 + fy^2)`` in
    cycles/pixel. Real photographs typically keep a few percent of their power up there;
    visualisations dominated by high-frequency noise far more.
    """
    x = images.detach().cpu().double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).sum(dim=1)  # (N,H,W)
    fy = torch.fft.fftfreq(x.shape[-2], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(x.shape[-1], dtype=torch.float64)[None, :]
    high = (fx * fx + fy * fy).sqrt() > cutoff
    total = power.flatten(1).sum(dim=1)
    share = (power * high).flatten(1).sum(dim=1) / total
    share[total <= 1e-12 * x.shape[-1] * x.shape[-2]] = float("nan")
    return share.numpy()


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM (``skimage.metrics.structural_similarity``, averaged over channels) of two ``(C,H,W)`` images in ``[0,1]``."""
    if a.shape != b.shape:
        raise ValueError(f"cannot compare images of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return float(structural_similarity(_hwc(a), _hwc(b), channel_axis=-1, data_range=1.0))


def pairwise_ssim(images: torch.Tensor) -> np.ndarray:
    """Symmetric ``(N,N)`` matrix of SSIM between every pair, NaN on the diagonal."""
    n = images.shape[0]
    out = np.full((n, n), np.nan)
    arrays = [_hwc(image) for image in images]
    for i, j in itertools.combinations(range(n), 2):
        out[i, j] = out[j, i] = structural_similarity(arrays[i], arrays[j], channel_axis=-1, data_range=1.0)
    return out


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.detach().cpu().double().permute(1, 2, 0).numpy()
