"""Group columns that name the selections made from them.

``ImageSet.group("gender")`` is a :class:`GroupColumn`: a numpy array (one value per image) that
remembers its name. Comparing it with a value gives a :class:`Selection`, a boolean numpy array
that remembers the comparison, so ``scores.where(people.group("gender") == "female")`` is named
``mass_in(face)[gender=female]`` in reports rather than ``mass_in(face)[100/200]``.

Everything else behaves as plain numpy: any other operation (``&``, ``~``, ``np.sum``, slicing)
returns a plain array, so a label never outlives the exact comparison it describes.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import numpy as np

_SYMBOLS: dict[Callable[[Any, Any], Any], str] = {
    operator.eq: "=", operator.ne: "!=", operator.lt: "<", operator.le: "<=", operator.gt: ">", operator.ge: ">=",
}


class _Plain(np.ndarray):
    """An ndarray subclass whose ufuncs and slices give plain arrays (its extra attribute never spreads)."""

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        plain = tuple(np.asarray(x) if isinstance(x, _Plain) else x for x in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(np.asarray(x) if isinstance(x, _Plain) else x for x in kwargs["out"])
        return getattr(ufunc, method)(*plain, **kwargs)

    def __getitem__(self, index: Any) -> Any:
        return np.asarray(self)[index]

    def __reduce__(self) -> Any:  # pickles (xdist, multiprocessing) as a plain array
        return np.asarray(self).__reduce__()


class Selection(_Plain):
    """A boolean mask, one value per image, with the ``label`` of the comparison that made it (``gender=female``)."""

    label: str | None

    def __array_finalize__(self, obj: Any) -> None:
        self.label = getattr(obj, "label", None)

    def __new__(cls, mask: np.ndarray, label: str) -> Selection:
        selection = np.asarray(mask, dtype=bool).view(cls)
        selection.label = label
        return selection


class GroupColumn(_Plain):
    """One group value per image, named; comparing it with a value gives a :class:`Selection`."""

    name: str

    def __array_finalize__(self, obj: Any) -> None:
        self.name = getattr(obj, "name", "group")

    def __new__(cls, values: Any, name: str) -> GroupColumn:
        column = np.asarray(values).view(cls)
        column.name = name
        return column

    def _compare(self, op: Callable[[Any, Any], Any], other: Any) -> Any:
        result = op(np.asarray(self), other)
        if not np.isscalar(other) or not isinstance(result, np.ndarray) or result.shape != self.shape:
            return result
        return Selection(result, f"{self.name}{_SYMBOLS[op]}{other}")

    def __eq__(self, other: Any) -> Any:  # type: ignore[override]
        return self._compare(operator.eq, other)

    def __ne__(self, other: Any) -> Any:  # type: ignore[override]
        return self._compare(operator.ne, other)

    def __lt__(self, other: Any) -> Any:
        return self._compare(operator.lt, other)

    def __le__(self, other: Any) -> Any:
        return self._compare(operator.le, other)

    def __gt__(self, other: Any) -> Any:
        return self._compare(operator.gt, other)

    def __ge__(self, other: Any) -> Any:
        return self._compare(operator.ge, other)
