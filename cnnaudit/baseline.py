"""Baselines: the Scores of a reference run, per image, to gate later runs against.

A baseline file (JSON, written with ``--cnnaudit-save-baseline=PATH``) holds, per test node id, the
environment the test ran in (torch version, device type, GPU model), the image ids of its Scores
(``ids``: each distinct list once) and, per recorded Scores key (its name; ``name#2``… for repeats
within the test), the summary (``n``, ``n_undefined``, ``mean``, ``median``, ``min``, ``max``, ``ci``,
quantiles, the identity of the model behind it), the per-image ``values`` (``null`` where undefined,
full float precision) and the index of its id list. Saving replaces the entries of the tests that ran
and keeps the others, so a partial run refreshes only what it ran.

In an audit, ``baseline(scores)`` returns the stored Scores of the same test and key as a
:class:`StoredScores`, a ``Scores`` with the stored values and ids: ``baseline(mass).mean()``, and
``compare(mass, baseline(mass))`` is paired on the shared images. Version-1 files (summaries only)
still load: their entries are :class:`StoredSummary` (statistics, no per-image values), which
``compare`` refuses with a message saying to re-record. In a run that saves a baseline, a Scores
without a stored entry is answered with itself (the gate compares it with itself) and a
:class:`BaselineRecordingWarning` says so, so the recording run passes.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import stat
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from cnnaudit.stored import StoredScores, StoredSummary

FORMAT = "cnnaudit-baseline"
VERSION = 2
READABLE = (1, 2)
_SUMMARY = ("name", "unit", "n", "n_undefined", "mean", "median", "min", "max", "ci", "quantiles", "model")


class BaselineMissing(LookupError):
    """No baseline entry for a Scores of a test (or no baseline file at all)."""


class BaselineEnvironmentWarning(UserWarning):
    """The baseline was recorded with another torch version, device, GPU or model."""


class BaselineRecordingWarning(UserWarning):
    """A run that saves a baseline answered ``baseline(scores)`` with the Scores itself (no stored entry)."""


class Baseline:
    """A baseline file, read at construction (a missing file is empty and says so on lookup)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.exists = self.path.is_file()
        self.tests: dict[str, dict] = read(self.path) if self.exists else {}

    @property
    def summary_only(self) -> int:
        """How many stored Scores have no per-image values (version-1 entries: no paired comparison)."""
        return sum("values" not in entry for test in self.tests.values() for entry in test.get("scores", {}).values())

    def entry(self, nodeid: str, key: str) -> dict | None:
        """The stored entry (summary, and ``values`` and ``ids`` when per image) of Scores ``key`` in test ``nodeid``."""
        return self.tests.get(nodeid, {}).get("scores", {}).get(key)

    def lookup(self, nodeid: str, key: str, *, environment: dict | None) -> StoredScores | StoredSummary:
        """The stored Scores, warning if ``environment`` (torch, device, GPU) differs from the stored one."""
        from cnnaudit.stored import StoredScores, StoredSummary

        __tracebackhide__ = True
        how = f"create or refresh it by running this test with --cnnaudit-save-baseline={self.path}"
        if not self.exists:
            raise BaselineMissing(f"baseline file {self.path} does not exist (test {nodeid!r}, Scores {key!r}); {how}")
        entry = self.entry(nodeid, key)
        if entry is None:
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
        if "values" not in entry:
            return StoredSummary(nodeid, key, entry, stored_env, self.path)
        return StoredScores(nodeid, key, entry, entry.get("ids"), stored_env)


class BaselineLookup:
    """The ``baseline`` fixture's value: ``baseline(scores)`` -> the stored Scores of this test.

    With ``saving_to`` (the run saves a baseline there), a Scores without a stored entry is answered
    from the recording itself; :attr:`recorded` lists the keys answered so.
    """

    def __init__(self, baseline: Baseline | None, nodeid: str, key_of: Callable[[Any], str],
                 environment: Callable[[object], dict], saving_to: Path | None = None) -> None:
        self._baseline = baseline
        self._nodeid = nodeid
        self._key_of = key_of
        self._environment = environment
        self._saving_to = saving_to
        self.recorded: list[str] = []

    def __repr__(self) -> str:
        return f"BaselineLookup({str(self._baseline.path) if self._baseline else None!r}, test={self._nodeid!r})"

    def __call__(self, scores: Any) -> StoredScores | StoredSummary:
        __tracebackhide__ = True  # pytest shows the audit's line, not this one
        key = self._key_of(scores)
        subject = getattr((getattr(scores, "source", None) or {}).get("heatmaps"), "subject", None)
        stored = None if self._baseline is None else self._baseline.entry(self._nodeid, key)
        if self._saving_to is not None and (stored is None or "values" not in stored):  # none, or an old summary
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

    def _state(self, key: str) -> str:
        if not self._baseline.exists:
            return "does not exist"
        return "has no entry for it" if self._baseline.entry(self._nodeid, key) is None else "has only its summary (version 1)"

    def _recording_message(self, key: str) -> str:
        if self._baseline is None:
            why = "no --cnnaudit-baseline given"
        elif self._baseline.path == self._saving_to:
            why = f"the file {self._state(key)} yet"
        else:
            why = f"baseline file {self._baseline.path} {self._state(key)}"
        return (
            f"recording the baseline of Scores {key!r} of test {self._nodeid!r} to {self._saving_to} ({why}); "
            "baseline(...) returned the Scores itself, so this run's gate compared the Scores with itself"
        )


def recorded_scores(nodeid: str, key: str, scores: Any, subject: object, environment: dict | None) -> StoredScores:
    """``scores`` as :func:`save` would store it and :class:`Baseline` read it back (values, ids, summary, model)."""
    from cnnaudit.records import model_identity
    from cnnaudit.stored import StoredScores
    from cnnaudit.summaries import per_image, summarize

    entry = {**summarize(scores), "model": model_identity(subject), **per_image(scores)}
    stored = json.loads(json.dumps(_stored(entry)))  # the same JSON round trip as the file
    return StoredScores(nodeid, key, stored, stored["ids"], environment)


def _stored(entry: dict) -> dict:
    """What a baseline keeps of a recorded Scores entry: the summary, and the per-image values and ids."""
    kept = {k: entry[k] for k in _SUMMARY}
    if "values" in entry:
        kept.update(values=entry["values"], ids=entry["ids"])
    return kept


def environment_differences(stored: dict | None, current: dict | None) -> list[str]:
    """``"torch 2.14 -> 2.15"``-style lines for the keys (torch, device, gpu) that differ."""
    if not stored or not current:
        return []
    return [f"{k} {stored.get(k)} -> {current.get(k)}" for k in ("torch", "device", "gpu") if stored.get(k) != current.get(k)]


def read(path: Path) -> dict[str, dict]:
    """The ``tests`` of a baseline file, each Scores entry with its own ``ids`` list; ``ValueError`` if it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read baseline file {path}: {error}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cnnaudit baseline file (expected \"format\": \"{FORMAT}\")")
    if data.get("version") not in READABLE:
        raise ValueError(
            f"{path} is a version {data.get('version')} baseline; this cnnaudit reads versions "
            f"{', '.join(map(str, READABLE))}: re-record it with --cnnaudit-save-baseline"
        )
    tests = data["tests"]
    for test in tests.values():
        table = test.pop("ids", [])
        for entry in test.get("scores", {}).values():
            if "values" in entry:
                entry["ids"] = None if entry.get("ids") is None else table[entry["ids"]]
    return tests


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
            "scores": {**unreached, **{s["key"]: _stored(s) for s in scores}},
        }
        stored += len(scores)
    write(path, tests)
    return stored, sum(len(entry.get("scores", {})) for entry in tests.values()) - stored


def write(path: Path, tests: dict[str, dict]) -> None:
    """Write ``tests`` (as :func:`read` returns them) to ``path`` atomically, as the current version."""
    from cnnaudit.report import atomic_open

    with atomic_open(path) as handle:
        handle.write(_dumps({"format": FORMAT, "version": VERSION, "tests": _with_id_tables(tests)}))


def _with_id_tables(tests: dict[str, dict]) -> dict[str, dict]:
    """``tests`` sorted, each test's distinct id lists stored once (``ids``) and referred to by index."""
    out = {}
    for nodeid, test in sorted(tests.items()):
        table: list[list[str]] = []
        scores = {}
        for key, entry in test.get("scores", {}).items():
            entry = dict(entry)
            if entry.get("ids") is not None:
                if entry["ids"] not in table:
                    table.append(entry["ids"])
                entry["ids"] = table.index(entry["ids"])
            scores[key] = entry
        out[nodeid] = {"environment": test.get("environment"), "ids": table, "scores": scores}
    return out


def _dumps(doc: dict) -> str:
    """``doc`` as indented JSON with each list of numbers or strings (a Scores' values, an id list) on one
    line: a file a person can read and diff, one line per Scores however many images it has."""
    flat: list[str] = []
    tag = secrets.token_hex(8)  # no string in the data can be a placeholder

    def mark(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: mark(v) for k, v in node.items()}
        if isinstance(node, list) and node and not any(isinstance(v, (dict, list)) for v in node):
            flat.append(json.dumps(node, allow_nan=False, ensure_ascii=False))
            return f"\u0000{tag}:{len(flat) - 1}"
        if isinstance(node, list):
            return [mark(v) for v in node]
        return node

    text = json.dumps(mark(doc), indent=1, allow_nan=False, ensure_ascii=False)
    return re.sub(rf'"\\u0000{tag}:(\d+)"', lambda match: flat[int(match.group(1))], text) + "\n"
