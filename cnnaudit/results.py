"""The run as the report sees it: one entry per test, folded from pytest's phase reports.

Each test's setup, call and teardown reports are folded into one entry (outcome, message,
duration, and the evidence the recorder attached to the report). The controller sees the same
reports whether the tests ran here or on xdist workers, so both give the same entries. Entries are
ordered failures first, then by collection order.

A run is *complete* when every collected test reported its teardown and pytest ended normally; the
verdict of anything else is ``incomplete`` (unless a failure already makes it ``fail``), so an output
never says ``pass`` for a run that stopped early, lost a crashed xdist worker, or is still going.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

OUTCOMES = ("failed", "error", "xpassed", "xfailed", "passed", "skipped")
"""Outcomes from most to least alarming: the report's order and the precedence when phases disagree."""

_PRECEDENCE = ("failed", "error", "xpassed", "xfailed", "skipped", "passed")
_PHASES = ("setup", "call", "teardown")
DETAILS_LIMIT = 20_000
_XDIST_WORKER_LINE = re.compile(r"\A\[gw\d+\] [^\n]*\n\n?")


class RunResults:
    """Test entries built from pytest reports (phase reports and failed collection reports)."""

    def __init__(self) -> None:
        self._open: dict[str, dict] = {}
        self.finished: list[dict] = []
        self.collected: int | None = None  #: tests collected to run (after deselection); None: not known

    def add(self, report: Any) -> dict | None:
        """Fold a phase report into its test's entry; return the entry once its teardown arrived, or at
        once for a report of no phase (xdist's report of a test whose worker crashed: a failure)."""
        entry = self._open.setdefault(report.nodeid, _new_entry(report.nodeid))
        entry["duration"] += float(getattr(report, "duration", 0.0))
        evidence = getattr(report, "cnnaudit", None)
        if evidence is not None:
            entry["evidence"] = evidence
        outcome = phase_outcome(report)
        if outcome is not None:
            if _PRECEDENCE.index(outcome) < _PRECEDENCE.index(entry["outcome"]):
                entry["outcome"], entry["phase"] = outcome, report.when
                entry["message"] = phase_message(report)
            if report.failed or outcome == "xfailed":
                entry["details"] = _join(entry["details"], _details(report))
        if report.when not in _PHASES and report.failed:
            entry["outcome"], entry["phase"], entry["message"] = "failed", "crash", phase_message(report)
            entry["details"] = _join(entry["details"], _details(report))
        elif report.when != "teardown":
            return None
        del self._open[report.nodeid]
        self.finished.append(entry)
        return entry

    def complete(self) -> bool:
        """Every collected test reported (teardown or crash) and no test is left open (a test the run
        stopped during is not an entry: it neither passed nor failed)."""
        reported = sum(1 for e in self.finished if e["phase"] != "collect")
        return not self._open and (self.collected is None or reported >= self.collected)

    def add_collect_error(self, report: Any) -> None:
        """Record a file or class that failed to collect as an ``error`` entry."""
        if any(e["nodeid"] == report.nodeid for e in self.finished):
            return
        entry = _new_entry(report.nodeid)
        entry.update(outcome="error", phase="collect", message=phase_message(report), details=_details(report))
        self.finished.append(entry)

    def entries(self) -> list[dict]:
        """Finished entries, failures first (:data:`OUTCOMES` order), then collection order."""
        return sorted(self.finished, key=lambda e: (OUTCOMES.index(e["outcome"]), _index(e), e["nodeid"]))

    def counts(self) -> dict[str, int]:
        """Number of finished tests per outcome (every outcome present, zeros included)."""
        counted = Counter(e["outcome"] for e in self.finished)
        return {outcome: counted.get(outcome, 0) for outcome in OUTCOMES}

    def verdict(self, finished: bool) -> str:
        """``fail`` if any test failed or errored; else ``incomplete`` unless the run ``finished`` and is
        :meth:`complete`; else ``pass``, or ``no tests``."""
        counts = self.counts()
        if counts["failed"] or counts["error"]:
            return "fail"
        if not (finished and self.complete()):
            return "incomplete"
        return "pass" if self.finished else "no tests"

    def models(self) -> list[dict]:
        """Every model identity seen, with the number of tests that used it."""
        seen: dict[str, dict] = {}
        for entry in self.finished:
            for model in (entry["evidence"] or {}).get("models", []):
                known = seen.setdefault(str(model.get("sha256")), {**model, "tests": 0})
                known["tests"] += 1
        return list(seen.values())

    def seeds(self) -> list[int]:
        """Every seed recorded by a test (torch's initial seed, visualisation seeds)."""
        return sorted({s for e in self.finished for s in (e["evidence"] or {}).get("seeds", [])})


def phase_outcome(report: Any) -> str | None:
    """The outcome a phase report implies for its test (``None``: a passing setup or teardown says nothing)."""
    xfail = hasattr(report, "wasxfail")
    if report.failed:
        return "failed" if report.when == "call" else "error"
    if report.skipped:
        return "xfailed" if xfail else "skipped"
    if report.when == "call":
        return "xpassed" if xfail else "passed"
    return None


def phase_message(report: Any) -> str:
    """One line saying why: the exception line of a failure, the reason of a skip or xfail."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
        return reason.removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    message = crash.message if crash is not None else (str(longrepr).strip().splitlines() or [""])[-1]
    if hasattr(report, "wasxfail"):
        reason = f"xfail: {report.wasxfail}" if report.wasxfail else "xfail"
        return f"{reason} — {message}" if message else reason
    if report.when in ("setup", "teardown"):
        return f"error in {report.when}: {message}"
    return message


def _details(report: Any) -> str:
    """The failure's full text, without the ``[gw0] linux -- Python ...`` line xdist puts first."""
    text = _XDIST_WORKER_LINE.sub("", report.longreprtext) if report.longrepr is not None else ""
    return text if len(text) <= DETAILS_LIMIT else text[:DETAILS_LIMIT] + f"\n… ({len(text) - DETAILS_LIMIT} more characters)"


def _join(first: str, second: str) -> str:
    return "\n\n".join(part for part in (first, second) if part)


def _new_entry(nodeid: str) -> dict:
    return {
        "nodeid": nodeid, "outcome": "passed", "phase": "call", "message": "", "details": "", "duration": 0.0, "evidence": None,
    }


def _index(entry: dict) -> int:
    return (entry["evidence"] or {}).get("index", -1)
