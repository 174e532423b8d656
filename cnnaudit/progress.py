"""One updating terminal line for long work: maximising many units, training, the demo's seed runs.

::

    with progress(len(units) * steps, "maximize layer4", unit="unit steps") as bar:
        for ...:
            bar.advance(k)

The line reads ``maximize layer4: 1536/4096 unit steps, 6s, ETA 10s``; reporters opened while another
is open (a training inside the seeds command) share it: ``seeds: 3/16 models | train biased (seed 1):
200/1120 batches, 4s, ETA 18s``. It is redrawn at most every 0.2 s, first drawn only once the work has
run 0.2 s (quick work prints nothing), and erased when the outermost reporter closes, so nothing of
it stays in the terminal's scrollback.

Where it goes (:class:`Line`): outside pytest, ``sys.stderr`` (looked up at each write); under pytest
the plugin installs the terminal reporter's line, written with pytest's capture suspended (the way
live logging reaches the terminal), appended after what pytest has written on the current line
(``tests/test_a.py ..``) and erased back to it. Whether it is drawn is decided when a reporter opens:

* ``CNNAUDIT_PROGRESS=1`` (or ``on`` / ``true`` / ``yes``) draws it, ``=0`` (``off`` / ``false`` /
  ``no``) never does; under pytest ``--cnnaudit-progress=auto|on|off`` wins over the variable, and
  the ini key ``cnnaudit_progress`` counts when neither is given;
* otherwise (``auto``) only on a terminal (the stream is a TTY), outside CI (``CI`` set to anything
  but ``""``, ``0``, ``false``, ``no``) and, under pytest, not with ``-q``.

Reporters opened in another thread than the main one are silent. A disabled reporter costs an
addition per :meth:`Progress.advance`. Importing this module imports neither torch nor numpy.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from typing import Callable

ENV = "CNNAUDIT_PROGRESS"
MODES = ("auto", "on", "off")
INTERVAL = 0.2
"""Seconds between two draws of the line, and before the first one."""
_WORDS = {"": "auto", "auto": "auto", "1": "on", "on": "on", "true": "on", "yes": "on",
          "0": "off", "off": "off", "false": "off", "no": "off"}
_SEPARATOR = " | "


def parse_mode(text: str | None) -> str | None:
    """``auto`` / ``on`` / ``off`` for a setting's text (``1``, ``true``, ``no``, ... too); None when not one."""
    return _WORDS.get((text or "").strip().lower())


def env_mode() -> str:
    """The mode ``$CNNAUDIT_PROGRESS`` asks for; ``auto`` when unset or not a setting."""
    return parse_mode(os.environ.get(ENV)) or "auto"


def in_ci() -> bool:
    """Whether ``$CI`` says this runs in a CI job (GitHub Actions, GitLab, Travis, ... set ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


class Line:
    """Where progress is drawn: one terminal line, shared by the reporters open at the same time.

    * ``write(text)``: writes and flushes raw text (``\\r``, ``\\b``, spaces);
    * ``isatty()``: whether it reaches a terminal; ``width()``: the terminal's width;
    * ``column()``: how much of the current line was written by others (pytest's ``test_a.py ..``):
      the progress text goes after it and is erased back to it;
    * ``mode``: ``auto`` / ``on`` / ``off``, or None to read ``$CNNAUDIT_PROGRESS`` when a reporter opens;
    * ``quiet``: ``auto`` draws nothing (pytest's ``-q``);
    * ``clock`` and ``interval``: the throttle (``time.monotonic``, 0.2 s).
    """

    def __init__(self, write: Callable[[str], object], *, isatty: Callable[[], bool],
                 width: Callable[[], int] = lambda: 80, column: Callable[[], int] = lambda: 0,
                 mode: str | None = None, quiet: bool = False,
                 clock: Callable[[], float] = time.monotonic, interval: float = INTERVAL) -> None:
        if mode is not None and mode not in MODES:
            raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
        self._write, self.isatty, self.width, self.column = write, isatty, width, column
        self.mode, self.quiet, self.clock, self.interval = mode, quiet, clock, interval
        self._open: list[Progress] = []
        self._started = 0.0  # when the outermost open reporter started
        self._last = 0.0  # when the line was last drawn
        self._shown = 0  # columns the drawn text covers (0: nothing of ours on the line)
        self._start = 0  # the column it starts at

    @classmethod
    def stream(cls, stream: object = None, **options: object) -> Line:
        """A line on ``stream`` (default: ``sys.stderr`` as it is at each write), TTY rule from its ``isatty()``."""

        def current() -> object:
            return sys.stderr if stream is None else stream

        def write(text: str) -> None:
            target = current()
            target.write(text)  # type: ignore[attr-defined]
            target.flush()  # type: ignore[attr-defined]

        def isatty() -> bool:
            check = getattr(current(), "isatty", None)
            try:
                return bool(check and check())
            except (OSError, ValueError):  # a closed stream
                return False

        options.setdefault("width", lambda: shutil.get_terminal_size().columns)
        return cls(write, isatty=isatty, **options)  # type: ignore[arg-type]

    def wanted(self) -> bool:
        """Whether a reporter opening now draws (see the module docstring)."""
        mode = self.mode or env_mode()
        if mode != "auto":
            return mode == "on"
        return not self.quiet and not in_ci() and self.isatty()

    # ---- used by Progress ---------------------------------------------------------------------------
    def opened(self, reporter: Progress) -> None:
        if not self._open:
            self._started = self._last = reporter.started
        self._open.append(reporter)

    def closed(self, reporter: Progress) -> None:
        if reporter in self._open:
            self._open.remove(reporter)
        if not self._open:
            self._erase()
        elif self._shown:  # the inner text is on the line: show the outer reporters alone
            self._draw()

    def tick(self, now: float) -> None:
        if now - self._last >= self.interval and now - self._started >= self.interval:
            self._draw(now)

    def _draw(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self._last = now
        column = self.column()
        if self._shown and column != self._start:  # someone wrote on the line since: ours is gone
            self._shown = 0
        if not self._shown:
            self._start = column
        room = self.width() - self._start - 1
        text = (" " if self._start else "") + _SEPARATOR.join(r.text(now) for r in self._open)
        text = text[:room] if room >= 20 else ""
        self._emit(self._back() + text + " " * (self._shown - len(text)), max(self._shown, len(text)))

    def _erase(self) -> None:
        if self._shown:
            self._emit(self._back() + " " * self._shown + self._back(), 0)

    def _back(self) -> str:
        """Back to where the progress text starts."""
        return "\r" if self._start == 0 else "\b" * self._shown

    def _emit(self, text: str, shown: int) -> None:
        self._shown = shown
        try:
            self._write(text)
        except (OSError, ValueError):  # the terminal went away: stop drawing, never fail the work
            self._shown = 0
            for reporter in self._open:
                reporter._line = None
            self._open.clear()


class Progress:
    """One piece of long work: ``total`` things (None: unknown) of ``unit``, called ``what`` on the line.

    Open (counting, drawn when its line is wanted) from construction until :meth:`close` or the end
    of its ``with`` block. Use :func:`progress` to make one.
    """

    def __init__(self, total: int | None, what: str, *, unit: str = "", line: Line | None = None) -> None:
        self.total, self.what, self.unit, self.done = total, what, unit, 0
        line = line or _current
        self._line: Line | None = None
        self.started = 0.0
        if threading.current_thread() is threading.main_thread() and line.wanted():
            self._line = line
            self.started = line.clock()
            line.opened(self)

    @property
    def enabled(self) -> bool:
        """Whether this reporter draws (its line is wanted and it is still open)."""
        return self._line is not None

    def advance(self, n: int = 1) -> None:
        """``n`` more things done; redraws the line when the throttle allows."""
        self.done += n
        if self._line is not None:
            self._line.tick(self._line.clock())

    def close(self) -> None:
        """Done: leave the line (erased when no other reporter is open). Closing twice does nothing."""
        line, self._line = self._line, None
        if line is not None:
            line.closed(self)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def text(self, now: float) -> str:
        """``what: done/total unit, elapsed, ETA remaining``."""
        count = f"{self.done}" if self.total is None else f"{self.done}/{self.total}"
        elapsed = now - self.started
        parts = [f"{self.what}: {count}{' ' + self.unit if self.unit else ''}", duration(elapsed)]
        if self.total and 0 < self.done < self.total:
            parts.append(f"ETA {duration(elapsed / self.done * (self.total - self.done))}")
        return ", ".join(parts)


def duration(seconds: float) -> str:
    """``7s``, ``2m05s``, ``1h02m``."""
    seconds = max(0, int(seconds + 0.5))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress(total: int | None, what: str, *, unit: str = "") -> Progress:
    """A :class:`Progress` on the current line (stderr, or pytest's terminal under the plugin)."""
    return Progress(total, what, unit=unit)


def install(line: Line) -> Line:
    """Make ``line`` where progress goes; returns the previous one (to :func:`install` back)."""
    global _current
    previous, _current = _current, line
    return previous


_current: Line = Line.stream()
