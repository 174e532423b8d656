"""Scores: undefined values, statistics, bootstrap intervals, subsets, and compare()."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cnnaudit import evidence
from cnnaudit.scores import Interval, Scores, UndefinedScoresError, compare

NAN = float("nan")


def test_undefined_values_are_counted_and_left_out():
    scores = Scores([0.2, NAN, 0.6, 1.0, NAN], "mass_in(tools)")
    assert scores.values.dtype == np.float64 and not scores.values.flags.writeable
    assert (scores.n, scores.n_undefined, scores.n_defined, len(scores)) == (5, 2, 3, 5)
    assert scores.mean() == pytest.approx(0.6)
    assert scores.median() == pytest.approx(0.6)
    assert scores.quantile(0.25) == pytest.approx(0.4)
    assert (scores.min(), scores.max()) == (0.2, 1.0)
    assert scores.std() == pytest.approx(0.4)


def test_all_undefined_raises_instead_of_passing_silently():
    scores = Scores([NAN, NAN, NAN], "mass_in(face)")
    for statistic in (scores.mean, scores.median, scores.min, scores.max, scores.std, scores.ci, lambda: scores.quantile(0.1)):
        with pytest.raises(UndefinedScoresError, match=r"mass_in\(face\): all 3 values are undefined"):
            statistic()
    with pytest.raises(UndefinedScoresError, match="there are no values"):
        Scores([], "empty").mean()
    assert math.isnan(Scores([0.5, NAN], "one").std())  # one value has no sample deviation
    assert repr(scores) == "Scores('mass_in(face)', n=3, undefined=3, no defined values)"
    with pytest.raises(TypeError, match="ambiguous"):
        assert scores


def test_repr_makes_a_failing_assert_readable():
    scores = Scores([0.1, 0.3, NAN, 0.2], "mass_in(tools)")
    text = repr(scores)
    interval = scores.ci()
    assert text.startswith("Scores('mass_in(tools)', n=4, undefined=1, mean=0.2, 95% CI [")
    assert f"[{interval.low:.4g}, {interval.high:.4g}]" in text
    with pytest.raises(AssertionError, match=r"Scores\('mass_in\(tools\)', n=4, undefined=1, mean=0.2"):
        assert scores.ci().low >= 0.5, scores


def test_bootstrap_interval_matches_the_analytic_interval_of_a_normal_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, size=1000)
    for level in (0.95, 0.9):
        half = stats.norm.ppf(0.5 + level / 2) * x.std(ddof=1) / math.sqrt(x.size)
        interval = Scores(x, "x").ci(level)
        assert interval.level == level
        assert interval.low == pytest.approx(x.mean() - half, abs=0.05 * half)
        assert interval.high == pytest.approx(x.mean() + half, abs=0.05 * half)


def test_intervals_are_seeded_and_honest_about_tiny_samples():
    x = np.random.default_rng(2).uniform(size=30)
    assert Scores(x, "a").ci() == Scores(x, "b").ci()
    assert Scores(x, "a").ci(seed=1) != Scores(x, "a").ci()
    assert Scores([0.7, NAN], "one").ci() == Interval(-math.inf, math.inf, 0.95)
    same = Scores([0.7, 0.7, 0.7], "same").ci()
    assert same.low == same.high == pytest.approx(0.7)
    with pytest.raises(ValueError, match="level"):
        Scores(x, "a").ci(95)


def test_where_and_by():
    source = {"heatmaps": None, "index": np.arange(5)}
    scores = Scores([1.0, 2.0, NAN, 4.0, 5.0], "m", ids=list("abcde"), source=source)
    female = np.array(["f", "m", "f", "m", "f"])
    subset = scores.where(female == "f")
    np.testing.assert_array_equal(subset.values, [1.0, NAN, 5.0])
    assert subset.ids == ["a", "c", "e"] and subset.source["index"].tolist() == [0, 2, 4]
    assert subset.name == "m[3/5]" and subset.mean() == 3.0
    groups = scores.by(female)
    assert list(groups) == ["f", "m"]
    assert groups["m"].values.tolist() == [2.0, 4.0] and groups["m"].name == "m[m]"
    assert groups["f"].n_undefined == 1
    with pytest.raises(ValueError, match=r"boolean mask of shape \(5,\)"):
        scores.where([0, 1, 0, 1, 0])
    missing = scores.by(np.array([1.0, NAN, 1.0, NAN, 2.0]))  # NaN group values form one group
    assert len(missing) == 3 and [g.n for g in missing.values()] == [2, 2, 1]


def test_scores_announce_themselves_as_evidence():
    class Recorder:
        def __init__(self):
            self.seen = []

        def observe(self, obj):
            self.seen.append(obj)

    with evidence.recording(Recorder()) as recorder:
        scores = Scores([1.0, 2.0], "m")
        subset = scores.where(np.array([True, False]))
    assert recorder.seen == [scores, subset]


def test_compare_unpaired_hand_computed():
    a, b = Scores([1.0, 2.0, NAN], "a"), Scores([3.0, 4.0], "b")
    diff = compare(a, b)
    assert not diff.paired and diff.mean == -2.0
    # all 6 relabellings of {1,2,3,4}: only {1,2} vs {3,4} and {3,4} vs {1,2} reach |mean difference| = 2
    assert diff.p_value == pytest.approx(2 / 6)
    # every resampled difference of means lies in [1 - 4, 2 - 3]
    assert -3.0 <= diff.ci().low <= diff.ci().high <= -1.0
    assert repr(diff).startswith("Difference(a \u2212 b: mean=-2")


def test_compare_pairs_by_id_when_both_come_from_the_same_images():
    a = Scores([1.0, 2.0, 3.0, NAN], "a", ids=["w", "x", "y", "z"])
    b = Scores([0.5, NAN, 1.0, 0.0], "b", ids=["y", "z", "w", "x"])
    diff = compare(a, b)
    # aligned by id: w 1-1, x 2-0, y 3-0.5; z has an undefined side and is dropped
    assert diff.paired and diff.a.tolist() == [1.0, 2.0, 3.0] and diff.b.tolist() == [1.0, 0.0, 0.5]
    assert diff.mean == pytest.approx((0 + 2 + 2.5) / 3)
    # 2^3 sign flips of (0, 2, 2.5): |mean| >= observed for all-plus and all-minus, and for the
    # two flips of the zero alone -> 4 of 8
    assert diff.p_value == pytest.approx(4 / 8)
    # partly shared images: paired on the shared ones, the rest counted as unmatched
    partial = compare(a, Scores([0.5, 2.0, 9.0], "c", ids=["x", "w", "q"]))
    assert partial.paired and partial.a.tolist() == [1.0, 2.0] and partial.b.tolist() == [2.0, 0.5]
    assert (partial.n, partial.unmatched) == (2, (2, 1)) and "unmatched 2 + 1" in repr(partial)
    assert not compare(a, Scores([1.0, 2.0], "c", ids=["w", "q"]), paired=False).paired
    # no shared image: independent samples (two groups of one Scores)
    assert not compare(a, Scores([1.0, 2.0], "d", ids=["p", "q"])).paired


def test_compare_refuses_what_is_not_scores_with_a_hint() -> None:
    a = Scores([1.0, 2.0], "a")
    with pytest.raises(TypeError, match=r"argument b is float 0.5; to test scores against a fixed value, assert on a "
                                        r"statistic instead, e.g. `assert scores.ci\(\).low >= 0.5`"):
        compare(a, 0.5)
    with pytest.raises(TypeError, match="argument a is list"):
        compare([1.0], a)


def test_compare_of_a_constant_paired_shift():
    x = np.arange(10.0)
    diff = compare(Scores(x + 1, "a", ids=range(10)), Scores(x, "b", ids=range(10)))
    assert diff.paired and diff.mean == 1.0
    assert diff.ci().low == pytest.approx(1.0) and diff.ci().high == pytest.approx(1.0)
    assert diff.p_value == pytest.approx(2 / 2**10)  # only all-plus and all-minus of 1024 sign flips


def test_pairing_removes_image_to_image_variation():
    rng = np.random.default_rng(3)
    ids = [f"img{i}" for i in range(40)]
    base = rng.normal(0, 1, 40)
    a, b = Scores(base + 0.3, "a", ids=ids), Scores(base + rng.normal(0, 0.05, 40), "b", ids=ids)
    paired, unpaired = compare(a, b), compare(a, b, paired=False)
    assert paired.mean == pytest.approx(unpaired.mean)
    assert paired.p_value < 1e-3 < 0.05 < unpaired.p_value
    assert paired.ci().high - paired.ci().low < 0.2 * (unpaired.ci().high - unpaired.ci().low)
    assert paired.ci().low > 0


@pytest.mark.parametrize("paired", [False, True])
def test_permutation_p_values_are_uniform_under_the_null(paired):
    p_values = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        if paired:
            ids = list(range(12))
            base = rng.normal(0, 1, 12)
            a = Scores(base + rng.normal(0, 0.5, 12), "a", ids=ids)
            b = Scores(base + rng.normal(0, 0.5, 12), "b", ids=ids)
        else:
            a, b = Scores(rng.normal(0, 1, 8), "a"), Scores(rng.normal(0, 1, 10), "b")
        diff = compare(a, b)
        assert diff.paired == paired
        p_values.append(diff.p_value)
    assert stats.kstest(p_values, "uniform").pvalue > 0.01
    assert 0.02 <= np.mean(np.array(p_values) < 0.1) <= 0.2


def test_a_p_value_needs_two_values_on_each_side():
    one = compare(Scores([0.4], "x"), Scores([0.1, 0.2], "y"))
    with pytest.raises(UndefinedScoresError, match=r"x \u2212 y: a p-value needs two or more values on each side, got 1 and 2"):
        one.p_value
    assert one.ci().low == -np.inf and "p=undefined" in repr(one)
    with pytest.raises(UndefinedScoresError, match="got 1 and 1"):
        compare(Scores([0.4], "x", ids=["i"]), Scores([0.1], "y", ids=["i"])).p_value


def test_compare_of_undefined_scores_raises():
    with pytest.raises(UndefinedScoresError):
        compare(Scores([NAN], "a"), Scores([1.0], "b"))
    with pytest.raises(UndefinedScoresError, match="no image has both"):
        compare(Scores([NAN, 1.0], "a", ids=["x", "y"]), Scores([1.0, NAN], "b", ids=["x", "y"]))


def test_by_a_group_name_reads_the_imageset_behind_the_scores():
    import torch

    from cnnaudit.data import ImageSet
    from cnnaudit.heatmaps import Heatmaps

    people = ImageSet(torch.zeros(4, 3, 2, 2), groups={"site": ["A", "B", "A", "C"]}, ids=list("wxyz"),
                      regions={"corner": [(0, 0, 1, 1)] * 4})
    raw = torch.tensor([[[v, 1 - v], [0.0, 0.0]] for v in (0.1, 0.2, 0.3, 0.4)])  # mass_in(corner) = v
    scores = Heatmaps(raw, image_size=(2, 2), method="test", images=people, ids=people.ids).mass_in("corner")
    groups = scores.by("site")
    assert list(groups) == ["A", "B", "C"] and groups["A"].name == "mass_in(corner)[A]"
    assert groups["A"].values.tolist() == pytest.approx([0.1, 0.3]) and groups["A"].ids == ["w", "y"]
    assert groups["C"].values.tolist() == pytest.approx([0.4])
    later = scores.where(np.array([False, True, True, True])).by("site")  # source["index"] keeps the images aligned
    assert list(later) == ["B", "A", "C"] and later["A"].values.tolist() == pytest.approx([0.3]) and later["B"].ids == ["x"]
    with pytest.raises(KeyError, match=r"unknown group 'sit' \(did you mean 'site'\?\); available: 'site'"):
        scores.by("sit")
    with pytest.raises(ValueError, match=r"by\('site'\): .* but they were not computed from heatmaps; pass one group value "
                                         r"per score instead, e.g. scores\.by\(images\.group\('site'\)\)"):
        Scores([1.0, 2.0], "m").by("site")
    from_tensor = Heatmaps(raw, image_size=(2, 2), method="test", images=torch.zeros(4, 3, 2, 2)).mass_in([(0, 0, 1, 1)] * 4)
    with pytest.raises(ValueError, match=r"by\('site'\): .*computed from a Tensor, not an ImageSet"):
        from_tensor.by("site")
