"""Baselines: the Scores summaries of a reference run, to gate later runs against.

A baseline file (JSON, written with ``--cnnaudit-save-baseline=PATH``) holds, per test node id, the
environment the test ran in (torch version, device type, GPU model) and, per recorded Scores key
(its name; ``name#2``… for repeats within the test), the summary: ``n``, ``n_undefined``, ``mean``,
``median``, ``min``, ``max``, ``ci`` and quantiles, with the identity of the model behind it.
Saving replaces the entries of the tests that ran and keeps the others, so a partial run refreshes
only what it ran.

In an audit, ``baseline(scores)`` returns the stored summary of the same test and key as a
:class:`StoredScores`, whose methods mirror ``Scores``: ``baseline(mass).mean()``. In a run that
saves a baseline, a Scores without a stored entry is answered with its own summary (the gate
compares it with itself) and a :class:`BaselineRecordingWarning` says so, so the recording run passes.
"""

from __future__ import annotations

import json
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

FORMAT = "cnnaudit-baseline"
VERSION = 1
_STORED = ("name", "unit", "n", "n_undefined", "mean", "median", "min", "max", "ci", "quantiles", "model")


class BaselineMissing(LookupError):
    """No baseline entry for a Scores of a test (or no baseline file at all)."""


class BaselineEnvironmentWarning(UserWarning):
    """The baseline was recorded with another torch version, device, GPU or model."""


class BaselineRecordingWarning(UserWarning):
    """A run that saves a baseline answered ``baseline(scores)`` with the Scores' own summary (no stored entry)."""


@dataclass(frozen=True)
class StoredInterval:
    """A confidence interval read from a baseline."""

    low: float | None
    high: float | None
    level: float


class StoredScores:
    """A Scores summary from a baseline: ``n``, ``n_undefined``, ``mean()``, ``median()``, ``min()``,
    ``max()``, ``quantile(q)`` for the stored ``q`` and ``ci()`` at the stored level."""

    def __init__(self, nodeid: str, key: str, summary: dict, environment: dict | None) -> None:
        self.nodeid = nodeid
        self.key = key
        self.name = summary["name"]
        self.n = summary["n"]
        self.n_undefined = summary["n_undefined"]
        self.model = summary.get("model")
        self.environment = environment
        self._summary = summary

    def __repr__(self) -> str:
        return f"StoredScores({self.key!r} of {self.nodeid!r}, n={self.n}, mean={self._summary['mean']})"

    def mean(self) -> float | None:
        return self._summary["mean"]

    def median(self) -> float | None:
        return self._summary["median"]

    def min(self) -> float | None:
        return self._summary["min"]

    def max(self) -> float | None:
        return self._summary["max"]

    def quantile(self, q: float) -> float | None:
        stored = self._summary["quantiles"]
        if str(float(q)) not in stored:
            raise KeyError(f"the baseline stores quantiles at {', '.join(stored)} only, not {q}")
        return stored[str(float(q))]

    def ci(self, level: float = 0.95) -> StoredInterval:
        ci = self._summary["ci"] or {"low": None, "high": None, "level": level}
        if abs(ci["level"] - level) > 1e-9:
            raise ValueError(f"the baseline stores the {ci['level']:.0%} interval, not the {level:.0%} one")
        return StoredInterval(ci["low"], ci["high"], ci["level"])


class Baseline:
    """A baseline file, read at construction (a missing file is empty and says so on lookup)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.exists = self.path.is_file()
        self.tests: dict[str, dict] = read(self.path) if self.exists else {}

    def entry(self, nodeid: str, key: str) -> dict | None:
        """The stored summary of Scores ``key`` in test ``nodeid``, or ``None``."""
        return self.tests.get(nodeid, {}).get("scores", {}).get(key)

    def lookup(self, nodeid: str, key: str, *, environment: dict | None) -> StoredScores:
        """The stored Scores, warning if ``environment`` (torch, device, GPU) differs from the stored one."""
        __tracebackhide__ = True
        how = f"create or refresh it by running this test with --cnnaudit-save-baseline={self.path}"
        if not self.exists:
            raise BaselineMissing(f"baseline file {self.path} does not exist (test {nodeid!r}, Scores {key!r}); {how}")
        summary = self.entry(nodeid, key)
        if summary is None:
            stored = sorted(self.tests.get(nodeid, {}).get("scores", {}))
            has = f"it has {', '.join(map(repr, stored))} for this test" if stored else "it has no entry for this test"
            raise BaselineMissing(f"no baseline for Scores {key!r} of test {nodeid!r} in {self.path} ({has}); {how}")
        stored_env = self.tests[nodeid].get("environment")
        # a new model is what a release gate is for, so only the setting (torch, device, GPU) warns
        differences = environment_differences(stored_env, environment)
        if differences:
            warnings.warn(
                BaselineEnvironmentWarning(
                    f"baseline for {key!r} of {nodeid!r} was recorded in another setting: {'; '.join(differences)}. "
                    "Differences may come from the setting, not only from the model's behaviour."
                ),
                stacklevel=3,
            )
        return StoredScores(nodeid, key, summary, stored_env)


class BaselineLookup:
    """The ``baseline`` fixture's value: ``baseline(scores)`` -> the stored summary for this test.

    With ``saving_to`` (the run saves a baseline there), a Scores without a stored entry is answered
    from the recording itself; :attr:`recorded` lists the keys answered so.
    """

    def __init__(self, baseline: Baseline | None, nodeid: str, key_of: Any, environment: Any,
                 saving_to: Path | None = None) -> None:
        self._baseline = baseline
        self._nodeid = nodeid
        self._key_of = key_of
        self._environment = environment
        self._saving_to = saving_to
        self.recorded: list[str] = []

    def __repr__(self) -> str:
        return f"BaselineLookup({str(self._baseline.path) if self._baseline else None!r}, test={self._nodeid!r})"

    def __call__(self, scores: Any) -> StoredScores:
        __tracebackhide__ = True  # pytest shows the audit's line, not this one
        key = self._key_of(scores)
        subject = getattr((getattr(scores, "source", None) or {}).get("heatmaps"), "subject", None)
        if self._saving_to is not None and (self._baseline is None or self._baseline.entry(self._nodeid, key) is None):
            warnings.warn(BaselineRecordingWarning(self._recording_message(key)), stacklevel=2)
            if key not in self.recorded:
                self.recorded.append(key)
            return recorded_scores(self._nodeid, key, scores, subject, self._environment(subject))
        if self._baseline is None:
            raise BaselineMissing(
                f"test {self._nodeid!r} asks for the baseline of Scores {key!r} but no baseline file was given: "
                "run with --cnnaudit-baseline=PATH (create PATH with --cnnaudit-save-baseline=PATH)"
            )
        return self._baseline.lookup(self._nodeid, key, environment=self._environment(subject))

    def _recording_message(self, key: str) -> str:
        if self._baseline is None:
            why = "no --cnnaudit-baseline given"
        elif self._baseline.path == self._saving_to:
            why = f"the file {'has no entry for it' if self._baseline.exists else 'does not exist'} yet"
        else:
            why = f"baseline file {self._baseline.path} {'has no entry for it' if self._baseline.exists else 'does not exist'}"
        return (
            f"recording the baseline of Scores {key!r} of test {self._nodeid!r} to {self._saving_to} ({why}); "
            "baseline(...) returned the Scores' own summary, so this run's gate compared the Scores with itself"
        )


def recorded_scores(nodeid: str, key: str, scores: Any, subject: object, environment: dict | None) -> StoredScores:
    """``scores`` as :func:`save` would store it and :class:`Baseline` read it back (summary, model, environment)."""
    from cnnaudit.records import model_identity
    from cnnaudit.summaries import summarize

    summary = {**summarize(scores), "model": model_identity(subject)}
    stored = json.loads(json.dumps({k: summary[k] for k in _STORED}))  # the same JSON round trip as the file
    return StoredScores(nodeid, key, stored, environment)


def environment_differences(stored: dict | None, current: dict | None) -> list[str]:
    """``"torch 2.14 -> 2.15"``-style lines for the keys (torch, device, gpu) that differ."""
    if not stored or not current:
        return []
    return [f"{k} {stored.get(k)} -> {current.get(k)}" for k in ("torch", "device", "gpu") if stored.get(k) != current.get(k)]


def read(path: Path) -> dict[str, dict]:
    """The ``tests`` of a baseline file; ``ValueError`` if it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read baseline file {path}: {error}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cnnaudit baseline file (expected \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise ValueError(f"{path} is a version {data.get('version')} baseline; this cnnaudit reads version {VERSION}")
    return data["tests"]


def check_writable(path: Path) -> None:
    """Refuse, when the run starts, a save path that its end could not write or must not replace: a
    file that is not a baseline, a read-only baseline (its write bit is off; ``os.replace`` would
    replace it anyway, even for root), or a folder this process cannot write into."""
    path = Path(path)
    if path.is_file():
        read(path)
        if not path.stat().st_mode & stat.S_IWUSR:
            raise ValueError(
                f"baseline file {path} is read-only, and saving would replace it; make it writable "
                f"(chmod u+w {path}) to refresh it, or pass another --cnnaudit-save-baseline path"
            )
    folder = next((parent for parent in path.absolute().parents if parent.exists()), None)
    if folder is not None and not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot save the baseline to {path}: folder {folder} is not writable; choose another path")


def save(path: Path, results: Iterable[tuple[str, str, dict | None]]) -> tuple[int, int]:
    """Store the Scores of each ``(nodeid, outcome, evidence)`` in ``path``; returns (stored, kept).

    Nothing that the run did not re-measure is lost: a test without Scores (skipped, an error in a
    fixture, a failure before its first Scores) keeps its entry, and a test that did not pass keeps
    the stored Scores it did not reach; a passed test's entry is replaced whole. ``kept`` counts the
    Scores in the file that this run did not write.
    """
    from cnnaudit.report import atomic_open

    path = Path(path)
    tests = read(path) if path.is_file() else {}
    stored = 0
    for nodeid, outcome, evidence in results:
        scores = (evidence or {}).get("scores") or []
        if not scores:
            continue
        unreached = {} if outcome == "passed" else tests.get(nodeid, {}).get("scores", {})
        tests[nodeid] = {
            "environment": evidence["environment"],
            "scores": {**unreached, **{s["key"]: {k: s[k] for k in _STORED} for s in scores}},
        }
        stored += len(scores)
    with atomic_open(path) as handle:
        json.dump({"format": FORMAT, "version": VERSION, "tests": dict(sorted(tests.items()))}, handle, indent=1)
    return stored, sum(len(entry.get("scores", {})) for entry in tests.values()) - stored
