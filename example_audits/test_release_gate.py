"""Release gate: attention on the tools may not drop by more than 0.02 against the last release.

The previous release's figures live in ``baseline.json`` beside this file (``pytest.ini`` points
``cnnaudit_baseline`` at it). Re-record it for a new release with
``pytest example_audits --cnnaudit-save-baseline=example_audits/baseline.json``.
"""

from __future__ import annotations


def test_attention_on_tools_did_not_drop(clean_subject, people, baseline):
    mass = clean_subject.gradcam(people).mass_in(people.region("tools"))
    assert mass.mean() >= baseline(mass).mean() - 0.02
