"""Release gate: a candidate's attention on the tools may not drop by more than 0.02 against the release.

``baseline.json`` beside this file (``pytest.ini`` points ``cnnaudit_baseline`` at it) holds what the
released model (the shipped ``clean`` one) scored on this gate. Re-record it with
``pytest example_audits --cnnaudit-save-baseline=example_audits/baseline.json``: a recording run
audits the released model in every candidate's place (see ``release_candidate`` in conftest.py).

The retrained candidate passes; the candidate trained on scraped data is caught (an expected failure).
"""

from __future__ import annotations


def test_attention_on_tools_did_not_drop(release_candidate, people, baseline):
    mass = release_candidate.gradcam(people).mass_in(people.region("tools"))
    assert mass.mean() >= baseline(mass).mean() - 0.02
