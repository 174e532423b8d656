"""What the units respond to: no dead filters, and generated stimuli at least as strong as real images.

Every shipped model must pass: whatever a model learned, its units should be alive.
"""

from __future__ import annotations


def test_first_block_has_no_dead_filters(any_model, people):
    vis = any_model.maximize("features.relu1", channels="all", size=64, steps=64, seed=0)
    assert vis.dead(images=people) == []  # dead: neither the search nor any real image drives it above 1e-6
    assert vis.relative_to(people).quantile(0.1) >= 1.0


def test_last_block_units_are_reachable(any_model, people):
    vis = any_model.maximize("features.relu4", channels=range(16), size=64, steps=64, seed=0)
    assert vis.dead(images=people) == []
    assert vis.relative_to(people).median() >= 1.0
