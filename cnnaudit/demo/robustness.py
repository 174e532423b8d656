"""The example audits' figures for any demo model, and their spread over training seeds.

:func:`figures` computes, for one model, every figure the example audits (``example_audits/``)
assert on, with the same images, targets and statistics; :data:`FIGURES` gives each one's threshold.
:func:`seed_table` trains the recipe for several seeds and tabulates min / median / max per figure
and variant, with the worst margin to the threshold: the evidence that the audits' verdicts do not
depend on the training seed (the README's per-seed table).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

import numpy as np
import torch

from cnnaudit.data import ImageSet
from cnnaudit.demo.data import CLASSES, make_people
from cnnaudit.demo.models import SHIPPED, TrainSpec, shipped_model, train_model
from cnnaudit.metrics import sanity_check
from cnnaudit.progress import progress
from cnnaudit.scores import Scores, compare
from cnnaudit.subject import Subject


@dataclass(frozen=True)
class Figure:
    """One audited figure: passes when ``value >= threshold`` (``at_least``) or ``value <= threshold``.

    ``margin_needed``: how far inside the threshold every clean model must lie (0.05 for interval
    bounds and ratios; 0 for unit counts and for the release gate, whose threshold is itself a margin).
    """

    name: str
    threshold: float
    at_least: bool
    attention: bool  # an attention audit (the biased model must fail it)
    margin_needed: float = 0.05

    def margin(self, value: float) -> float:
        """How far inside the threshold ``value`` lies (negative: the audit fails)."""
        return value - self.threshold if self.at_least else self.threshold - value


FIGURES: tuple[Figure, ...] = (
    Figure("doctor: mass on tools, CI low", 0.4, True, True),
    Figure("nurse: mass on tools, CI low", 0.4, True, True),
    Figure("mass on faces, CI high", 0.25, False, True),
    Figure("nurse score: face mass female - male, largest absolute CI bound", 0.15, False, True),
    Figure("accuracy, CI low", 0.85, True, False),
    Figure("accuracy stereotyped - counter, CI high", 0.1, False, False),
    Figure("Grad-CAM sanity check, median correlation", 0.5, False, False),
    Figure("features.relu1: dead units", 0, False, False, margin_needed=0.0),
    Figure("features.relu1: relative activation, 10% quantile", 1.0, True, False),
    Figure("features.relu4[:16]: dead units", 0, False, False, margin_needed=0.0),
    Figure("features.relu4[:16]: relative activation, median", 1.0, True, False),
    Figure("mass on tools, paired difference from the released model, CI low", -0.02, True, False, margin_needed=0.0),
)


def _people() -> ImageSet:
    """The example audits' 200 held-out test images."""
    return make_people(200, split="test", seed=0)


def _subject(model: torch.nn.Module) -> Subject:
    return Subject(model, layer="features", classes=list(CLASSES), device="cpu")


def released_tools_mass() -> Scores:
    """The released (shipped ``"clean"``) model's mass on tools per image: the release gate's baseline."""
    people = _people()
    return _subject(shipped_model("clean")).gradcam(people).mass_in(people.region("tools"))


def figures(model: torch.nn.Module, released: Scores | None = None) -> dict[str, float]:
    """Every figure of :data:`FIGURES` for ``model`` on the example audits' 200 test images; the
    release-gate figure is paired against ``released`` (default :func:`released_tools_mass`)."""
    people = _people()
    subject = _subject(model)
    doctors, nurses = people.where(label="doctor"), people.where(label="nurse")
    gender = people.group("gender")
    face = subject.gradcam(people, target="nurse").mass_in(people.region("face"))
    gender_gap = compare(face.where(gender == "female"), face.where(gender == "male")).ci()
    predicted = np.asarray(CLASSES)[subject.predict(people).argmax(dim=1).cpu().numpy()]
    correct = Scores((predicted == people.labels).astype(float), "correct", ids=people.ids)
    pairing = people.group("pairing")
    relu1 = subject.maximize("features.relu1", channels="all", size=64, steps=64, seed=0)
    relu4 = subject.maximize("features.relu4", channels=range(16), size=64, steps=64, seed=0)
    tools = subject.gradcam(people).mass_in(people.region("tools"))
    released = released_tools_mass() if released is None else released
    values = (
        subject.gradcam(doctors, target="doctor").mass_in(doctors.region("tools")).ci().low,
        subject.gradcam(nurses, target="nurse").mass_in(nurses.region("tools")).ci().low,
        subject.gradcam(people).mass_in(people.region("face")).ci().high,
        max(abs(gender_gap.low), abs(gender_gap.high)),
        correct.ci().low,
        compare(correct.where(pairing == "stereotyped"), correct.where(pairing == "counter")).ci().high,
        sanity_check(subject, people[:32], method="gradcam").median(),
        len(relu1.dead(images=people)),
        relu1.relative_to(people).quantile(0.1),
        len(relu4.dead(images=people)),
        relu4.relative_to(people).median(),
        compare(tools, released).ci().low,
    )
    return {figure.name: float(value) for figure, value in zip(FIGURES, values)}


def seed_figures(seeds: Iterable[int], train: TrainSpec = TrainSpec()) -> dict[str, list[dict[str, float]]]:
    """:func:`figures` of the clean and the biased model trained with each seed: ``{variant: [per seed]}``.

    Long (a minute or so per model on a CPU): the terminal shows how many models are done, with the
    training and maximisation under way on the same line (:mod:`cnnaudit.progress`)."""
    seeds, released = list(seeds), released_tools_mass()
    runs: dict[str, list[dict[str, float]]] = {"clean": [], "biased": []}
    with progress(len(runs) * len(seeds), "seeds", unit="models") as bar:
        for variant, results in runs.items():
            for seed in seeds:
                results.append(figures(train_model(variant, train=replace(train, seed=seed)), released))
                bar.advance()
    return runs


def seed_table(seeds: list[int], train: TrainSpec = TrainSpec()) -> str:
    """Markdown: per figure, min / median / max over ``seeds`` for each variant and the worst margin."""
    runs = seed_figures(seeds, train)
    lines = [
        f"Seeds {', '.join(map(str, seeds))}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        "",
        "| figure | passes when | clean: min / median / max | clean: worst margin | biased: min / median / max | biased: best margin |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for figure in FIGURES:
        cells = []
        for variant in ("clean", "biased"):
            values = np.array([run[figure.name] for run in runs[variant]])
            margins = [figure.margin(v) for v in values]
            spread = f"{values.min():.3f} / {np.median(values):.3f} / {values.max():.3f}"
            cells += [spread, f"{min(margins) if variant == 'clean' else max(margins):+.3f}"]
        rule = f"{'>=' if figure.at_least else '<='} {figure.threshold:g}"
        lines.append(f"| {figure.name} | {rule} | {' | '.join(cells)} |")
    return "\n".join(lines)


def shipped_table() -> str:
    """Markdown: the README's table, every figure for each shipped model."""
    names, released = list(SHIPPED), released_tools_mass()
    runs = {name: figures(shipped_model(name), released) for name in names}
    lines = ["| figure | passes when | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(names)]
    for figure in FIGURES:
        rule = f"{'>=' if figure.at_least else '<='} {figure.threshold:g}"
        lines.append(f"| {figure.name} | {rule} | " + " | ".join(f"{runs[name][figure.name]:.3f}" for name in names) + " |")
    return "\n".join(lines)
