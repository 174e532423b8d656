"""Scores read back from a baseline file (:mod:`cnnaudit.baseline`): per image, or summary only (version 1).

Its own module so that the baseline file handling, which the pytest plugin imports at start-up,
imports neither numpy nor the Scores machinery.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from cnnaudit import evidence
from cnnaudit.gates import Statistic
from cnnaudit.scores import Interval, Scores, gated_interval


@dataclass(frozen=True)
class StoredInterval:
    """A confidence interval read from a summary-only baseline."""

    low: float | None
    high: float | None
    level: float


class StoredScores(Scores):
    """A Scores read from a baseline: the stored per-image values and ids, and the stored summary's
    interval (``ci()`` at the stored level is read, not recomputed). Not evidence of the test that reads it."""

    def __init__(self, nodeid: str, key: str, entry: dict, ids: list[str] | None, environment: dict | None) -> None:
        values = [math.nan if v is None else v for v in entry["values"]]
        with evidence.paused():
            super().__init__(values, entry["name"], ids=ids, unit=entry.get("unit", "image"))
        self.nodeid = nodeid
        self.key = key
        self.model = entry.get("model")
        self.environment = environment
        self._stored_ci = entry.get("ci")

    def __repr__(self) -> str:
        return f"StoredScores({self.key!r} of {self.nodeid!r}, n={self.n}, mean={self.mean() if self.n_defined else None})"

    def ci(self, level: float = 0.95, seed: int = 0) -> Interval:
        stored = self._stored_ci
        if stored and seed == 0 and abs(stored["level"] - level) < 1e-12 and None not in (stored["low"], stored["high"]):
            return gated_interval(Interval(stored["low"], stored["high"], stored["level"]), self, "ci()")
        return super().ci(level, seed)


class StoredSummary:
    """A Scores summary from a version-1 baseline (no per-image values): ``n``, ``n_undefined``,
    ``mean()``, ``median()``, ``min()``, ``max()``, ``quantile(q)`` for the stored ``q`` and ``ci()`` at
    the stored level. ``compare`` refuses it (:attr:`not_comparable` says why)."""

    def __init__(self, nodeid: str, key: str, summary: dict, environment: dict | None, path: Path) -> None:
        self.nodeid = nodeid
        self.key = key
        self.name = summary["name"]
        self.n = summary["n"]
        self.n_undefined = summary["n_undefined"]
        self.model = summary.get("model")
        self.environment = environment
        self._summary = summary
        self.not_comparable = (
            f"the baseline of Scores {key!r} of test {nodeid!r} in {path} stores only a summary (a version-1 "
            f"baseline), no per-image values; re-record it with --cnnaudit-save-baseline={path} to compare per image"
        )

    def __repr__(self) -> str:
        return f"StoredSummary({self.key!r} of {self.nodeid!r}, n={self.n}, mean={self._summary['mean']})"

    def _stat(self, value: float | None, expression: str) -> float | None:
        return None if value is None else Statistic(value, self, expression)

    def mean(self) -> float | None:
        return self._stat(self._summary["mean"], "mean()")

    def median(self) -> float | None:
        return self._stat(self._summary["median"], "median()")

    def min(self) -> float | None:
        return self._stat(self._summary["min"], "min()")

    def max(self) -> float | None:
        return self._stat(self._summary["max"], "max()")

    def quantile(self, q: float) -> float | None:
        stored = self._summary["quantiles"]
        if str(float(q)) not in stored:
            raise KeyError(f"the baseline stores quantiles at {', '.join(stored)} only, not {q}")
        return self._stat(stored[str(float(q))], f"quantile({q:g})")

    def ci(self, level: float = 0.95) -> StoredInterval:
        ci = self._summary["ci"] or {"low": None, "high": None, "level": level}
        if abs(ci["level"] - level) > 1e-9:
            raise ValueError(f"the baseline stores the {ci['level']:.0%} interval, not the {level:.0%} one")
        return StoredInterval(self._stat(ci["low"], "ci().low"), self._stat(ci["high"], "ci().high"), ci["level"])
