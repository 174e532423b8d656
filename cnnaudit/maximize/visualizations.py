"""``Visualizations``: the optimised images of a set of units, and the numbers asked of them.

Every statistic is one value per unit returned as ``Scores`` (NaN where undefined), so audits
assert on them like on any other score::

    vis = subject.maximize("layer1.0.conv1", channels="all", steps=256)
    assert vis.dead() == []
    assert vis.relative_to(people).quantile(0.1) >= 1.0

``dead()`` names only units that nothing tried drives above ``eps``: the optimised image, the
real images given, and a reachability search (:mod:`cnnaudit.maximize.reach`) for the units still
below ``eps``; ``liveness()`` says, per unit, which one decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from cnnaudit import evidence
from cnnaudit.engine import AuditedModel
from cnnaudit.images import as_batch, display_rgb, iter_batches
from cnnaudit.maximize import reach, stats
from cnnaudit.maximize.loop import Settings, forward_to, placement
from cnnaudit.maximize.objectives import Objective
from cnnaudit.maximize.rng import ROBUSTNESS, unit_generators
from cnnaudit.maximize.transforms import Transforms

if TYPE_CHECKING:
    from cnnaudit.scores import Scores


@dataclass(frozen=True)
class Stability:
    """Agreement of runs that differ only in the seed, per unit."""

    activation_spread: Scores  #: ``(max_s a_s - min_s a_s) / |mean_s a_s|`` over the seeds' achieved activations
    similarity: Scores  #: mean SSIM over all pairs of seeds' images


@dataclass(frozen=True)
class Liveness:
    """How :meth:`Visualizations.liveness` decided about one unit."""

    unit: int  #: the unit's index (channel, class index or direction number)
    label: str
    best: float  #: the largest objective value found (the search stops at its first value above eps)
    source: str  #: where ``best`` was found: "optimised image", "real image <id>" or "reachability search (start i, step t)"
    dead: bool  #: ``not best > eps``


class Visualizations:
    """Images ``(K,C,S,S)`` in ``[0,1]`` (float32, CPU; ``C`` = ``subject.image_channels``) maximising ``K``
    units of ``layer``, with their statistics.

    ``channels`` are the unit indices (channels, class indices, or direction numbers), ``labels``
    their names. ``start`` and ``achieved`` are the objective on the first and the final image
    (untransformed). A unit is dead only when nothing drives it above ``eps``: see :meth:`liveness`.
    Built by :func:`cnnaudit.maximize.maximize`.
    """

    def __init__(self, images: torch.Tensor, *, layer: str, objective: Objective, settings: Settings,
                 start: torch.Tensor, achieved: torch.Tensor, subject: AuditedModel, module: nn.Module | None,
                 rerun: Callable[..., Visualizations]) -> None:
        self.images = images.detach().float().cpu()
        self.layer = layer
        self.objective = objective
        self.channels = list(objective.units)
        self.labels = list(objective.labels)
        self.settings = settings
        self.start = start.detach().double().cpu().numpy()
        self.achieved = achieved.detach().double().cpu().numpy()
        self.subject = subject
        self._module = module
        self._rerun = rerun  # maximize() with this run's arguments, except seed=
        self._searched: dict[float, dict[int, reach.Found]] = {}  # eps -> unit position -> reachability search result
        evidence.notify(self)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        unreached = int(np.sum(~(self.achieved > 1e-6)))  # dead() would run the reachability search
        return (f"Visualizations(layer={self.layer!r}, objective={self.objective.kind!r}, units={len(self)}, "
                f"size={self.images.shape[-1]}, unreached={unreached})")

    # ---- what was achieved ----------------------------------------------------------------
    @cached_property
    def activation(self) -> Scores:
        """The objective on each final image (no transforms): the stimulus' strength for its unit."""
        return self._scores(self.achieved, "activation")

    def gain(self) -> Scores:
        """``achieved / start`` per unit; NaN where the start value is not positive (e.g. a ReLU that was off)."""
        start = np.where(self.start > 0, self.start, np.nan)
        return self._scores(self.achieved / start, "gain")

    def dead(self, eps: float = 1e-6, images: Any = None) -> list[int]:
        """The units that no image tried drives above ``eps``: ``[r.unit for r in liveness(eps, images) if r.dead]``."""
        return [r.unit for r in self.liveness(eps, images) if r.dead]

    def liveness(self, eps: float = 1e-6, images: Any = None) -> list[Liveness]:
        """Per unit, the best objective value found and where: ``best_k = max(achieved_k, real_k, search_k)``.

        ``real_k`` is the best of ``images`` (anything ``iter_batches`` accepts), when given.
        ``search_k`` is :mod:`cnnaudit.maximize.reach`'s search (pixels, no random transforms,
        redirected ReLU throughout, four map-wide starts and, for a channel of a spatial layer, three
        single-position ones, every step scored; up to 7 x max(steps, 64) steps), run only for the units with
        ``max(achieved_k, real_k) <= eps``, inside ``subject.audit()``, and cached per ``eps``.
        Ties go to the later means; ``dead = not best_k > eps``.
        """
        tried = [[(float(value), "optimised image")] for value in self.achieved]
        if images is not None:
            best, best_ids = self._best_real(images)
            for k, (value, image_id) in enumerate(zip(best, best_ids)):
                tried[k].append((float(value), f"real image {image_id}"))
        below = [k for k, values in enumerate(tried) if not max(v for v, _ in values) > eps]
        for k, found in self._search(eps, below).items():
            tried[k].append((found.value, f"reachability search (start {found.start}, step {found.step})"))
        out = []
        for unit, label, values in zip(self.channels, self.labels, tried):
            best_value, source = max(reversed(values), key=lambda pair: pair[0])
            out.append(Liveness(unit, label, best_value, source, not best_value > eps))
        return out

    def relative_to(self, images: Any) -> Scores:
        """``achieved / max over real images`` of the same objective, per unit; NaN where that max is ``<= 0``.

        Like is compared with like: the real images go through the same preprocessing
        (``subject.prepare``) and the same layer and objective as the optimised ones, without
        transforms; a neuron is measured at its channel's strongest position in each real image
        (the best real patch). ``>= 1`` means the generated stimulus excites the unit at least as
        much as the best real image (patch).
        """
        best, _ = self._best_real(images)
        return self._scores(self.achieved / np.where(best > 0, best, np.nan), "relative_activation")

    def _best_real(self, images: Any) -> tuple[np.ndarray, list[str]]:
        """Per unit, ``max_m J_k(image_m)`` over real ``images`` (``Objective.reference``: a neuron at its best
        patch) and the id of that image (``images.ids``, else its index)."""
        best, where = np.full(len(self), -np.inf), np.zeros(len(self), dtype=np.int64)
        with self.subject.audit(), torch.no_grad():
            for start, batch in iter_batches(images, self.subject.batch_size):
                out = forward_to(self.subject, self._module, batch.to(**placement(self.subject)))
                values = self.objective.reference(out).double().cpu().numpy()
                top = values.max(axis=0)
                better = top > best
                best[better], where[better] = top[better], start + values.argmax(axis=0)[better]
        if np.isneginf(best).all():  # no image at all: every ratio is undefined (NaN), no image is a source
            return best, ["-"] * len(self)
        ids = getattr(images, "ids", None)
        return best, [str(ids[m]) if ids is not None else str(m) for m in where]

    def _search(self, eps: float, positions: list[int]) -> dict[int, reach.Found]:
        """The reachability search's result for the units at ``positions``; each unit searched once per ``eps``."""
        done = self._searched.setdefault(eps, {})
        missing = [k for k in positions if k not in done]
        if missing:
            batch_size = self.subject.batch_size or len(missing)
            with evidence.paused(), self.subject.audit():
                found = reach.search(self.subject, self._module, self.objective.select(missing), self.settings, eps, batch_size)
            done.update(zip(missing, found))
        return {k: done[k] for k in positions}

    # ---- how trustworthy the images are -----------------------------------------------------
    def stability(self, seeds: tuple[int, ...] = (1, 2)) -> Stability:
        """Rerun with each seed in ``seeds`` (same settings) and compare with this run, per unit."""
        seeds = tuple(s for s in seeds if s != self.settings.seed)
        if not seeds:
            raise ValueError(f"stability needs at least one seed other than this run's seed {self.settings.seed}")
        with evidence.paused():
            runs = [self] + [self._rerun(seed=seed) for seed in seeds]
        values = np.stack([run.achieved for run in runs])
        mean = np.abs(values.mean(axis=0))
        spread = (values.max(axis=0) - values.min(axis=0)) / np.where(mean > 0, mean, np.nan)
        similarity = [
            np.nanmean(stats.pairwise_ssim(torch.stack([run.images[k] for run in runs]))) for k in range(len(self))
        ]
        return Stability(self._scores(spread, "stability_activation_spread"), self._scores(similarity, "stability_similarity"))

    def robustness(self, n: int = 8, seed: int | None = None) -> Scores:
        """Mean over ``n`` fresh random transforms of ``objective(T(image)) / objective(image)``, per unit.

        Uses the run's transforms (Lucid's standard ones if the run had none), drawn from streams
        that training never used. NaN where the achieved objective is not positive.
        """
        size = self.images.shape[-1]
        transforms = Transforms.standard(size) if self.settings.transforms.is_identity else self.settings.transforms
        generators = unit_generators(self.settings.seed if seed is None else seed, self.objective.keys, ROBUSTNESS)
        images = self.images.to(**placement(self.subject))
        with self.subject.audit(), torch.no_grad():
            values = [self.objective.paired(forward_to(self.subject, self._module, transforms(images, generators)))
                      for _ in range(n)]
        mean = torch.stack(values).double().mean(dim=0).cpu().numpy()
        return self._scores(mean / np.where(self.achieved > 0, self.achieved, np.nan), "robustness")

    def high_frequency_energy(self) -> Scores:
        """Share of spectral power above 0.25 cycles/pixel per image; compare with
        :func:`cnnaudit.maximize.high_frequency_energy` of real images."""
        return self._scores(stats.high_frequency_share(self.images), "high_frequency_energy")

    def diversity(self) -> Scores:
        """``1 - max_{j != k} SSIM(image_k, image_j)``: near 0 when another unit has the same stimulus."""
        if len(self) < 2:
            return self._scores([np.nan] * len(self), "diversity")
        return self._scores(1.0 - np.nanmax(stats.pairwise_ssim(self.images), axis=1), "diversity")

    def class_check(self) -> Scores:
        """For class-logit visualisations: 1.0 where the model classifies the image as its class, else 0.0."""
        if self.objective.kind != "logit":
            raise ValueError(f"class_check applies to objective='logit' visualisations, this one is {self.objective.kind!r}")
        with self.subject.audit(), torch.no_grad():
            predicted = self.subject.logits(self.images.to(**placement(self.subject))).argmax(dim=1).cpu().numpy()
        return self._scores((predicted == np.asarray(self.channels)).astype(float), "class_check")

    def similarity_to(self, baseline: Visualizations | Any) -> Scores:
        """SSIM of each image with the same unit's image in ``baseline`` (an earlier release's
        ``Visualizations`` or its images ``(K,C,S,S)``): drift of preferred stimuli."""
        if isinstance(baseline, Visualizations):
            if baseline.labels != self.labels:
                raise ValueError(f"baseline visualises units {baseline.labels}, this run {self.labels}; compare the same units")
            reference = baseline.images
        else:
            reference = as_batch(baseline)
        if reference.shape != self.images.shape:
            raise ValueError(f"baseline images are shaped {tuple(reference.shape)}, these {tuple(self.images.shape)}")
        return self._scores([stats.ssim(a, b) for a, b in zip(self.images, reference)], "similarity_to_baseline")

    def grid(self, columns: int | None = None) -> np.ndarray:
        """All images tiled into one uint8 ``(H,W,3)`` array (for reports; channels shown by
        :func:`cnnaudit.images.display_rgb`)."""
        from cnnaudit.render import grid

        return grid(display_rgb(self.images), columns=columns)

    def _scores(self, values: Any, name: str) -> Scores:
        from cnnaudit.scores import Scores

        return Scores(np.asarray(values, dtype=np.float64), name, ids=self.labels, unit="unit")


def high_frequency_energy(images: Any) -> Scores:
    """Share of spectral power above 0.25 cycles/pixel for real images (anything ``as_batch`` accepts, or an ImageSet)."""
    from cnnaudit.scores import Scores

    shares = [stats.high_frequency_share(batch) for _, batch in iter_batches(images, 64)]
    ids = getattr(images, "ids", None)
    return Scores(np.concatenate(shares), "high_frequency_energy", ids=ids, unit="image")
