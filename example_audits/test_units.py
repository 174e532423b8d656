"""What the units respond to: no dead filters, and generated stimuli at least as strong as real images."""

from __future__ import annotations


def test_first_block_has_no_dead_filters(clean_subject, people):
    vis = clean_subject.maximize("features.relu1", channels="all", size=64, steps=64, seed=0)
    assert vis.dead() == []
    assert vis.relative_to(people).quantile(0.1) >= 1.0


def test_last_block_units_are_reachable(clean_subject, people):
    vis = clean_subject.maximize("features.relu4", channels=range(16), size=64, steps=64, seed=0)
    assert vis.dead() == []
    assert vis.relative_to(people).median() >= 1.0
