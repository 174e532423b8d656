"""The optimisation loop: capture at the target layer, per-image gradients, per-image updates.

One step, for the batch of ``K`` images (image ``k`` optimised for unit ``k``)::

    x   = T_k(image_k)                       # per-image random transforms (own stream)
    J_k = objective(layer(x))[k]             # forward pass stops at the target layer
    g_k = dJ_k / dparam_k                    # autograd.grad of sum_k J_k: images do not interact
    g_k = g_k / (sqrt(mean(g_k^2)) + 1e-5)   # per-image normalisation
    param_k <- update(param_k, g_k)          # annealed ascent (pixel) or Adam (Fourier, multiscale)

The pixel ascent is annealed (:func:`pixel_schedule`): ``x_k <- clamp(x_k + a_t g_k + s_t n_k, 0, 1)``
with ``n_k ~ N(0, 1)`` per pixel from image ``k``'s own stream (none while ``g_k = 0``: a unit that
cannot move its image leaves it as it started); ``a_t = lr`` and ``s_t = NOISE_SD * lr`` for the
first ``ANNEAL`` of the steps, then ``s_t = 0`` and ``a_t`` falls linearly from ``lr`` to
``FINAL_STEP * lr``. Why: the mean of a ReLU of a linear filter is convex and piecewise linear, so
plain ascent stops at the first vertex it meets. For an edge filter that is stripes whose phase each
patch takes from the start's noise; where two phases meet, the wall's pixels do not change the value
(zero gradient) and the wall never moves (``relu(Sobel-x)``: 0.80 of its optimum, whatever the
start's amplitude, smoothness or the step size). The noise lets such pixels wander, so walls move and
annihilate; the large step holds the pixels that matter at their bounds meanwhile; the quiet,
shrinking steps then settle the image (0.80 -> 0.94 of the optimum; see docs/performance.md).
By default (``ascent="best"``) a second, plain run (steps of ``PLAIN_STEP * lr``, no noise) starts
from the same image, and each unit keeps the better final image (:func:`optimise`).

ReLUs use the redirected gradient for the first ``redirect_steps`` steps
(:mod:`cnnaudit.maximize.redirect`); the ReLU that produces the objective's layer output, if one
does, passes :data:`LEAK` of the upward gradient where it is off, so a unit that fires at some
positions keeps drawing the others up (:func:`~cnnaudit.maximize.redirect.leak_at`). :func:`trajectory` yields the images before the first step
and after each one (the reachability search scores them all); :func:`optimise` keeps the first
and the last.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Iterator

import torch
from torch import nn

from cnnaudit import hooks
from cnnaudit.engine import AuditedModel
from cnnaudit.maximize.objectives import Objective
from cnnaudit.maximize.param import FourierImage, PixelImage
from cnnaudit.maximize.redirect import leak_at, redirected_relus
from cnnaudit.maximize.rng import INIT, NOISE, TRANSFORMS, unit_generators
from cnnaudit.maximize.transforms import Transforms
from cnnaudit.progress import Progress

#: fastai's visualiser: upscale by 1.2 between scales, at most 12 times, Adam weight decay 1e-6
UPSCALE, MAX_UPSCALINGS, MIN_START_SIZE, WEIGHT_DECAY = 1.2, 12, 16, 1e-6
#: default learning rates, in [0,1] image units: Olah et al.'s Adam 0.05 for the Fourier
#: parameterisation; for pixels each normalised ascent step moves pixels by ``lr`` RMS, and the
#: multiscale Adam rate is fastai's 0.1 converted from ImageNet-normalised units (std ~0.226)
DEFAULT_LR = {("fourier", None): 0.05, ("pixel", None): 0.4, ("pixel", "multiscale"): 0.0226}
#: the pixel ascent's annealing (:func:`pixel_schedule`): noise sd as a multiple of the step, the share of
#: the steps that are noisy, the last step as a fraction of ``lr``
NOISE_SD, ANNEAL, FINAL_STEP = 2.0, 0.5, 0.05
#: the step of the plain run of ``ascent="best"``, as a fraction of ``lr`` (0.05 at the default 0.4: flashtorch-like)
PLAIN_STEP = 0.125
#: a channel whose best image scores at most this is off: it climbs its centre position instead (see optimise)
OFF = 1e-6
#: the pixel ascents (``Settings.ascent``)
ASCENTS = ("best", "annealed", "plain")
#: how much of the upward gradient the objective's own ReLU passes where it is off (see redirect.leak_at)
LEAK = 0.1
#: how a pixel image starts (``Settings.pixel_start``)
PIXEL_STARTS = {"grey": PixelImage.grey_noise, "uniform": PixelImage.uniform_noise}


@dataclass(frozen=True)
class Settings:
    """Everything that determines a run besides the subject, layer and units."""

    steps: int
    size: int
    seed: int
    param: str
    schedule: str | None
    lr: float
    transforms: Transforms
    redirect_steps: int
    pixel_start: str = "grey"  #: a key of :data:`PIXEL_STARTS` (pixel parameterisation only)
    #: the pixel ascent without a schedule, one of :data:`ASCENTS` (``None`` for Fourier and multiscale runs):
    #: ``"annealed"`` follows :func:`pixel_schedule`; ``"plain"`` takes steps of ``lr``, no noise; ``"best"``
    #: runs both (plain at ``PLAIN_STEP * lr``) and keeps, per unit, the image that scores higher (:func:`optimise`)
    ascent: str | None = "best"

    def __post_init__(self) -> None:
        pixel_ascent = self.param == "pixel" and self.schedule is None
        if (self.ascent in ASCENTS) != pixel_ascent:
            raise ValueError(f"Settings.ascent={self.ascent!r} with param={self.param!r}, schedule={self.schedule!r}: "
                             f"pixels without a schedule take one of {ASCENTS}, other runs None")

    @property
    def runs(self) -> list[Settings]:
        """The single-ascent runs :func:`optimise` makes: two for ``ascent="best"``, else this one."""
        if self.ascent != "best":
            return [self]
        return [replace(self, ascent="annealed"), replace(self, ascent="plain", lr=self.lr * PLAIN_STEP)]


def forward_to(subject: AuditedModel, module: nn.Module | None, images: torch.Tensor) -> torch.Tensor:
    """The output of ``module`` (its first call) for ``images`` in ``[0,1]``; the model stops there
    (:func:`cnnaudit.hooks.first_output`). ``module=None`` means the model's logits (``subject.logits``)."""
    if module is None:
        return subject.logits(images)
    return hooks.first_output(module, lambda: subject.forward(subject.prepare(images), any_output=True))


def placement(subject: AuditedModel) -> dict:
    """``{"device", "dtype"}`` for the images optimised and fed to the model: the subject's device, float32
    (``subject.prepare`` casts model input to the model's dtype, so a bfloat16 model's images are still
    optimised, and returned, in float32)."""
    return {"device": subject.device, "dtype": torch.float32}


def evaluate(subject: AuditedModel, module: nn.Module | None, objective: Objective, images: torch.Tensor) -> torch.Tensor:
    """``objective.paired`` on untransformed images, plain ReLU gradients, no autograd: ``(K,)`` on the CPU."""
    with torch.no_grad():
        return objective.paired(forward_to(subject, module, images.to(**placement(subject)))).double().cpu()


def per_image_normalised(grad: torch.Tensor) -> torch.Tensor:
    """``g_k / (sqrt(mean(g_k^2)) + 1e-5)`` for each image ``k`` (flashtorch's normalisation)."""
    rms = grad.pow(2).flatten(1).mean(dim=1).sqrt()
    return grad / (rms + 1e-5).view(-1, *([1] * (grad.ndim - 1)))


def pixel_schedule(step: int, steps: int, lr: float) -> tuple[float, float]:
    """``(a_t, s_t)``: the step size and noise sd of step ``t = step`` (0-based) of the pixel ascent.

    With ``m = floor(ANNEAL * steps)`` noisy steps: ``(lr, NOISE_SD * lr)`` for ``t < m``; then
    ``(lr * (1 - (1 - FINAL_STEP) * (t - m) / (steps - m - 1)), 0)``, from ``lr`` down to ``FINAL_STEP * lr``
    at the last step (``lr`` when only one step is quiet).
    """
    noisy = math.floor(ANNEAL * steps)
    if step < noisy:
        return lr, NOISE_SD * lr
    quiet = steps - noisy
    return lr * (1.0 - (1.0 - FINAL_STEP) * (step - noisy) / max(quiet - 1, 1)), 0.0


def multiscale_sizes(size: int, steps: int) -> list[int]:
    """fastai's schedule ending at ``size``: ``round(size / 1.2^j)`` for ``j = n..0``, starting at >= 16 px.

    ``n`` is at most 12 and at most ``steps - 1`` so that every scale gets a step.
    """
    n = min(MAX_UPSCALINGS, steps - 1, max(0, math.floor(math.log(size / MIN_START_SIZE) / math.log(UPSCALE))))
    return [round(size / UPSCALE**j) for j in range(n, -1, -1)]


def trajectory(subject: AuditedModel, module: nn.Module | None, objective: Objective,
               settings: Settings) -> Iterator[PixelImage | FourierImage]:
    """The parameterised images before the first step, then after each of the ``settings.steps`` steps.

    The object is updated in place (multiscale: a new one after each upscaling), so read its
    ``.image()`` before advancing the iterator.
    """
    if settings.ascent == "best":
        raise ValueError("trajectory runs one ascent; iterate over settings.runs (optimise does)")
    where = placement(subject)
    init = unit_generators(settings.seed, objective.keys, INIT)
    streams = unit_generators(settings.seed, objective.keys, TRANSFORMS)
    if settings.schedule == "multiscale":
        yield from _multiscale(subject, module, objective, settings, init, streams)
        return
    if settings.param == "pixel":
        image: PixelImage | FourierImage = PIXEL_STARTS[settings.pixel_start](settings.size, init, where,
                                                                              subject.image_channels)
        optimizer = None
    else:
        image = FourierImage(settings.size, init, where, channels=subject.image_channels)
        optimizer = torch.optim.Adam(image.leaves(), lr=settings.lr)
    annealed = optimizer is None and settings.ascent == "annealed"
    noise = unit_generators(settings.seed, objective.keys, NOISE) if annealed else None
    yield image
    for step in range(settings.steps):
        lr, sd = pixel_schedule(step, settings.steps, settings.lr) if noise is not None else (settings.lr, 0.0)
        _step(subject, module, objective, settings, image, streams, optimizer, redirect=step < settings.redirect_steps,
              lr=lr, noise=None if noise is None else (sd, noise))
        yield image


def optimise(subject: AuditedModel, module: nn.Module | None, objective: Objective, settings: Settings, *,
             bar: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the optimisation for ``objective``'s units; return the starting and the final images (on the
    device) and the objective on the final images (:func:`evaluate`: ``(K,)`` float64 on the CPU).

    For ``settings.runs`` of two (``ascent="best"``), both start from the same image and each unit keeps
    the final image on which its objective (untransformed, :func:`evaluate`) is higher, the annealed
    one on a tie. Why both: annealing is what moves an edge unit's stripe walls (0.80 -> 0.94 of the
    optimum), but on a deep unit that starts off (or barely on) its noise scrambles the image the
    unit is building, and plain ascent ends up to 1.5x higher (trained demo CNN, relu4: 6 of 95 units).

    Then, with ``ascent="best"``, a channel of a spatial layer that both leave off (``<= OFF``) climbs
    its centre position instead (the ``neuron`` objective, both ascents, the same start), and keeps
    that image where it scores higher on the channel: pushing the whole map up can silence the inputs
    such a unit needs, while one position finds a local pattern (the demo candidate's relu4 unit 13:
    0 map-wide, 0.97 this way). ``bar`` (a :class:`~cnnaudit.progress.Progress`) advances by the
    number of units after each step of each run; the centre climb adds its steps to its total."""
    start, final, values = _best_of(subject, module, objective, objective, settings.runs, bar)
    if settings.ascent == "best" and spatial_channel(subject, module, objective, settings.size):
        off = [k for k, value in enumerate(values.tolist()) if not value > OFF]
        if off:
            part = objective.select(off)
            if bar is not None and bar.total is not None:
                bar.total += len(off) * settings.steps * len(settings.runs)
            centre = replace(part, kind="neuron", offset=(0, 0))
            _, climbed, climbed_values = _best_of(subject, module, centre, part, settings.runs, bar)
            final[off], values[off] = _keep_better(final[off], values[off], climbed, climbed_values)
    return start, final, values


def spatial_channel(subject: AuditedModel, module: nn.Module | None, objective: Objective, size: int) -> bool:
    """Whether ``objective`` is a channel of a layer with an ``(N, C, h, w)`` output (probed on one grey image)."""
    if objective.kind != "channel" or module is None:
        return False
    with torch.no_grad():
        grey = torch.full((1, subject.image_channels, size, size), 0.5, **placement(subject))
        return objective.layer_map(forward_to(subject, module, grey)).ndim == 4


def _best_of(subject: AuditedModel, module: nn.Module | None, climbed: Objective, scored: Objective,
             runs: list[Settings], bar: Progress | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(start, final images, their values) of ``runs`` climbing ``climbed``: per unit the final image that
    scores higher on ``scored``, the earlier run on a tie."""
    start, final = _single(subject, module, climbed, runs[0], bar)
    values = evaluate(subject, module, scored, final)
    for run in runs[1:]:
        other = _single(subject, module, climbed, run, bar)[1]
        final, values = _keep_better(final, values, other, evaluate(subject, module, scored, other))
    return start, final, values


def _keep_better(kept: torch.Tensor, kept_values: torch.Tensor, other: torch.Tensor,
                 other_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit, ``other`` (and its value) where its value is higher than ``kept``'s, else ``kept``."""
    better = other_values > kept_values
    return (torch.where(better.to(kept.device).view(-1, *([1] * (kept.ndim - 1))), other, kept),
            torch.where(better, other_values, kept_values))


def _single(subject: AuditedModel, module: nn.Module | None, objective: Objective, settings: Settings,
            bar: Progress | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(starting images, final images) of one run of :func:`trajectory`."""
    states = trajectory(subject, module, objective, settings)
    final = next(states)
    start = final.image().detach().clone()
    units = len(objective)
    for final in states:
        if bar is not None:
            bar.advance(units)
    return start, final.image().detach()


def _multiscale(subject: AuditedModel, module: nn.Module | None, objective: Objective, settings: Settings,
                init: list[torch.Generator], streams: list[torch.Generator]) -> Iterator[PixelImage]:
    """fastai's schedule: Adam (weight decay 1e-6) at each scale, bicubic upscaling by 1.2 in between."""
    sizes = multiscale_sizes(settings.size, settings.steps)
    per_scale = [settings.steps // len(sizes) + (i >= len(sizes) - settings.steps % len(sizes)) for i in range(len(sizes))]
    image = PIXEL_STARTS[settings.pixel_start](sizes[0], init, placement(subject), subject.image_channels)
    yield image
    step = 0
    for i, (size, n_steps) in enumerate(zip(sizes, per_scale)):
        if i:
            image = image.resized(size)
        optimizer = torch.optim.Adam(image.leaves(), lr=settings.lr, weight_decay=WEIGHT_DECAY)
        for _ in range(n_steps):
            _step(subject, module, objective, settings, image, streams, optimizer, redirect=step < settings.redirect_steps)
            step += 1
            yield image


def _step(subject: AuditedModel, module: nn.Module | None, objective: Objective, settings: Settings,
          image: PixelImage | FourierImage, streams: list[torch.Generator],
          optimizer: torch.optim.Optimizer | None, *, redirect: bool, lr: float | None = None,
          noise: tuple[float, list[torch.Generator]] | None = None) -> None:
    """One ascent step (see the module docstring). Without ``optimizer``: ``x <- x + lr * g`` (``lr``
    default ``settings.lr``), plus ``sd`` times standard normal noise from each image's generator when
    ``noise = (sd, generators)`` and ``sd > 0``, for the images whose gradient is not all zero."""
    x = settings.transforms(image.image(), streams)
    with redirected_relus() if redirect else contextlib.nullcontext():
        out = forward_to(subject, module, x)
    if redirect:
        leak_at(out, LEAK)
    value = objective.paired(out)
    grads = torch.autograd.grad(value.sum(), image.leaves())
    with torch.no_grad():
        for leaf, grad in zip(image.leaves(), grads):
            grad = per_image_normalised(grad)
            if optimizer is None:
                leaf.add_(grad, alpha=settings.lr if lr is None else lr)
                if noise is not None and noise[0] > 0:  # not for an image without gradient: a dead unit's stays put
                    draws = torch.stack([torch.randn(leaf.shape[1:], generator=g) for g in noise[1]]).to(leaf)
                    moving = grad.flatten(1).abs().amax(dim=1) > 0
                    leaf.add_(draws * moving.view(-1, *([1] * (grad.ndim - 1))), alpha=noise[0])
            else:
                leaf.grad = -grad
        if optimizer is not None:
            optimizer.step()
    image.project()
