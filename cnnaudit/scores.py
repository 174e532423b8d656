"""``Scores`` (one value per image or unit), bootstrap intervals, and group comparison.

Undefined values (an empty region, an all-zero map) are NaN: they are counted (``n_undefined``) and
left out of every statistic. A statistic of a ``Scores`` with no defined value raises
:class:`UndefinedScoresError` rather than returning NaN: NaN compares False both ways, so
``assert not (s.mean() < 0.5)`` would silently pass on it.

Intervals are seeded bootstraps (``scipy.stats.bootstrap``, BCa, 9,999 resamples, seed 0), so a
verdict never changes between runs. With a single defined value the interval is ``(-inf, inf)``:
one image is no evidence, and any bound asserted on it fails. Identical values give ``(v, v)``.

``compare(a, b)`` estimates ``mean(a) - mean(b)``. It is *paired* when both come from the same
images (ids in common; pairs aligned by id, ids without a partner counted as ``unmatched``, pairs
with an undefined side dropped): the statistic is the mean of the per-image differences, the
bootstrap resamples images and the permutation test flips the sign of differences. Otherwise it is unpaired: two independent samples,
bootstrap within each, permutation test over group labels (``scipy.stats.permutation_test``,
two-sided, 9,999 resamples or exact when fewer arrangements exist, seed 0).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Sequence

import numpy as np

from cnnaudit import evidence
from cnnaudit.gates import Statistic

RESAMPLES = 9999
_BATCH_ELEMENTS = 2**20  # resampled values held at once by scipy (a 10,000-value bootstrap would otherwise take GBs)


def _batch(samples: tuple[np.ndarray, ...]) -> int:
    return max(1, _BATCH_ELEMENTS // max(1, sum(sample.size for sample in samples)))


class UndefinedScoresError(ValueError):
    """A statistic was asked of scores that have no defined value."""


@dataclass(frozen=True)
class Interval:
    """A confidence interval ``[low, high]`` at confidence ``level``."""

    low: float
    high: float
    level: float

    def __repr__(self) -> str:
        return f"Interval(low={self.low:.4g}, high={self.high:.4g}, level={self.level:g})"


class Scores:
    """One value per image (or unit), NaN where undefined; see the module docstring.

    ``values``: the numbers; ``name``: what they are (baselines key on it within a test);
    ``ids``: the image/unit id of each value (``compare`` pairs on them); ``unit``: "image",
    "unit", "layer"...; ``source``: for attention metrics ``{"heatmaps", "regions", "index"}``,
    where ``index[k]`` is the position of value ``k`` in the heatmaps.
    """

    def __init__(
        self,
        values: Any,
        name: str,
        *,
        ids: Sequence[Any] | None = None,
        unit: str = "image",
        source: dict[str, Any] | None = None,
    ) -> None:
        if hasattr(values, "detach"):
            values = values.detach().cpu().numpy()
        array = np.array(values, dtype=np.float64).reshape(-1)
        array.flags.writeable = False
        self.values = array
        self.name = str(name)
        self.ids = None if ids is None else [str(i) for i in ids]
        if self.ids is not None and len(self.ids) != len(array):
            raise ValueError(f"{len(self.ids)} ids for {len(array)} values")
        self.unit = unit
        self.source = source
        self._intervals: dict[tuple[float, int], Interval] = {}
        evidence.notify(self)

    # ---- counts ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.values)

    @property
    def n(self) -> int:
        """Number of values, undefined ones included."""
        return len(self.values)

    @property
    def n_undefined(self) -> int:
        """Number of NaN (undefined) values."""
        return int(np.isnan(self.values).sum())

    @property
    def n_defined(self) -> int:
        return self.n - self.n_undefined

    @property
    def defined(self) -> np.ndarray:
        """The defined values (NaN removed)."""
        return self.values[~np.isnan(self.values)]

    def __bool__(self) -> bool:
        raise TypeError(f"the truth of {self.name!r} scores is ambiguous; assert on .mean(), .ci().low, .quantile(q), ...")

    # ---- statistics over defined values ---------------------------------------------------
    def _require(self) -> np.ndarray:
        values = self.defined
        if values.size == 0:
            reason = "there are no values" if self.n == 0 else f"all {self.n} values are undefined (empty region or all-zero map)"
            raise UndefinedScoresError(f"{self.name}: {reason}; nothing to assert on")
        return values

    def mean(self) -> float:
        """Mean of the defined values."""
        return Statistic(np.mean(self._require()), self, "mean()")

    def median(self) -> float:
        return Statistic(np.median(self._require()), self, "median()")

    def quantile(self, q: float) -> float:
        """``q``-quantile of the defined values (linear interpolation)."""
        return Statistic(np.quantile(self._require(), q), self, f"quantile({q:g})")

    def min(self) -> float:
        return Statistic(np.min(self._require()), self, "min()")

    def max(self) -> float:
        return Statistic(np.max(self._require()), self, "max()")

    def std(self) -> float:
        """Sample standard deviation (ddof=1) of the defined values; NaN for one value; raises, like every
        statistic, when none is defined."""
        values = self._require()
        return Statistic(np.std(values, ddof=1) if len(values) > 1 else math.nan, self, "std()")

    def ci(self, level: float = 0.95, seed: int = 0) -> Interval:
        """Seeded BCa bootstrap interval of the mean of the defined values."""
        key = (float(level), int(seed))
        if key not in self._intervals:
            values = self._require()
            interval = bootstrap_interval((values,), _mean, level, seed)
            self._intervals[key] = gated_interval(interval, self, _ci_call(level, seed))
        return self._intervals[key]

    # ---- subsets --------------------------------------------------------------------------
    def where(self, mask: Any, name: str | None = None) -> Scores:
        """The values where the boolean ``mask`` (one per value) is True.

        Named ``name``, else ``<name>[<label>]`` for a mask that carries a label
        (``group("gender") == "female"`` gives ``[gender=female]``), else ``<name>[<kept>/<n>]``.
        """
        label = getattr(mask, "label", None)
        if hasattr(mask, "detach"):
            mask = mask.detach().cpu().numpy()
        keep = np.asarray(mask)
        if keep.dtype != bool or keep.shape != (self.n,):
            raise ValueError(f"where() takes a boolean mask of shape ({self.n},), got {keep.dtype} {keep.shape}")
        positions = np.flatnonzero(keep)
        source = None
        if self.source is not None:
            source = dict(self.source)
            if "index" in source:
                source["index"] = np.asarray(source["index"])[positions]
        return Scores(
            self.values[positions],
            name if name is not None else f"{self.name}[{label if label else f'{positions.size}/{self.n}'}]",
            ids=None if self.ids is None else [self.ids[p] for p in positions],
            unit=self.unit,
            source=source,
        )

    def by(self, groups: Any) -> dict[Any, Scores]:
        """``{group value: Scores of that group}``, in order of first appearance (NaN values form one group).

        ``groups``: one value per score, or the name of a group of the ImageSet the scores' heatmaps
        were computed on (``scores.by("site")``)."""
        if isinstance(groups, str):
            from cnnaudit.data import scores_group  # lazily: data.py does not import scores.py

            groups = scores_group(self.source, groups, self.n)
        if hasattr(groups, "detach"):
            groups = groups.detach().cpu().numpy()
        labels = [math.nan if _is_nan(g) else g for g in groups]
        if len(labels) != self.n:
            raise ValueError(f"by() takes one group value per score ({self.n}), got {len(labels)}")
        keys = list(dict.fromkeys(labels))  # float NaNs are one object here, so they make one key
        return {key: self.where(np.array([g is key or g == key for g in labels]), name=f"{self.name}[{key}]") for key in keys}

    # ---- display --------------------------------------------------------------------------
    def __repr__(self) -> str:
        head = f"Scores({self.name!r}, n={self.n}, undefined={self.n_undefined}"
        if self.n_defined == 0:
            return head + ", no defined values)"
        interval = self.ci()
        return (
            f"{head}, mean={self.mean():.4g}, {interval.level:.0%} CI [{interval.low:.4g}, {interval.high:.4g}], "
            f"min={self.min():.4g}, max={self.max():.4g})"
        )


def _ci_call(level: float, seed: int) -> str:
    arguments = ([] if level == 0.95 else [f"{level:g}"]) + ([] if seed == 0 else [f"seed={seed}"])
    return f"ci({', '.join(arguments)})"


def gated_interval(interval: Interval, owner: object, call: str) -> Interval:
    """``interval`` with bounds that are :class:`~cnnaudit.gates.Statistic` of ``owner`` (``ci().low``...)."""
    return Interval(Statistic(interval.low, owner, f"{call}.low"), Statistic(interval.high, owner, f"{call}.high"), interval.level)


def _is_nan(value: Any) -> bool:
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def bootstrap_interval(samples: tuple[np.ndarray, ...], statistic: Callable, level: float, seed: int, paired: bool = False) -> Interval:
    """Seeded BCa bootstrap interval of ``statistic(*samples)``; unbounded when a sample has < 2 values."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if any(sample.size < 2 for sample in samples):
        return Interval(-math.inf, math.inf, level)
    if all(np.ptp(sample) == 0 for sample in samples):
        value = float(statistic(*samples, axis=-1))
        return Interval(value, value, level)
    from scipy import stats  # here: importing scipy.stats costs a second, and most imports of Scores never need it

    for method in ("BCa", "percentile"):  # BCa is undefined on (near-)degenerate resamples
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            warnings.simplefilter("ignore", RuntimeWarning)  # BCa's acceleration 0/0 on degenerate data
            result = stats.bootstrap(
                samples, statistic, n_resamples=RESAMPLES, confidence_level=level, paired=paired,
                vectorized=True, method=method, batch=_batch(samples), rng=np.random.default_rng(seed),
            )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            break
    return Interval(low, high, level)


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def _paired_mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x - y, axis=axis)


class Difference:
    """``mean(a) - mean(b)`` with a bootstrap interval and a permutation-test p-value (see ``compare``).

    ``a``, ``b``: the values compared (aligned pairs when ``paired``); ``sides``: the two ``Scores``
    they came from, or ``None``; ``ids``: the id of each pair (paired, with ids), else ``None``;
    ``unmatched``: how many ids of each side had no partner (paired on shared ids only); ``n``: the
    number of pairs (paired) or of values of ``a``. Creating one notifies
    the evidence recorder; the interval and the p-value are computed when first asked for (by the
    audit, or by the recorder writing a report).
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, *, paired: bool, name: str, seed: int = 0,
                 sides: tuple[Scores, Scores] | None = None, unmatched: tuple[int, int] = (0, 0),
                 ids: list[str] | None = None) -> None:
        self.a, self.b, self.paired, self.name, self.seed, self.sides = a, b, paired, name, seed, sides
        self.unmatched, self.ids = unmatched, ids
        self._statistic = _paired_mean_difference if paired else _mean_difference
        self.mean = Statistic(self._statistic(a, b), self, "mean")
        self._intervals: dict[float, Interval] = {}
        evidence.notify(self)

    @property
    def n(self) -> int:
        return int(self.a.size)

    def ci(self, level: float = 0.95) -> Interval:
        """Seeded BCa bootstrap interval of the difference (pairs resampled together when paired)."""
        if level not in self._intervals:
            interval = bootstrap_interval((self.a, self.b), self._statistic, level, self.seed, paired=self.paired)
            self._intervals[level] = gated_interval(interval, self, _ci_call(level, 0))
        return self._intervals[level]

    @cached_property
    def p_value(self) -> float:
        """Two-sided permutation-test p-value for "no difference" (sign flips when paired, relabelling otherwise).

        Needs two or more values on each side (:class:`UndefinedScoresError` otherwise: one image is no evidence).
        """
        if min(self.a.size, self.b.size) < 2:
            raise UndefinedScoresError(
                f"{self.name}: a p-value needs two or more values on each side, got {self.a.size} and {self.b.size}"
            )
        if self.paired and np.all(self.a == self.b):
            return Statistic(1.0, self, "p_value")
        from scipy import stats

        result = stats.permutation_test(
            (self.a, self.b), self._statistic, permutation_type="samples" if self.paired else "independent",
            vectorized=True, n_resamples=RESAMPLES, alternative="two-sided", batch=_batch((self.a, self.b)),
            rng=np.random.default_rng(self.seed),
        )
        return Statistic(result.pvalue, self, "p_value")

    def __repr__(self) -> str:
        interval = self.ci()
        if self.paired:
            kind = f"paired, n={self.a.size}"
            if any(self.unmatched):
                kind += f", unmatched {self.unmatched[0]} + {self.unmatched[1]}"
        else:
            kind = f"unpaired, n={self.a.size} vs {self.b.size}"
        p_value = f"{self.p_value:.4g}" if min(self.a.size, self.b.size) >= 2 else "undefined"
        return (
            f"Difference({self.name}: mean={self.mean:.4g}, {interval.level:.0%} CI [{interval.low:.4g}, {interval.high:.4g}], "
            f"p={p_value}, {kind})"
        )


def compare(a: Scores, b: Scores, *, paired: bool | None = None, seed: int = 0) -> Difference:
    """``mean(a) - mean(b)`` over defined values, paired when both come from the same images.

    ``paired=None`` pairs when ``a`` and ``b`` have ids in common: the pairs are the shared ids, and
    :attr:`Difference.unmatched` counts the ids of each side left without a partner (scores of disjoint
    groups share none and are compared as independent samples). ``paired=False`` compares independent
    samples whatever the ids; ``paired=True`` needs shared ids, or equal lengths without ids. Pairs
    with an undefined side are dropped.
    """
    for side, value in (("a", a), ("b", b)):
        if not isinstance(value, Scores):
            raise TypeError(_not_scores(side, value))
    shared = _shared_ids(a, b)
    if paired is None:
        paired = bool(shared)
    name = f"{a.name} \u2212 {b.name}"  # U+2212, the minus sign
    if not paired:
        return Difference(a._require(), b._require(), paired=False, name=name, seed=seed, sides=(a, b))
    x, y, unmatched = _aligned(a, b, shared)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if x.size == 0:
        raise UndefinedScoresError(f"{name}: no image has both values defined; nothing to compare")
    ids = [i for i, kept in zip(shared, keep, strict=True) if kept] if shared else None
    return Difference(x, y, paired=True, name=name, seed=seed, sides=(a, b), unmatched=unmatched, ids=ids)


def _not_scores(side: str, value: object) -> str:
    why = getattr(value, "not_comparable", None)  # a baseline entry that stores only a summary says why
    if why:
        return f"compare() argument {side}: {why}"
    hint = (
        "; to test scores against a fixed value, assert on a statistic instead, e.g. `assert scores.ci().low >= 0.5`"
        if isinstance(value, (int, float, np.number)) else ""
    )
    return f"compare() takes two Scores; argument {side} is {type(value).__name__} {value!r:.80}{hint}"


def _shared_ids(a: Scores, b: Scores) -> list[str]:
    """The ids of ``a`` that ``b`` has too, in ``a``'s order (none when either has no ids)."""
    if a.ids is None or b.ids is None:
        return []
    in_b = set(b.ids)
    return [i for i in a.ids if i in in_b]


def _aligned(a: Scores, b: Scores, shared: list[str]) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """``a``'s and ``b``'s values of the shared ids (else position by position) and the unmatched counts."""
    if a.ids is not None and b.ids is not None:
        for side in (a, b):
            if len(set(side.ids)) != len(side.ids):
                raise ValueError(f"paired comparison needs unique ids; {side.name} repeats some (pass paired=False)")
        if not shared:
            raise ValueError(f"paired comparison needs shared ids; {a.name} and {b.name} have none in common")
        position_a = {i: k for k, i in enumerate(a.ids)}
        position_b = {i: k for k, i in enumerate(b.ids)}
        unmatched = (a.n - len(shared), b.n - len(shared))
        return (a.values[[position_a[i] for i in shared]], b.values[[position_b[i] for i in shared]], unmatched)
    if a.n != b.n:
        raise ValueError(f"paired comparison needs as many values in {a.name} ({a.n}) as in {b.name} ({b.n})")
    return a.values.copy(), b.values.copy(), (0, 0)
