"""The current-test evidence context.

Library objects (``Heatmaps``, ``Scores``, ``Visualizations``, classic views) call
:func:`notify` when they are created. Inside a test run by the cnnaudit pytest plugin a
recorder is active and turns them into evidence for that test; outside pytest nothing is
active and :func:`notify` does nothing, so the library behaves as an ordinary library.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Protocol


class Recorder(Protocol):
    """What the plugin's per-test recorder offers to library code."""

    def observe(self, obj: Any) -> None: ...


_current: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("cnnaudit_recorder", default=None)


def current() -> Recorder | None:
    """The recorder of the running test, or ``None`` outside a recorded test."""
    return _current.get()


def notify(obj: Any) -> None:
    """Hand a freshly created result object to the running test's recorder, if any."""
    recorder = _current.get()
    if recorder is not None:
        recorder.observe(obj)


@contextlib.contextmanager
def recording(recorder: Recorder) -> Iterator[Recorder]:
    """Make ``recorder`` the current one for the duration of the block."""
    token = _current.set(recorder)
    try:
        yield recorder
    finally:
        _current.reset(token)


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Record nothing inside the block (e.g. while a session-scoped fixture builds shared objects)."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)
