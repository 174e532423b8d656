"""Fixtures for the example audits: the demo's people images and its two locally trained models.

``cnnaudit.demo`` retells the Grad-CAM paper's nurse/doctor case with images it makes itself: the
class is defined by a tool (gravel = doctor, brick = nurse) and every image also holds a face whose
hair length ("gender") goes with the class in the biased model's training data, but not in the clean
model's. Both models are trained on the CPU in seconds the first time and cached afterwards.
"""

from __future__ import annotations

import pytest

import cnnaudit as ca
from cnnaudit import demo

# The biased model fails the attention audits: that failure IS the finding, so it is expected.
# strict=True: should the biased model ever pass, the run goes red, because the audit lost its teeth.
CAUGHT_SHORTCUT = pytest.mark.xfail(
    strict=True, reason="the biased model decides by the face (hair length), not by the tool; the audit catches it"
)


def _subject(variant: str, device: object) -> ca.Subject:
    return ca.Subject(demo.trained_model(variant), layer="features", classes=list(demo.CLASSES), device=device)


@pytest.fixture(scope="session")
def people() -> ca.ImageSet:
    """200 held-out test images, balanced: every (class, gender) pair is equally common."""
    return demo.make_people(200, split="test", seed=0)


@pytest.fixture(scope="session", params=["clean", pytest.param("biased", marks=CAUGHT_SHORTCUT)])
def subject(request: pytest.FixtureRequest, cnnaudit_device: object) -> ca.Subject:
    """Each attention audit runs against both models; the biased one is expected to fail."""
    return _subject(request.param, cnnaudit_device)


@pytest.fixture(scope="session")
def clean_subject(cnnaudit_device: object) -> ca.Subject:
    """The model released from the balanced data: the one the unit and gate audits look at."""
    return _subject("clean", cnnaudit_device)
