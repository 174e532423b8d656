"""``maximize``: activation maximisation for many units at once."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from cnnaudit import layers, layouts
from cnnaudit.engine import AuditedModel
from cnnaudit.maximize import objectives
from cnnaudit.maximize.loop import ASCENTS, DEFAULT_LR, PLAIN_STEP, Settings, evaluate, forward_to, optimise, placement
from cnnaudit.maximize.transforms import Transforms
from cnnaudit.maximize.visualizations import Visualizations
from cnnaudit.progress import progress

PARAMS, SCHEDULES = ("fourier", "pixel"), (None, "multiscale")
LOGIT_LAYERS = (None, "logits", "output")


def maximize(subject: AuditedModel, layer: str | nn.Module | None, channels: Any = "all", *, objective: str = "channel",
             steps: int = 128, size: int = 128, seed: int = 0, param: str = "pixel",
             schedule: str | None = None, lr: float | None = None, transforms: Transforms | str | None = None,
             redirect_steps: int | None = None, offset: tuple[int, int] = (0, 0), batch_size: int | None = None,
             ascent: str = "best") -> Visualizations:
    """Optimise one ``size`` x ``size`` image per unit so that it maximises ``objective``; images have
    ``subject.image_channels`` channels (3 for RGB, 1 for a grey model) and are float32.

    * ``objective``: ``"channel"`` (mean of a channel's map), ``"neuron"`` (one position,
      ``offset`` from the map's centre), ``"logit"`` (a class score before softmax; ``layer``
      None, ``channels`` class indices or names) or ``"direction"`` (``channels`` is a ``(K, C)``
      array of vectors in channel space).
    * ``layer``: a ``named_modules()`` name or the module itself (as in ``Subject.gradcam``).
    * ``channels``: ``"all"``, an index, or a list.
    * ``param``: ``"pixel"`` (the default: flashtorch's grey start and normalised gradient ascent,
      see ``ascent``; it gets closest to what a unit can reach, see docs/performance.md) or ``"fourier"``
      (Lucid's decorrelated colour and Adam: smoother, more natural-looking images, further from the
      optimum); ``schedule="multiscale"`` (pixels only) is fastai's upscaling schedule.
      ``transforms`` default: Lucid's standard set for Fourier, none for pixels.
    * ``ascent`` (pixels without a schedule): ``"annealed"`` takes steps of ``lr`` (default 0.4) with
      Gaussian noise of sd ``2 lr`` for the first half, then quiet steps shrinking to ``lr / 20``;
      ``"plain"`` takes steps of ``lr`` (default 0.05) without noise; ``"best"`` (the default) runs
      annealed ascent and plain ascent at ``lr / 8`` from the same start and keeps, per unit, the
      image that scores higher (the annealed one on a tie); a channel that both leave off climbs its
      centre position instead (:func:`~cnnaudit.maximize.loop.optimise`). It costs twice the time;
      each ascent alone ends below 0.9 of the other on some units (docs/performance.md). Where the
      two score within float rounding of each other, another ``batch_size`` may keep the other image
      (the value moves by rounding).
    * The first ``redirect_steps`` steps (default: all) use Lucid's redirected ReLU gradient. It
      only acts on an image while the plain gradient through a ReLU layer is zero for it, i.e.
      until its unit fires, so keeping it on changes nothing once a unit is reached and spares
      slow movers (a colour unit moves only the Fourier DC term) from being reported dead.

    Units are optimised together, ``batch_size`` at a time (default ``subject.batch_size``); each
    image has its own random streams, seeded by ``(seed, unit)``, so the result does not depend on
    the batching. The model is left as it was found.
    """
    if objective not in objectives.KINDS:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(objectives.KINDS)}")
    if param not in PARAMS:
        raise ValueError(f"unknown param {param!r}; choose 'fourier' or 'pixel'")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose None or 'multiscale'")
    if schedule == "multiscale" and param != "pixel":
        raise ValueError("the multiscale schedule upscales pixels; use param='pixel' with schedule='multiscale'")
    if ascent not in ASCENTS:
        raise ValueError(f"unknown ascent {ascent!r}; choose one of {', '.join(map(repr, ASCENTS))}")
    pixel_ascent = param == "pixel" and schedule is None
    if ascent != "best" and not pixel_ascent:
        raise ValueError(f"ascent={ascent!r} chooses how pixels climb without a schedule; it does not apply to "
                         f"param={param!r}, schedule={schedule!r}: leave ascent at its default")
    if isinstance(layer, nn.Module):
        layer = layers.layer_name(subject.model, layer)
    redirect_steps = steps if redirect_steps is None else redirect_steps
    for name, value, low in (("steps", steps, 1), ("size", size, 8), ("seed", seed, 0), ("redirect_steps", redirect_steps, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    settings = Settings(steps=steps, size=size, seed=seed, param=param, schedule=schedule,
                        lr=_default_lr(param, schedule, ascent) if lr is None else float(lr),
                        transforms=_transforms(transforms, param, size), redirect_steps=redirect_steps,
                        ascent=ascent if pixel_ascent else None)
    if objective == "logit":
        if layer not in LOGIT_LAYERS:
            raise ValueError(f"objective='logit' scores the model output; pass layer=None, not {layer!r} "
                             "(for a layer's channels use objective='channel')")
        module, layer_name = None, "logits"
    else:
        if layer is None:
            raise ValueError(f"objective={objective!r} needs a layer name; see subject.layers()")
        module, layer_name = subject.module(layer), layer
    rerun = functools.partial(maximize, subject, layer, channels, objective=objective, steps=steps, size=size,
                              param=param, schedule=schedule, lr=lr, transforms=transforms,
                              redirect_steps=redirect_steps, offset=offset, batch_size=batch_size, ascent=ascent)
    with subject.audit():  # eval mode, parameters frozen; both restored afterwards
        grey = torch.full((1, subject.image_channels, size, size), 0.5, **placement(subject))
        with torch.no_grad():
            probe = forward_to(subject, module, grey)
        read = None if module is None else layouts.reader(subject.reshape_for(layer_name), probe,
                                                           subject.prepare(grey).shape[-2:], layer_name)
        n_outputs = (read(probe) if read is not None else probe).shape[1]
        goal = objectives.build(objective, channels, n_outputs, classes=subject.classes,
                                class_index=subject.class_index, offset=offset, read=read)
        chunk = batch_size or subject.batch_size or len(goal)
        finals, start_values, final_values = [], [], []
        # one updating terminal line (cnnaudit.progress): a step of k units advances it by k
        total = len(goal) * steps * len(settings.runs)
        with progress(total, f"maximize {layer_name}, {len(goal)} units", unit="unit steps") as bar:
            for lo in range(0, len(goal), chunk):
                part = goal.select(range(lo, min(lo + chunk, len(goal))))
                start, final, values = optimise(subject, module, part, settings, bar=bar)
                finals.append(final.cpu())
                start_values.append(evaluate(subject, module, part, start))
                final_values.append(values)
    return Visualizations(torch.cat(finals), layer=layer_name, objective=goal, settings=settings,
                          start=torch.cat(start_values), achieved=torch.cat(final_values),
                          subject=subject, module=module, rerun=rerun)


def _default_lr(param: str, schedule: str | None, ascent: str) -> float:
    lr = DEFAULT_LR[(param, schedule)]
    return lr * PLAIN_STEP if ascent == "plain" else lr


def _transforms(transforms: Transforms | str | None, param: str, size: int) -> Transforms:
    if isinstance(transforms, Transforms):
        return transforms
    if transforms is None:
        return Transforms.standard(size) if param == "fourier" else Transforms.none()
    if transforms == "standard":
        return Transforms.standard(size)
    if transforms == "none":
        return Transforms.none()
    raise ValueError(f"transforms must be 'standard', 'none', None or a Transforms(...), got {transforms!r}")

