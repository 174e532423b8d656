"""``python -m cnnaudit.demo``: the demo's figures (the README's table), clean model against biased."""

from __future__ import annotations

import numpy as np

from cnnaudit.demo.data import CLASSES, make_people
from cnnaudit.demo.models import trained_model
from cnnaudit.scores import Scores
from cnnaudit.subject import Subject


def _cell(scores: Scores) -> str:
    interval = scores.ci()
    return f"{scores.mean():.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def main() -> None:
    people = make_people(200, split="test", seed=0)
    pairing = people.group("pairing")
    print("| model | mass on tools | mass on faces | accuracy | stereotyped / counter-stereotyped |")
    print("| --- | --- | --- | --- | --- |")
    for variant in ("clean", "biased"):
        subject = Subject(trained_model(variant), layer="features", classes=list(CLASSES), device="cpu")
        heatmaps = subject.gradcam(people)
        predicted = np.asarray(CLASSES)[subject.predict(people).argmax(dim=1).cpu().numpy()]
        correct = Scores((predicted == people.labels).astype(float), "correct", ids=people.ids)
        split = f"{correct.where(pairing == 'stereotyped').mean():.2f} / {correct.where(pairing == 'counter').mean():.2f}"
        print(
            f"| {variant} | {_cell(heatmaps.mass_in(people.region('tools')))} | "
            f"{_cell(heatmaps.mass_in(people.region('face')))} | {_cell(correct)} | {split} |"
        )


if __name__ == "__main__":
    main()
