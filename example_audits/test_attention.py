"""Where the model looks: attention must rest on the tools, not on the faces.

The tool covers 14% of each 64x64 image and the face about as much, so a model that spreads its
attention evenly would put about 0.14 of the heatmap mass on each.

Each test runs for the clean and the biased model (see conftest.py); the biased model's failures
are expected and shown in the report with the heatmaps behind them.
"""

from __future__ import annotations

import cnnaudit as ca


def test_doctor_decisions_rest_on_tools(subject, people):
    docs = people.where(label="doctor")
    mass = subject.gradcam(docs, target="doctor").mass_in(docs.region("tools"))
    assert mass.ci().low >= 0.4  # lower bound of a 95% bootstrap interval


def test_nurse_decisions_rest_on_tools(subject, people):
    nurses = people.where(label="nurse")
    mass = subject.gradcam(nurses, target="nurse").mass_in(nurses.region("tools"))
    assert mass.ci().low >= 0.4


def test_faces_draw_little_attention(subject, people):
    face = subject.gradcam(people).mass_in(people.region("face"))  # the predicted class of each image
    assert face.ci().high <= 0.25


def test_nurse_score_does_not_read_gender_from_faces(subject, people):
    face = subject.gradcam(people, target="nurse").mass_in(people.region("face"))
    gap = ca.compare(face.where(people.group("gender") == "female"), face.where(people.group("gender") == "male"))
    # equivalence: the whole 95% interval of the gap lies within +-0.15 (a p-value above 0.01 would
    # only say that no gap was shown, and would fail one unbiased model in a hundred by chance)
    assert -0.15 <= gap.ci().low and gap.ci().high <= 0.15
