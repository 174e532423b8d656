"""Activation maximisation with assertable statistics.

:func:`maximize` optimises one image per unit (channel, neuron, class logit or direction) as
one batch, with per-image gradient normalisation and per-image random streams; it returns
:class:`Visualizations`, whose statistics are ``Scores``. Modules: ``objectives`` (what is
maximised), ``param`` (pixel / Fourier images), ``transforms``, ``redirect`` (redirected ReLU
gradient), ``loop`` (the optimiser), ``reach`` (the reachability search behind ``dead()``),
``stats`` (image statistics), ``visualizations``.
"""

from __future__ import annotations

from cnnaudit.maximize.api import maximize
from cnnaudit.maximize.transforms import Transforms
from cnnaudit.maximize.visualizations import Liveness, Stability, Visualizations, high_frequency_energy

__all__ = ["Liveness", "Stability", "Transforms", "Visualizations", "high_frequency_energy", "maximize"]
