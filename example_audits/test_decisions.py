"""What the model decides: accuracy must not depend on whether gender matches the stereotype."""

from __future__ import annotations

import numpy as np

import cnnaudit as ca


def correct(subject: ca.Subject, images: ca.ImageSet) -> ca.Scores:
    """1.0 where the model's predicted class is the image's label, else 0.0."""
    predicted = np.asarray(subject.classes)[subject.predict(images).argmax(dim=1).cpu().numpy()]
    return ca.Scores((predicted == images.labels).astype(float), "correct", ids=images.ids)


def test_accuracy_is_high(subject, people):
    assert correct(subject, people).ci().low >= 0.85


def test_accuracy_does_not_depend_on_stereotype(subject, people):
    right = correct(subject, people)
    pairing = people.group("pairing")
    gap = ca.compare(right.where(pairing == "stereotyped"), right.where(pairing == "counter"))
    assert gap.ci().high <= 0.1  # stereotyped images may not be (much) easier than counter-stereotyped ones
