"""Fixtures for the example audits: the demo's people images and its three shipped models.

``cnnaudit.demo`` retells the Grad-CAM paper's nurse/doctor case with images it makes itself: the
class is defined by a tool (gravel = doctor, brick = nurse) and every image also holds a face whose
hair length ("gender") goes with the class in the biased model's training data, but not in the clean
model's. The models ship with the package (``cnnaudit/demo/weights``): nothing is trained here, and
every machine audits the same weights.

- ``clean``: the released model, trained on curated, balanced data;
- ``candidate``: the next release's candidate, the same recipe retrained with another seed;
- ``biased``: a candidate trained on scraped data in which gender goes with the class.
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


def _subject(name: str, device: object) -> ca.Subject:
    return ca.Subject(demo.shipped_model(name), layer="features", classes=list(demo.CLASSES), device=device)


@pytest.fixture(scope="session")
def people() -> ca.ImageSet:
    """200 held-out test images, balanced: every (class, gender) pair is equally common."""
    return demo.make_people(200, split="test", seed=0)


@pytest.fixture(scope="session", params=["clean", pytest.param("biased", marks=CAUGHT_SHORTCUT)])
def subject(request: pytest.FixtureRequest, cnnaudit_device: object) -> ca.Subject:
    """Each attention and decision audit runs against the clean and the biased model; the biased one is expected to fail."""
    return _subject(request.param, cnnaudit_device)


@pytest.fixture(scope="session", params=list(demo.SHIPPED))
def any_model(request: pytest.FixtureRequest, cnnaudit_device: object) -> ca.Subject:
    """Every shipped model: audits that each of them must pass (its units are alive, whatever it learned)."""
    return _subject(request.param, cnnaudit_device)


@pytest.fixture(scope="session")
def clean_subject(cnnaudit_device: object) -> ca.Subject:
    """The released model."""
    return _subject("clean", cnnaudit_device)


@pytest.fixture(params=["candidate", "biased"])
def release_candidate(request: pytest.FixtureRequest, cnnaudit_device: object) -> ca.Subject:
    """The model a release gate decides on: the retrained candidate (it must pass) and the biased one
    (the gate must catch it: an expected failure).

    A run that records the baseline (``--cnnaudit-save-baseline`` or the ``cnnaudit_save_baseline``
    ini key) audits the released model in every candidate's place, so that the baseline holds what the
    released model scored on each gate: in that run both ids pass, with the released model's figures.
    """
    if request.config.getoption("cnnaudit_save_baseline") or request.config.getini("cnnaudit_save_baseline"):
        return _subject("clean", cnnaudit_device)
    if request.param == "biased":
        request.applymarker(
            pytest.mark.xfail(strict=True, reason="a candidate trained on scraped data regressed; the gate catches it")
        )
    return _subject(request.param, cnnaudit_device)
