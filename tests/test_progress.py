"""cnnaudit.progress: one updating terminal line for long work, drawn only where a person watches.

The plugin's side (pytest's terminal, ``-q``, capture, ``--cnnaudit-progress``) is in test_plugin.py."""

from __future__ import annotations

import io
import threading

import pytest
import torch

import cnnaudit as ca
from cnnaudit import progress as progress_module
from cnnaudit.demo import models as demo_models
from cnnaudit.demo import robustness
from cnnaudit.progress import Line, Progress, duration, parse_mode, progress


class Terminal(io.StringIO):
    """A text stream that says it is a terminal (or not)."""

    def __init__(self, tty: bool = True) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class Clock:
    """A clock that moves only when told (``tick``), or by ``step`` at each reading."""

    def __init__(self, step: float = 0.0) -> None:
        self.now, self.step = 100.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def screen(raw: str, before: str = "") -> str:
    """What a terminal line shows after ``before`` then ``raw`` (carriage returns, backspaces, overwrites)."""
    cells, column = list(before), len(before)
    for char in raw:
        assert char != "\n", "progress never starts a new line"
        if char == "\r":
            column = 0
        elif char == "\b":
            column = max(0, column - 1)
        else:
            cells[column:column + 1] = [char]
            column += 1
    return "".join(cells).rstrip()


def draws(raw: str) -> list[str]:
    """Each state of the line, one per write that starts with a carriage return."""
    return [screen("\r" + part) for part in raw.split("\r") if part.strip()]


@pytest.fixture(autouse=True)
def _no_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests set the environment they mean: a CI job's ``CI`` or a user's setting must not leak in."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(progress_module.ENV, raising=False)


def work(line: Line, clock: Clock, n: int = 4, every: float = 0.3, what: str = "work") -> None:
    with Progress(n, what, unit="items", line=line) as bar:
        for _ in range(n):
            clock.tick(every)
            bar.advance()


# ---- the line --------------------------------------------------------------------------------------
def test_on_a_terminal_the_line_updates_in_place_and_is_erased_at_the_end() -> None:
    stream, clock = Terminal(), Clock()
    work(Line.stream(stream, clock=clock), clock)
    raw = stream.getvalue()
    assert raw.startswith("\r") and "\n" not in raw
    assert draws(raw)[:4] == ["work: 1/4 items, 0s, ETA 1s", "work: 2/4 items, 1s, ETA 1s",
                              "work: 3/4 items, 1s, ETA 0s", "work: 4/4 items, 1s"]
    assert raw.endswith("\r") and screen(raw) == ""  # nothing of it stays on the terminal


@pytest.mark.parametrize("case", ["not a tty", "CI", "quiet", "forced off"])
def test_nothing_is_written_off_a_terminal_in_ci_under_quiet_or_when_turned_off(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream, clock = Terminal(tty=case != "not a tty"), Clock()
    if case == "CI":
        monkeypatch.setenv("CI", "true")
    if case == "forced off":
        monkeypatch.setenv("CNNAUDIT_PROGRESS", "0")
    line = Line.stream(stream, clock=clock, quiet=case == "quiet")
    assert not line.wanted()
    work(line, clock)
    assert stream.getvalue() == ""


@pytest.mark.parametrize("value", ["1", "on", "TRUE", "yes"])
def test_the_environment_variable_forces_it_on_in_ci_under_quiet_and_off_a_terminal(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("CNNAUDIT_PROGRESS", value)
    stream, clock = Terminal(tty=False), Clock()
    work(Line.stream(stream, clock=clock, quiet=True), clock)
    assert "work: 4/4 items" in stream.getvalue()


def test_an_explicit_mode_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNAUDIT_PROGRESS", "1")
    assert not Line.stream(Terminal(), mode="off").wanted()
    monkeypatch.setenv("CNNAUDIT_PROGRESS", "0")
    assert Line.stream(Terminal(tty=False), mode="on").wanted()
    monkeypatch.setenv("CNNAUDIT_PROGRESS", "whatever")  # not a setting: auto
    assert Line.stream(Terminal()).wanted() and not Line.stream(Terminal(tty=False)).wanted()
    for ci in ("", "0", "false"):
        monkeypatch.setenv("CI", ci)
        assert Line.stream(Terminal()).wanted()
    with pytest.raises(ValueError, match="auto, on, off"):
        Line.stream(Terminal(), mode="sometimes")


def test_settings_and_durations_read_as_written() -> None:
    texts = ("1", " On ", "no", "", None, "auto", "2")
    assert [parse_mode(text) for text in texts] == ["on", "on", "off", "auto", "auto", "auto", None]
    assert [duration(s) for s in (0.2, 7.6, 125, 3725)] == ["0s", "8s", "2m05s", "1h02m"]


def test_redrawn_at_most_five_times_a_second_and_not_at_all_for_quick_work() -> None:
    stream, clock = Terminal(), Clock()
    line = Line.stream(stream, clock=clock)
    work(line, clock, n=15, every=0.01)  # 0.15 s of work: finished before the first draw
    assert stream.getvalue() == ""
    work(line, clock, n=300, every=0.01)  # 3 s of work, 300 advances
    assert 12 <= len(draws(stream.getvalue())) <= 15
    assert screen(stream.getvalue()) == ""


def test_after_text_on_the_line_it_is_appended_and_erased_back_to_that_text() -> None:
    """Under pytest the line already holds ``test_a.py ..``: progress goes after it, with backspaces."""
    stream, clock = Terminal(), Clock()
    before = "test_a.py .."
    line = Line.stream(stream, clock=clock, column=lambda: len(before))
    with Progress(4, "work", line=line) as bar:
        clock.tick(0.3)
        bar.advance()
        assert screen(stream.getvalue(), before) == "test_a.py .. work: 1/4, 0s, ETA 1s"
        clock.tick(10)
        bar.advance()
        assert screen(stream.getvalue(), before) == "test_a.py .. work: 2/4, 10s, ETA 10s"
    assert "\r" not in stream.getvalue() and screen(stream.getvalue(), before) == before


def test_nested_work_shares_one_line_and_the_outer_stays_when_the_inner_ends() -> None:
    stream, clock = Terminal(), Clock()
    line = Line.stream(stream, clock=clock)
    with Progress(2, "seeds", unit="models", line=line) as outer:
        work(line, clock, n=2, what="train")
        assert draws(stream.getvalue())[-2:] == ["seeds: 0/2 models, 1s | train: 2/2 items, 1s", "seeds: 0/2 models, 1s"]
        outer.advance()
    assert screen(stream.getvalue()) == ""


def test_the_text_fits_the_terminal_width() -> None:
    stream, clock = Terminal(), Clock()
    line = Line.stream(stream, clock=clock, width=lambda: 30)
    work(line, clock, what="a very long description of the work")
    assert draws(stream.getvalue())[0] == "a very long description of th"
    assert max(len(state) for state in draws(stream.getvalue())) == 29


def test_outside_pytest_progress_goes_to_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    stream, clock = Terminal(), Clock(step=0.3)
    monkeypatch.setattr("sys.stderr", stream)
    previous = progress_module.install(Line.stream(clock=clock))  # the module's default: sys.stderr at each write
    try:
        with progress(2, "work") as bar:
            bar.advance()
            bar.advance()
    finally:
        assert progress_module.install(previous).clock is clock
    assert "work: 2/2" in stream.getvalue() and screen(stream.getvalue()) == ""


def test_a_disabled_reporter_only_counts_and_other_threads_stay_silent() -> None:
    stream, clock = Terminal(tty=False), Clock(step=1)
    bar = Progress(10, "work", line=Line.stream(stream, clock=clock))
    bar.advance(3)
    assert (bar.enabled, bar.done, clock.now) == (False, 3, 100.0)  # not even the clock was read
    bar.close()
    on = Line.stream(stream, clock=clock, mode="on")
    thread = threading.Thread(target=lambda: work(on, clock))
    thread.start()
    thread.join()
    assert stream.getvalue() == ""


def test_a_terminal_that_goes_away_stops_the_line_not_the_work() -> None:
    clock = Clock()

    def broken(text: str) -> None:
        raise OSError("terminal closed")

    line = Line(broken, isatty=lambda: True, clock=clock)
    with Progress(3, "work", line=line) as bar:
        clock.tick(1)
        bar.advance()
        assert not bar.enabled
        bar.advance()
    assert bar.done == 2
    work(line, Clock())  # the line is usable again for later work


# ---- where the library reports ---------------------------------------------------------------------
@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> Terminal:
    """Progress forced on into a terminal whose clock moves a second per reading: every advance draws."""
    stream = Terminal()
    monkeypatch.setattr(progress_module, "_current", Line.stream(stream, clock=Clock(step=1.0), mode="on"))
    return stream


def test_maximising_many_units_reports_unit_steps(tiny_cnn: torch.nn.Module, watched: Terminal) -> None:
    subject = ca.Subject(tiny_cnn, device="cpu")
    subject.maximize("features.2", "all", steps=3, size=16, batch_size=4, ascent="annealed")  # batches of 4 and 2
    states = draws(watched.getvalue())
    counts = [state.split(": ")[1].split(" ")[0] for state in states]
    assert states[0].startswith("maximize features.2, 6 units: 4/18 unit steps")
    assert counts == ["4/18", "8/18", "12/18", "14/18", "16/18", "18/18"]
    assert screen(watched.getvalue()) == ""
    # the default runs annealed and plain ascent, and channels both leave off climb their centre: more steps
    subject.maximize("features.2", "all", steps=3, size=16, batch_size=4)
    states = draws(watched.getvalue())[len(states):]
    done, total = (int(n) for n in states[-1].split(": ")[1].split(" ")[0].split("/"))
    assert states[0].startswith("maximize features.2, 6 units: 4/36 unit steps")
    assert done == total >= 36 and (total - 36) % 6 == 0


def test_training_reports_batches(watched: Terminal, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("CNNAUDIT_CACHE", str(tmp_path))
    tiny = demo_models.TrainSpec(n_train=48, epochs=2, batch_size=16, widths=(4, 4, 4, 4))
    demo_models.train_model("clean", train=tiny)
    states = draws(watched.getvalue())
    assert states[0].startswith("train clean (seed 0), 2 epochs: 1/6 batches")
    assert states[-1].startswith("train clean (seed 0), 2 epochs: 6/6 batches")
    assert screen(watched.getvalue()) == ""


def test_the_seeds_command_reports_models_with_their_training_on_the_same_line(
    watched: Terminal, monkeypatch: pytest.MonkeyPatch
) -> None:
    def train(variant: str, train: demo_models.TrainSpec) -> str:
        with progress(2, f"train {variant}") as bar:
            bar.advance(2)
        return variant

    monkeypatch.setattr(robustness, "released_tools_mass", lambda: None)
    monkeypatch.setattr(robustness, "train_model", train)
    monkeypatch.setattr(robustness, "figures", lambda model, released: {"model": model})
    runs = robustness.seed_figures([0, 1])
    assert runs == {"clean": [{"model": "clean"}] * 2, "biased": [{"model": "biased"}] * 2}
    states = draws(watched.getvalue())
    assert any(state.startswith("seeds: 0/4 models") and " | train clean: 2/2" in state for state in states)
    assert any(state.startswith("seeds: 3/4 models") and " | train biased: 2/2" in state for state in states)
    assert states[-1].startswith("seeds: 4/4 models")
    assert screen(watched.getvalue()) == ""
