"""The cnnaudit pytest plugin: options, fixtures and hooks. The work is done in ``cnnaudit.session``.

Registered through the ``pytest11`` entry point. Importing it imports neither torch nor numpy. The
module itself holds the options, the fixtures, the header and the terminal line that
:mod:`cnnaudit.progress` draws on (``--cnnaudit-progress``); the per-test hooks live on
:class:`_Recording`, registered only when the run records something, and the outputs on
:class:`_Collector`, registered on the controller of such a run. A run that records nothing costs
what plain pytest costs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Iterator

import pytest

from cnnaudit import evidence as _evidence
from cnnaudit import progress as _progress
from cnnaudit.session import AuditSession, RunOptions, pick, settings_from

_OPTIONS = {
    "report": ("PATH", "write the HTML report with the evidence behind every verdict to PATH"),
    "json": ("PATH", "write the run's results and evidence as JSON to PATH"),
    "device": ("DEVICE", "device audits run on: auto (CUDA when available), cpu, cuda or cuda:N (default: auto)"),
    "baseline": ("PATH", "baseline file the `baseline` fixture compares against"),
    "save_baseline": ("PATH", "store every recorded Scores, per image, as a baseline in PATH"),
    "summary": ("PATH", "write a Markdown summary of the run (failed gates first) to PATH; also appended to "
                        "$GITHUB_STEP_SUMMARY when that is set"),
    "correction": ("METHOD", "adjust the run's comparison p-values for multiple testing: holm or bh "
                             "(Benjamini-Hochberg), shown beside the raw ones (default: none)"),
}
_NOT_RUNNING = ("collectonly", "setuponly", "setupplan", "showfixtures", "show_fixtures_per_test", "markers", "help", "version")
"""Options with which pytest runs no test: nothing is recorded and no report is (over)written."""
_SESSION = pytest.StashKey[AuditSession]()
_PREVIOUS_LINE = pytest.StashKey[_progress.Line]()
_RECORDER = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cnnaudit", "cnnaudit (audits of convolutional image models)")
    for name, (metavar, text) in _OPTIONS.items():
        group.addoption(f"--cnnaudit-{name.replace('_', '-')}", dest=f"cnnaudit_{name}", metavar=metavar, default=None,
                        help=f"{text}; ini: cnnaudit_{name}")
        parser.addini(f"cnnaudit_{name}", help=text, default="")
    progress = (f"show the progress of long work (maximising many units, training) on one updating line: auto "
                f"(on a terminal, not under -q or in CI), on or off; wins over ${_progress.ENV} (default: auto)")
    group.addoption("--cnnaudit-progress", dest="cnnaudit_progress", metavar="auto|on|off", default=None,
                    help=f"{progress}; ini: cnnaudit_progress")
    parser.addini("cnnaudit_progress", help=progress, default="")


def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    try:
        line = _progress_line(config, on_worker=workerinput is not None)
        if workerinput is not None and "cnnaudit" in workerinput:
            settings = RunOptions.from_plain(workerinput["cnnaudit"])
        else:
            ini_dir = config.inipath.parent if config.inipath else None
            here = config.invocation_params.dir
            values = {
                name: pick(config.getoption(f"cnnaudit_{name}"), config.getini(f"cnnaudit_{name}"), here, ini_dir)
                for name in _OPTIONS
            }
            settings = settings_from(values, junit=bool(config.getoption("xmlpath", None)))
            if any(config.getoption(name, False) for name in _NOT_RUNNING):
                settings = RunOptions(device=settings.device)
        session = AuditSession(settings, controller=workerinput is None, worker_id=(workerinput or {}).get("workerid"))
        if session.controller:
            session.claim_image_folder()
    except ValueError as error:
        raise pytest.UsageError(f"cnnaudit: {error}") from None
    config.stash[_SESSION] = session
    config.stash[_PREVIOUS_LINE] = _progress.install(line)
    if settings.recording:
        config.pluginmanager.register(_Recording(session), "cnnaudit-recording")
        if session.controller:
            config.pluginmanager.register(_Collector(session), "cnnaudit-collector")


def pytest_unconfigure(config: pytest.Config) -> None:
    previous = config.stash.get(_PREVIOUS_LINE, None)
    if previous is not None:
        _progress.install(previous)


def _progress_line(config: pytest.Config, *, on_worker: bool) -> _progress.Line:
    """The terminal line :mod:`cnnaudit.progress` draws on during this run: the terminal reporter's,
    written with capture suspended (so it reaches the terminal, not the test's captured output).
    ``--cnnaudit-progress`` wins over ``$CNNAUDIT_PROGRESS``, which wins over the ini key. Silent on
    xdist workers (their output never reaches the terminal) and without pytest's terminal reporter."""
    sources = ((config.getoption("cnnaudit_progress"), "--cnnaudit-progress={}"),
               (os.environ.get(_progress.ENV), f"{_progress.ENV}={{}}"),
               (config.getini("cnnaudit_progress"), "cnnaudit_progress = {}"))
    mode = "auto"
    for value, where in sources:
        if value is not None and value.strip():
            mode = _progress.parse_mode(value) or ""
            if not mode:
                raise ValueError(f"{where.format(value)} is not a progress setting; use auto, on or off")
            break
    if on_worker:
        return _progress.Line(lambda text: None, isatty=lambda: False, mode="off")
    plugins = config.pluginmanager  # looked up at use: the terminal reporter is configured after this plugin

    def terminal() -> Any:
        return plugins.get_plugin("terminalreporter")

    def write(text: str) -> None:
        if terminal() is not None:
            capture = plugins.get_plugin("capturemanager")
            with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
                config.get_terminal_writer().write_raw(text, flush=True)  # raw: pytest's current line stays its own

    def width() -> int:
        return config.get_terminal_writer().fullwidth if terminal() is not None else 0

    def column() -> int:
        return config.get_terminal_writer().width_of_current_line if terminal() is not None else 0

    return _progress.Line(write, isatty=lambda: bool(getattr(terminal(), "isatty", False)), width=width, column=column,
                          mode=mode, quiet=config.get_verbosity() < 0)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: hand the controller's resolved settings to each worker."""
    node.workerinput["cnnaudit"] = node.config.stash[_SESSION].settings.to_plain()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return config.stash[_SESSION].header()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test's index in the whole collection, before ``-k``, ``--deselect`` or pytest-split drop any:
    the report's order, the same in every shard of a split suite (``cnnaudit merge`` relies on it)."""
    config.stash[_SESSION].order = {item.nodeid: i for i, item in enumerate(items)}


def pytest_collection_finish(session: pytest.Session) -> None:
    audit = session.config.stash[_SESSION]
    if audit.controller and not _runs_on_workers(session.config):
        audit.results.collected = len(session.items)


def _runs_on_workers(config: pytest.Config) -> bool:
    """Whether xdist distributes this run (the controller then collects nothing itself)."""
    return bool(getattr(config.option, "dist", "no") != "no" and getattr(config.option, "numprocesses", None))


class _Recording:
    """Registered on every process (controller and xdist workers) only when the run records: opens a
    recorder around each test (which also takes the gates the audit makes: :mod:`cnnaudit.gates`),
    keeps fixtures shared between tests out of any test's evidence, and hands each test's evidence to
    its report (the pytest-mpl way: a run that records nothing has none of these hooks)."""

    def __init__(self, session: AuditSession) -> None:
        self.session = session

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Iterator[None]:
        recorder = self.session.recorder(item.nodeid)
        item.stash[_RECORDER] = recorder
        with _evidence.recording(recorder):
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        with _evidence.recording(item.stash[_RECORDER]):  # set by our setup, which ran: the call runs only after it
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Iterator[Any]:
        """Objects built by fixtures shared between tests are not evidence of the first test that asked."""
        if fixturedef.scope == "function":
            return (yield)
        with _evidence.paused():
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
        recorder = item.stash.get(_RECORDER, None)
        last_phase = call.when == "call" or (call.when == "setup" and call.excinfo is not None)
        if recorder is None or not last_phase:
            return (yield)
        from cnnaudit.summaries import junit_properties

        payload = self.session.finish_test(recorder)
        del item.stash[_RECORDER]  # items live as long as the session: keep no evidence objects on them
        item.user_properties.extend(junit_properties(payload))
        report = yield
        report.cnnaudit = payload  # travels with the report to the xdist controller
        return report


class _Collector:
    """Registered on the controller when recording is on: folds reports in and writes the outputs.

    On SIGTERM (a CI job cancelled, a container stopped) it writes a checkpoint of what finished, then
    lets the signal end the process as before: the last checkpoint may otherwise be 30 s old."""

    def __init__(self, session: AuditSession) -> None:
        self.session = session
        self._previous_sigterm: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, self._previous_sigterm)
        with contextlib.suppress(Exception):  # dying anyway: a failed write must not hide the signal
            self.session.write(interrupted=True, in_progress=True)
        os.kill(os.getpid(), signum)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
        self.session.release_image_folder()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.session.add_report(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.session.add_collect_error(report)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """xdist: every worker collects the same tests; their number is what the run must report."""
        self.session.results.collected = len(ids)

    def pytest_sessionfinish(self, exitstatus: int) -> None:
        self.session.finish(int(exitstatus))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    for line in config.stash[_SESSION].summary_lines():
        terminalreporter.write_line(line, yellow="WARNING" in line)


# ---- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def cnnaudit_device(request: pytest.FixtureRequest) -> Any:
    """The ``torch.device`` to audit on (``--cnnaudit-device``; under xdist each worker takes its own GPU)."""
    problem = None
    try:
        device = request.config.stash[_SESSION].torch_device()
    except ValueError as error:
        problem = f"cnnaudit: {error}"
    if problem is not None:  # outside the except block, so no chained traceback is printed
        pytest.fail(problem, pytrace=False)
    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device)  # so "cuda" and "auto" elsewhere in this worker mean its own GPU
    return device


@pytest.fixture(name="evidence")
def evidence_fixture(request: pytest.FixtureRequest) -> Any:
    """This test's recorder: ``evidence.image(name, array, caption=...)``, ``evidence.note(text)``."""
    recorder = request.node.stash.get(_RECORDER, None)
    if recorder is None:
        from cnnaudit.records import EvidenceRecorder

        recorder = EvidenceRecorder(request.node.nodeid, None)  # nothing is written: no output was asked for
    return recorder


@pytest.fixture
def baseline(request: pytest.FixtureRequest) -> Any:
    """``baseline(scores)`` -> the stored summary of the same Scores of this test (``--cnnaudit-baseline``);
    in a run that saves a baseline, the Scores' own summary when none is stored (``BaselineRecordingWarning``)."""
    return request.config.stash[_SESSION].baseline_lookup(request.node.nodeid, request.node.stash.get(_RECORDER, None))
