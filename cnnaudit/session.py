"""One audit run as the pytest plugin drives it: settings, per-test recorders, results and outputs.

The plugin (``cnnaudit.plugin``) only translates pytest hooks into calls on :class:`AuditSession`.
Recording is on when the run asks for something recorded (``--cnnaudit-report``, ``--cnnaudit-json``,
``--cnnaudit-baseline``, ``--cnnaudit-save-baseline`` or ``--junitxml``); otherwise library objects
register with nothing and the run costs what plain pytest costs.

On the controller (the only process without xdist) the session folds test reports into
:class:`~cnnaudit.results.RunResults`, rewrites the outputs now and then while the run goes on
(checkpoints, so that even a killed run leaves a report of what finished) and once more at the end.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from cnnaudit import report
from cnnaudit.baseline import Baseline, BaselineLookup, check_writable, environment_differences, save
from cnnaudit.environment import check_device_option, describe, device_identity, header_line, torch_device
from cnnaudit.report.folder import ReportFolder
from cnnaudit.report.overview import CORRECTIONS, markdown
from cnnaudit.results import RunResults

CHECKPOINT_SECONDS = 30.0
"""Least time between two checkpoint writes; also at most 10% of the run goes to checkpoints."""


@dataclass(frozen=True)
class RunOptions:
    """The resolved options (absolute paths)."""

    report: Path | None = None
    json: Path | None = None
    device: str = "auto"
    baseline: Path | None = None
    save_baseline: Path | None = None
    summary: Path | None = None
    correction: str | None = None
    junit: bool = False
    run_images: Path | None = None
    """This run's own image folder inside :attr:`image_dir` (set once the controller claimed it)."""

    def to_plain(self) -> dict[str, Any]:
        """The settings as strings (for xdist's ``workerinput``)."""
        return {f.name: str(v) if isinstance(v, Path) else v for f in fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> RunOptions:
        """Inverse of :meth:`to_plain`."""
        paths = {f.name for f in fields(cls) if f.name not in ("device", "junit", "correction")}
        return cls(**{k: Path(v) if k in paths and v is not None else v for k, v in plain.items()})

    @property
    def recording(self) -> bool:
        """Whether tests are recorded at all."""
        return any((self.report, self.json, self.baseline, self.save_baseline, self.summary, self.junit))

    @property
    def image_dir(self) -> Path | None:
        """The report's image folder: ``<report>_files`` next to the HTML (else the JSON) report."""
        anchor = self.report or self.json
        return anchor.with_name(anchor.stem + "_files") if anchor else None


def pick(command_line: str | None, ini: str | None, invocation_dir: Path, ini_dir: Path | None) -> tuple[str | None, Path]:
    """The command-line value if given, else the ini value, with the directory relative paths start from."""
    if command_line:
        return command_line, invocation_dir
    if ini:
        return ini, ini_dir or invocation_dir
    return None, invocation_dir


def settings_from(values: dict[str, tuple[str | None, Path]], junit: bool) -> RunOptions:
    """``RunOptions`` from ``{name: (value, base_dir)}`` as :func:`pick` returns them; ``ValueError`` on a bad device."""

    def path(name: str) -> Path | None:
        value, base = values[name]
        return (base / value).resolve() if value else None

    device = values["device"][0] or "auto"
    check_device_option(device)
    correction = (values["correction"][0] or "none").lower()
    if correction not in ("none", *CORRECTIONS):
        raise ValueError(f"--cnnaudit-correction={values['correction'][0]} is not a correction; use holm, bh or none")
    return RunOptions(
        report=path("report"),
        json=path("json"),
        device=device,
        baseline=path("baseline"),
        save_baseline=path("save_baseline"),
        summary=path("summary"),
        correction=None if correction == "none" else correction,
        junit=junit,
    )


class AuditSession:
    """The run's state in one process (a worker records; the controller also collects and writes)."""

    def __init__(self, settings: RunOptions, *, controller: bool, worker_id: str | None) -> None:
        if settings.save_baseline:
            check_writable(settings.save_baseline)  # at the start, not after the whole run
        self.settings = settings
        self.controller = controller
        self.worker_id = worker_id
        self.baseline = Baseline(settings.baseline) if settings.baseline else None
        self.lookups: dict[str, BaselineLookup] = {}
        self.order: dict[str, int] = {}
        self.started = time.time()
        self.outputs: dict[str, Any] = {}
        self.checkpoint_error: str | None = None
        self.results = RunResults()
        self._device: str | None = None
        self._environment: dict | None = None
        self._last_write = float("-inf")
        self._write_cost = 0.0
        self._folder: ReportFolder | None = None
        self.split: dict | None = None
        """``{"group", "splits"}`` when pytest-split runs one group of the suite (recorded for ``cnnaudit merge``)."""

    def claim_image_folder(self) -> None:
        """Controller: lock the report's image folder and make this run's own folder in it
        (``ValueError`` when another run holds it or cnnaudit did not make it)."""
        if self.settings.image_dir is None or not self.settings.recording:
            return
        self._folder = ReportFolder(self.settings.image_dir)
        self.settings = replace(self.settings, run_images=self._folder.claim())

    def release_image_folder(self) -> None:
        """Controller, at the end: let other runs use the image folder."""
        if self._folder is not None:
            self._folder.release()

    # ---- devices -------------------------------------------------------------------------------------
    def torch_device(self) -> Any:
        """The ``torch.device`` audits in this process run on (``ValueError`` if it is not available)."""
        return torch_device(self.settings.device, self.worker_id)

    @property
    def device(self) -> str:
        """This process' audit device as a string; ``cpu`` if the requested one is not available."""
        if self._device is None:
            try:
                self._device = str(self.torch_device())
            except ValueError:
                self._device = "cpu"
        return self._device

    def header(self) -> list[str]:
        """pytest header lines: torch, CUDA, GPU and device; then where the outputs go."""
        try:
            device = str(self.torch_device())
        except ValueError as error:
            device = f"{self.settings.device} (unavailable: {error})"
        lines = [header_line(describe(), device)]
        s = self.settings
        named = (("report", s.report), ("json", s.json), ("save baseline", s.save_baseline))
        outputs = [f"{name} {path}" for name, path in named if path]
        if self.baseline is not None:
            state = "" if self.baseline.exists else " (missing)"
            if self.baseline.summary_only:
                state = (f" ({self.baseline.summary_only} Scores stored as summaries only, an older format: "
                         "re-record with --cnnaudit-save-baseline to compare them per image)")
            outputs.append(f"baseline {self.baseline.path}{state}")
        if outputs:
            lines.append("cnnaudit outputs: " + ", ".join(outputs))
        return lines

    # ---- recording (every process) ------------------------------------------------------------------
    def recorder(self, nodeid: str) -> Any:
        """A fresh recorder for test ``nodeid`` (the plugin asks only when the run records)."""
        from cnnaudit.records import EvidenceRecorder

        return EvidenceRecorder(nodeid, self.settings.run_images, index=self.order.get(nodeid, -1), device=self.device,
                                per_image=self.settings.save_baseline is not None)

    def finish_test(self, recorder: Any) -> dict:
        """The recorder's evidence, with the baseline entries of its Scores and, as ``baseline_recorded``,
        the keys whose ``baseline(...)`` was answered from this run's recording."""
        baseline = self.baseline
        evidence = recorder.finish(lambda key: baseline.entry(recorder.nodeid, key) if baseline else None)
        lookup = self.lookups.pop(recorder.nodeid, None)
        evidence["baseline_recorded"] = lookup.recorded if lookup is not None else []
        return evidence

    def baseline_lookup(self, nodeid: str, recorder: Any) -> BaselineLookup:
        """The ``baseline`` fixture's callable for test ``nodeid``."""

        def environment(subject: object) -> dict:
            return device_identity(getattr(subject, "device", None) or self.device)

        key_of = recorder.key_of if recorder is not None else (lambda scores: str(scores.name))
        lookup = BaselineLookup(self.baseline, nodeid, key_of, environment, saving_to=self.settings.save_baseline)
        if recorder is not None:
            self.lookups[nodeid] = lookup  # finish_test collects what it answered from the recording
        return lookup

    # ---- collecting (controller) ----------------------------------------------------------------------
    def add_report(self, test_report: Any) -> None:
        """Fold a test report in; write a checkpoint when a test finished and enough time passed.

        A checkpoint that fails does not stop the run: the error is shown in the terminal summary and
        the final write at the end of the session tries again (and fails loudly).
        """
        if self.results.add(test_report) is None or not self._checkpoint_due():
            return
        try:
            self.write(interrupted=False, in_progress=True)
        except Exception as error:  # noqa: BLE001 - see the docstring
            self.checkpoint_error = f"{type(error).__name__}: {error}"
            self._last_write = time.monotonic()

    def add_collect_error(self, collect_report: Any) -> None:
        self.results.add_collect_error(collect_report)

    def _checkpoint_due(self) -> bool:
        has_outputs = self.settings.report or self.settings.json
        return bool(has_outputs) and time.monotonic() - self._last_write >= max(CHECKPOINT_SECONDS, 10 * self._write_cost)

    def finish(self, exitstatus: int) -> None:
        """Write the final outputs (and the baseline, if asked). A run that pytest did not end normally
        (``exitstatus`` other than tests passed, failed or none collected) is written as interrupted."""
        interrupted = exitstatus not in (0, 1, 5)  # pytest.ExitCode OK, TESTS_FAILED, NO_TESTS_COLLECTED
        self.write(interrupted=interrupted, in_progress=False)
        if self.settings.save_baseline:
            counts = save(self.settings.save_baseline, [(e["nodeid"], e["outcome"], e["evidence"]) for e in self.results.finished])
            self.outputs["baseline"] = (self.settings.save_baseline, *counts)

    def write(self, *, interrupted: bool, in_progress: bool) -> None:
        """Write the HTML and JSON reports of what finished so far; at the end (not ``in_progress``) also
        the Markdown summary, appended to ``$GITHUB_STEP_SUMMARY`` too when that is set."""
        s = self.settings
        summary = s.summary if not in_progress else None
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY") if summary else None
        if not (s.report or s.json or summary):
            return
        begin = time.monotonic()
        doc = report.document(
            self.results,
            environment=self.environment(),
            interrupted=interrupted,
            in_progress=in_progress,
            image_dir=None if s.run_images is None else str(s.run_images),
            baseline=self.baseline_info(),
            started=self.started,
            finished=time.time(),
            correction=s.correction,
            split=self.split,
        )
        if s.json:
            report.write_json(s.json, doc)
            self.outputs["json"] = (s.json, len(doc["tests"]))
        if s.report:
            self.outputs["report"] = (s.report, report.write_html(s.report, doc))
        if summary:
            with report.atomic_open(summary) as handle:
                handle.write(markdown(doc, s.report, summary.parent))
            self.outputs["summary"] = summary
        if step_summary:
            with open(step_summary, "a", encoding="utf-8") as handle:  # GitHub's file: other steps append to it too
                handle.write(markdown(doc, s.report, None) + "\n")
        if self._folder is not None:
            self._folder.commit()  # the report files point at this run's images now; older runs' can go
        self._last_write = time.monotonic()
        self._write_cost = self._last_write - begin

    def environment(self) -> dict:
        """This machine's environment and the audit device (computed once)."""
        if self._environment is None:
            self._environment = {**describe(), "device": self.device}
        return self._environment

    def baseline_info(self) -> dict | None:
        """The baseline file and how the settings it was recorded in differ from this run's."""
        if self.baseline is None:
            return None
        current = device_identity(self.device)
        differences = {
            line for test in self.baseline.tests.values() for line in environment_differences(test.get("environment"), current)
        }
        return {"path": str(self.baseline.path), "exists": self.baseline.exists, "differences": sorted(differences)}

    def summary_lines(self) -> list[str]:
        """Terminal summary: where the outputs went, and a warning when thumbnails passed the budget."""
        lines = [f"cnnaudit: WARNING a checkpoint report failed: {self.checkpoint_error}"] if self.checkpoint_error else []
        if "report" in self.outputs:
            path, stats = self.outputs["report"]
            lines.append(f"cnnaudit: HTML report {path} ({stats['bytes'] / 2**20:.1f} MB, {stats['images']} images)")
            if stats["linked"]:
                lines.append(
                    f"cnnaudit: WARNING the report passed its inline size budget; {stats['linked']} thumbnails are linked "
                    f"from {self.settings.image_dir} instead of embedded (keep that folder next to the report)"
                )
        if "json" in self.outputs:
            lines.append(f"cnnaudit: JSON report {self.outputs['json'][0]}")
        if "summary" in self.outputs:
            lines.append(f"cnnaudit: Markdown summary {self.outputs['summary']}")
        if "baseline" in self.outputs:
            path, stored, kept = self.outputs["baseline"]
            answered = self.answered_from_recording()
            also = f"; baseline(...) answered from this recording for {answered} Scores with no stored per-image entry"
            old = f", {kept} kept from the file (not re-measured by this run)" if kept else ""
            lines.append(f"cnnaudit: baseline {path} ({stored} Scores stored{old}{also if answered else ''})")
        return lines

    def answered_from_recording(self) -> int:
        """How many Scores (test, key) had their ``baseline(...)`` answered from this run's own recording."""
        return sum(len((e["evidence"] or {}).get("baseline_recorded", [])) for e in self.results.finished)
