"""The numbers an audit gates on, and the gates (comparisons) an audit makes with them.

``Scores.mean()``, ``.quantile(q)``, ``.ci().low``, ``compare(...).mean``, ``.p_value``... return a
:class:`Statistic`: a ``float`` that also knows which object it came from and by which expression.
Inside a recorded test, each comparison the audit makes with one (``assert mass.ci().low >= 0.5``,
``abs(gap.mean) < 0.05``) is told to the test's recorder with its threshold and whether it held,
so every gate is reported, passed or failed, with its margin. Each comparison of a compound assert
(``a < 0.02 or p > 0.01``) is told on its own, with its own result: nothing is inferred about how
they combine. Comparisons made inside cnnaudit itself are not gates and are not told.

Arithmetic on a ``Statistic`` gives a plain float (``baseline(mass).mean() - 0.02`` is a threshold,
not a statistic), except ``abs()`` and unary minus, which keep the source (``abs(mean)``).
"""

from __future__ import annotations

import math
import operator
import sys
from numbers import Real
from typing import Callable, Protocol

from cnnaudit import evidence

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}


class GateRecorder(Protocol):
    """What a recorder offers to take gates (the per-test :class:`~cnnaudit.records.EvidenceRecorder` does)."""

    def gated(self, statistic: Statistic, op: str, threshold: float, holds: bool) -> None: ...


class Statistic(float):
    """A float computed from ``owner`` (a ``Scores`` or a comparison) by ``expression`` (``"ci().low"``)."""

    __slots__ = ("owner", "expression")
    owner: object
    expression: str

    def __new__(cls, value: float, owner: object, expression: str) -> Statistic:
        self = super().__new__(cls, value)
        self.owner = owner
        self.expression = expression
        return self

    def __reduce__(self) -> tuple:
        return (float, (float(self),))  # pickled and copied as the number it is

    def __repr__(self) -> str:
        return float.__repr__(self)

    def __abs__(self) -> Statistic:
        return Statistic(abs(float(self)), self.owner, f"abs({self.expression})")

    def __neg__(self) -> Statistic:
        return Statistic(-float(self), self.owner, f"-{self.expression}")

    __hash__ = float.__hash__

    def __lt__(self, other: object) -> bool:
        return self._compare("<", other)

    def __le__(self, other: object) -> bool:
        return self._compare("<=", other)

    def __gt__(self, other: object) -> bool:
        return self._compare(">", other)

    def __ge__(self, other: object) -> bool:
        return self._compare(">=", other)

    def __eq__(self, other: object) -> bool:  # type: ignore[override]
        return self._compare("==", other)

    def __ne__(self, other: object) -> bool:  # type: ignore[override]
        return self._compare("!=", other)

    def _compare(self, op: str, other: object) -> bool:
        if isinstance(other, Statistic):
            other = float(other)  # told once, from the left side, not again by the other's reflected method
        result = COMPARISONS[op](float(self), other)
        if isinstance(other, Real) and not isinstance(other, bool) and isinstance(result, bool):
            recorder = evidence.current()
            gated = getattr(recorder, "gated", None)
            if gated is not None and not _called_by_cnnaudit():
                gated(self, op, float(other), result)
        return result


def margin(op: str, actual: float, threshold: float) -> float | None:
    """How far inside its threshold a statistic lies (negative: how far outside); ``None`` for ``==``, ``!=``."""
    if op in (">", ">="):
        value = actual - threshold
    elif op in ("<", "<="):
        value = threshold - actual
    else:
        return None
    return value if math.isfinite(value) else None


def higher_is_better(ops: list[str]) -> bool | None:
    """Which way a statistic gated by ``ops`` should move: up (``>=``), down (``<=``), or ``None`` (no gate, or both)."""
    ways = {op[0] == ">" for op in ops if op[0] in "<>"}
    return ways.pop() if len(ways) == 1 else None


def _called_by_cnnaudit() -> bool:
    """Whether the comparison is made by cnnaudit's own code (three frames up: _compare, __lt__, caller)."""
    name = sys._getframe(3).f_globals.get("__name__", "")
    return name == "cnnaudit" or name.startswith("cnnaudit.")
