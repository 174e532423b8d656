"""cnnaudit: pytest-style audits of where convolutional image models look and what their units respond to.

Public names are imported lazily so that ``import cnnaudit`` (and the pytest plugin) stays cheap
until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cnnaudit.version import __version__

_EXPORTS = {
    "Subject": "cnnaudit.subject",
    "load_weights": "cnnaudit.subject",
    "normalize": "cnnaudit.subject",
    "HeatmapCache": "cnnaudit.cache",
    "LayerInfo": "cnnaudit.layers",
    "Heatmaps": "cnnaudit.heatmaps",
    "ImageSet": "cnnaudit.data",
    "Regions": "cnnaudit.regions",
    "Scores": "cnnaudit.scores",
    "Interval": "cnnaudit.scores",
    "Difference": "cnnaudit.scores",
    "compare": "cnnaudit.scores",
    "UndefinedScoresError": "cnnaudit.scores",
    "sanity_check": "cnnaudit.metrics",
    "GuidedRuleWarning": "cnnaudit.attribution.guided",
    "Visualizations": "cnnaudit.maximize",
    "filter_grid": "cnnaudit.views",
    "feature_map_grid": "cnnaudit.views",
    "deepdream": "cnnaudit.views",
}

# subpackages / modules reachable as attributes without an import of their own (``ca.demo.make_people(...)``,
# ``ca.targets.detection(...)``)
_SUBPACKAGES = ("demo", "targets")

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from cnnaudit.cache import HeatmapCache
    from cnnaudit.data import ImageSet
    from cnnaudit.heatmaps import Heatmaps
    from cnnaudit.layers import LayerInfo
    from cnnaudit.maximize import Visualizations
    from cnnaudit.metrics import sanity_check
    from cnnaudit.regions import Regions
    from cnnaudit.scores import Difference, Interval, Scores, UndefinedScoresError, compare
    from cnnaudit.subject import Subject, load_weights, normalize
    from cnnaudit.views import deepdream, feature_map_grid, filter_grid


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"cnnaudit.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cnnaudit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return [*__all__, *_SUBPACKAGES]
