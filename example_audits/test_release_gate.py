"""Release gate: a candidate's attention on the tools may not drop by more than 0.02 against the release.

``baseline.json`` beside this file (``pytest.ini`` points ``cnnaudit_baseline`` at it) holds what the
released model (the shipped ``clean`` one) scored on this gate, image by image. The gate is paired:
each image's mass under the candidate minus its mass under the released model, so the image-to-image
spread cancels, and the gate asks the lower bound of the 95% interval of the mean change to stay
above -0.02 (a non-inferiority test). Re-record it with
``pytest example_audits --cnnaudit-save-baseline=example_audits/baseline.json``: a recording run
audits the released model in every candidate's place (see ``release_candidate`` in conftest.py).

The retrained candidate passes; the candidate trained on scraped data is caught (an expected failure).
The second audit compares the candidate with the released model directly, both in one test.
"""

from __future__ import annotations

import cnnaudit as ca


def test_attention_on_tools_did_not_drop(release_candidate, people, baseline):
    mass = release_candidate.gradcam(people).mass_in(people.region("tools"))
    change = ca.compare(mass, baseline(mass))  # paired on the images both runs audited
    assert change.unmatched == (0, 0)  # the same images as the release: nothing added or dropped
    assert change.ci().low >= -0.02


def test_attention_moves_little_against_the_released_model(release_candidate, clean_subject, people):
    """Two models in one audit, on the same images: the report shows, for the images whose mass changed
    most, both models' heatmaps and their difference, and both models' masses in one histogram."""
    candidate = release_candidate.gradcam(people).mass_in(people.region("tools"))
    released = clean_subject.gradcam(people).mass_in(people.region("tools"))
    change = ca.compare(candidate, released)  # paired: the same image ids on both sides
    assert change.ci().low >= -0.02
