"""The reachability search behind ``Visualizations.dead``: can any image drive a unit above ``eps``?

The run that made the visualisations answers a different question (the best robust stimulus):
its random transforms pad with grey, so a unit may have fired only on the padding, and it keeps
only its last image. For the units whose optimised image scores ``<= eps`` the search instead runs,
from each start of :func:`starts` (grey noise with seeds ``s, s+1, s+2``, then uniform noise;
``s`` = the run's seed), ``max(run steps, 64)`` plain steps of normalised pixel ascent
(:data:`SEARCH_LR`, not annealed) with no random transforms and the redirected ReLU gradient
throughout (so an off unit's pre-activation is pushed up), and scores the untransformed image
before the first step and after every step. For a channel of a spatial layer, :data:`NEURON_OFFSETS`
starts then climb one position of the channel (the ``neuron`` objective) while still scoring the
channel: pushing the whole map up can silence the inputs a unit needs (its mean pre-activation falls
when its weights are mostly negative), while a single position finds a local pattern; a unit of a
trained network that no test image drives, and that the map-wide climb leaves at 0, reached 0.87
this way::

    found_k = first (start i, step t) with J_k(x_{i,t}) > eps, else argmax_{i,t} J_k(x_{i,t})

A unit leaves the search at its first value above ``eps``; a start ends when no unit of its batch
is left. Each unit's start and streams depend only on ``(seed, unit key)``, so the result does not
depend on the batching.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from cnnaudit.engine import AuditedModel
from cnnaudit.maximize.loop import Settings, evaluate, spatial_channel, trajectory
from cnnaudit.maximize.objectives import Objective
from cnnaudit.maximize.transforms import Transforms

#: fewest ascent steps per start (more when the run itself took more)
MIN_STEPS = 64
#: the search's step: plain normalised ascent, not annealed (it scores every step and wants the first one
#: above ``eps``, not the best final image; noise would slow and blur that climb)
SEARCH_LR = 0.05
#: grey-noise starts (seeds ``s .. s + GREY_STARTS - 1``) before the uniform-noise one
GREY_STARTS = 3
#: positions (from the map's centre) climbed one at a time for a channel of a spatial layer, after the map-wide starts
NEURON_OFFSETS = ((0, 0), (-1, -1), (1, 1))


@dataclass(frozen=True)
class Found:
    """What the search found for one unit: the objective ``value`` of the image of ``start`` after ``step`` steps."""

    value: float
    start: int
    step: int


@dataclass(frozen=True)
class Start:
    """One run of the search: its settings, and the position it climbs (``None``: the unit's own objective)."""

    settings: Settings
    neuron: tuple[int, int] | None = None


def starts(settings: Settings, spatial_channel: bool) -> list[Start]:
    """The search's runs for a visualisation made with ``settings`` (see the module docstring)."""
    steps = max(settings.steps, MIN_STEPS)
    grey = Settings(steps=steps, size=settings.size, seed=settings.seed, param="pixel", schedule=None,
                    lr=SEARCH_LR, transforms=Transforms.none(), redirect_steps=steps, ascent="plain")
    runs = [Start(dataclasses.replace(grey, seed=settings.seed + i)) for i in range(GREY_STARTS)]
    runs.append(Start(dataclasses.replace(grey, pixel_start="uniform")))
    if spatial_channel:
        runs += [Start(grey, neuron=offset) for offset in NEURON_OFFSETS]
    return runs


def search(subject: AuditedModel, module: nn.Module | None, objective: Objective, settings: Settings, eps: float,
           batch_size: int) -> list[Found]:
    """:class:`Found` for each of ``objective``'s units, ``batch_size`` units at a time."""
    found: list[Found] = []
    for lo in range(0, len(objective), batch_size):
        found += _search_batch(subject, module, objective.select(range(lo, min(lo + batch_size, len(objective)))),
                               settings, eps)
    return found


def _search_batch(subject: AuditedModel, module: nn.Module | None, objective: Objective, settings: Settings,
                  eps: float) -> list[Found]:
    found: dict[int, Found] = {}
    for number, run in enumerate(starts(settings, spatial_channel(subject, module, objective, settings.size))):
        todo = [k for k in range(len(objective)) if k not in found or not found[k].value > eps]
        if not todo:
            break
        part = objective.select(todo)
        climbed = part if run.neuron is None else dataclasses.replace(part, kind="neuron", offset=run.neuron)
        for step, image in enumerate(trajectory(subject, module, climbed, run.settings)):
            for k, value in zip(todo, evaluate(subject, module, part, image.image().detach()).tolist()):
                if k not in found or (value > found[k].value and not found[k].value > eps):
                    found[k] = Found(value, number, step)
            if all(found[k].value > eps for k in todo):
                break
    return [found[k] for k in range(len(objective))]
