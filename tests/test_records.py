"""The per-test evidence recorder, its summaries and the rendering helpers it uses (no pytest machinery)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from cnnaudit import evidence, render
from cnnaudit.heatmaps import Heatmaps
from cnnaudit.records import (
    CHANGES_PER_COMPARISON,
    EVIDENCE_SIDE,
    IMAGES_PER_TEST,
    OVERLAYS_PER_HEATMAPS,
    EvidenceRecorder,
    _overlay,
    evidence_size,
    model_identity,
)
from cnnaudit.summaries import histogram, junit_properties, summarize
from cnnaudit.regions import Regions
from cnnaudit.scores import Scores, compare


def make_heatmaps(n: int, size: int = 24) -> Heatmaps:
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(n, 3, size, size, generator=generator)
    raw = torch.randn(n, 6, 6, generator=generator)
    return Heatmaps(raw, image_size=(size, size), method="gradcam", layer="l4", images=images)


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_heatmaps_give_at_most_eight_overlays_written_to_disk_as_they_arrive(tmp_path: Path) -> None:
    recorder = EvidenceRecorder("t.py::test", tmp_path)
    with evidence.recording(recorder):
        heatmaps = make_heatmaps(11)
        files_during_test = sorted(p.name for p in tmp_path.iterdir())
    out = recorder.finish()
    (entry,) = out["heatmaps"]
    assert (entry["method"], entry["layer"], entry["n"], entry["zero"]) == ("gradcam", "l4", 11, 0)
    assert entry["layout"] is None  # a (N, C, h, w) layer read as it is
    assert len(entry["images"]) == OVERLAYS_PER_HEATMAPS == 8
    assert len(files_during_test) == 8  # written before the test ended; one file each, no larger than a thumbnail
    first = entry["images"][0]
    assert (first["width"], first["height"]) == (24, 24)
    # the recorder renders one map at a time, exactly as Heatmaps.overlay(i) does with all maps
    assert all(np.array_equal(_overlay(heatmaps, i), heatmaps.overlay(i)) for i in range(11))
    full = read(tmp_path / first["file"]).astype(int)
    assert np.abs(full - heatmaps.overlay(0).astype(int)).mean() < 10  # JPEG q90 of a noise image


def test_scores_show_the_lowest_and_highest_defined_images_with_region_outlines(tmp_path: Path) -> None:
    heatmaps = make_heatmaps(10)
    regions = Regions([(4, 4, 12, 12)] * 10, image_size=(24, 24), name="box")
    values = np.array([0.5, np.nan, 0.1, 0.9, 0.3, 0.7, 0.2, np.nan, 0.8, 0.6])
    recorder = EvidenceRecorder("t.py::test", tmp_path)
    with evidence.recording(recorder):
        scores = Scores(values, "mass_in(box)", ids=heatmaps.ids, source={"heatmaps": heatmaps, "regions": regions})
    (summary,) = recorder.finish()["scores"]
    titles = {label: [image["title"] for image in summary["images"][label]] for label in ("lowest", "highest")}
    # defined values ascending: 0.1(id 2) 0.2(6) 0.3(4) 0.5(0) 0.6(9) 0.7(5) 0.8(8) 0.9(3)
    assert titles == {"lowest": ["2", "6", "4", "0"], "highest": ["3", "8", "5", "9"]}
    assert summary["images"]["lowest"][0]["caption"] == "mass_in(box) = 0.1"
    drawn = read(tmp_path / summary["images"]["lowest"][0]["file"]).astype(int)
    expected = render.outline(heatmaps.overlay(2), regions.mask(2, (24, 24))).astype(int)
    assert np.abs(drawn - expected).mean() < 10
    assert drawn[4, 8].min() > 200 and drawn[3, 8].max() < 60  # white inside the box edge, black just outside
    assert summary["n"] == 10 and summary["n_undefined"] == 2
    assert summary["mean"] == pytest.approx(np.nanmean(values)) and summary["ci"]["low"] == scores.ci().low


def test_extremes_follow_the_source_index_of_a_subset(tmp_path: Path) -> None:
    heatmaps = make_heatmaps(6)
    regions = Regions([(0, 0, 8, 8)] * 6, image_size=(24, 24), name="box")
    recorder = EvidenceRecorder("t.py::test", tmp_path)
    with evidence.recording(recorder):
        whole = heatmaps.mass_in(regions)
        subset = whole.where(np.array([False, True, False, True, False, True]))
    assert recorder.key_of(subset) == "mass_in(box)[3/6]"
    out = recorder.finish()["scores"]
    assert [s["key"] for s in out] == ["mass_in(box)", "mass_in(box)[3/6]"]
    shown = {image["title"] for label in ("lowest", "highest") for image in out[1]["images"][label]}
    assert shown == {"1", "3", "5"}


def test_summary_statistics_are_the_scores_own() -> None:
    scores = Scores([0.1, 0.2, 0.6, np.nan], "m")
    summary = summarize(scores)
    assert (summary["n"], summary["n_undefined"]) == (4, 1)
    assert summary["mean"] == pytest.approx(0.3) and summary["median"] == 0.2
    assert (summary["min"], summary["max"]) == (0.1, 0.6)
    assert summary["ci"] == {"low": scores.ci().low, "high": scores.ci().high, "level": 0.95}
    assert summary["quantiles"]["0.5"] == 0.2 and summary["quantiles"]["0.1"] == pytest.approx(0.12)


def test_summary_of_undefined_scores_has_no_statistics() -> None:
    summary = summarize(Scores([np.nan, np.nan], "empty"))
    assert (summary["n"], summary["n_undefined"], summary["mean"], summary["ci"]) == (2, 2, None, None)
    assert histogram([np.nan], []) is None


def test_histogram_bins_cover_the_values_and_the_markers() -> None:
    hist = histogram([0.0, 0.5, 1.0, np.nan], markers=[1.5])
    assert (hist["low"], hist["high"]) == (0.0, 1.5)
    counts = hist["counts"]
    assert len(counts) == 20 and sum(counts) == 3
    # bin width 0.075: 0.0 -> bin 0, 0.5 -> bin 6, 1.0 -> bin 13
    assert [i for i, c in enumerate(counts) if c] == [0, 6, 13]
    assert histogram([2.0, 2.0], [])["low"] == 1.5  # a single value gets a unit-wide range


def test_repeated_names_get_distinct_keys(tmp_path: Path) -> None:
    recorder = EvidenceRecorder("t", None)
    with evidence.recording(recorder):
        first, second, third = Scores([1.0], "m"), Scores([2.0], "m"), Scores([3.0], "m")
    assert [recorder.key_of(s) for s in (first, second, third)] == ["m", "m#2", "m#3"]
    with pytest.raises(ValueError, match=r"Scores 'unrecorded' was not computed in test 't' \(it comes from outside the test"):
        recorder.key_of(Scores([1.0], "unrecorded"))


def test_images_per_test_are_capped(tmp_path: Path) -> None:
    recorder = EvidenceRecorder("t", tmp_path)
    for i in range(IMAGES_PER_TEST + 4):
        recorder.image(f"img{i}", np.zeros((4, 4, 3), np.uint8))
    out = recorder.finish()
    assert len(out["images"]) == IMAGES_PER_TEST and out["dropped_images"] == 4
    assert len(list(tmp_path.iterdir())) == IMAGES_PER_TEST  # 4x4: one file serves as image and thumbnail


def test_without_an_image_dir_numbers_are_still_recorded(tmp_path: Path) -> None:
    recorder = EvidenceRecorder("t", None)
    with evidence.recording(recorder):
        heatmaps = make_heatmaps(3)
        heatmaps.mass_in(Regions([(0, 0, 8, 8)] * 3, image_size=(24, 24), name="box"))
    recorder.image("x", np.zeros((4, 4)))
    out = recorder.finish()
    assert out["heatmaps"][0]["images"] == [] and out["images"] == []
    assert out["scores"][0]["images"] == {} and out["scores"][0]["mean"] is not None
    json.dumps(out, allow_nan=False)  # plain data only


def test_a_failure_to_record_becomes_a_note_not_an_error(tmp_path: Path) -> None:
    class Heatmaps:  # named like the real class but missing everything
        pass

    recorder = EvidenceRecorder("t", tmp_path)
    recorder.observe(Heatmaps())
    recorder.observe(object())
    notes = recorder.finish()["notes"]
    assert notes[0].startswith("cnnaudit could not record Heatmaps: AttributeError")
    assert notes[1].startswith("object: <object object")


def test_visualizations_are_shown_as_one_grid_of_at_most_64_channels(tmp_path: Path) -> None:
    class Settings:
        seed = 7

    class Visualizations:
        images = torch.rand(70, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        channels = list(range(70))
        layer = "features.0"
        settings = Settings()

    recorder = EvidenceRecorder("t", tmp_path)
    recorder.observe(Visualizations())
    out = recorder.finish()
    (vis,) = out["visualizations"]
    (image,) = vis["images"]
    assert vis["channels"] == list(range(70)) and 7 in out["seeds"]
    assert image["caption"] == "channels 0-63 (first 64 of 70)"  # nothing says which units are dead: no "dead" line
    assert vis["dead"] is None  # an object without achieved activations: deadness unknown, nothing marked
    # 8x8 tiles of 8 px, each enlarged 8x to 64 px so that its channel number fits, 2 px padding
    assert (image["width"], image["height"]) == (8 * 66 + 2, 8 * 66 + 2) and render.LABELLED_TILE == 64


def test_real_visualizations_are_recorded_with_their_seed_and_activation(tmp_path: Path) -> None:
    import cnnaudit as ca

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 16, 16))
    subject = ca.Subject(model, layer="0", device="cpu")
    recorder = EvidenceRecorder("t", tmp_path)
    with evidence.recording(recorder):
        vis = subject.maximize("0", channels="all", steps=1, size=16, seed=5)
        assert vis.activation.n == 4  # a Scores per unit, recorded like any other
    out = recorder.finish()
    (entry,) = out["visualizations"]
    assert entry["layer"] == "0" and entry["channels"] == [0, 1, 2, 3] and 5 in out["seeds"]
    assert (entry["images"][0]["width"], entry["images"][0]["height"]) == (2 * 66 + 2, 2 * 66 + 2)  # 16 px tiles, 4x
    assert entry["dead"] == [c for c, a in zip(vis.channels, vis.achieved) if not a > 1e-6]
    assert [s["key"] for s in out["scores"]] == ["activation"] and out["scores"][0]["n"] == 4
    assert out["models"][0]["parameters"] == sum(p.numel() for p in model.parameters())


def test_dead_units_are_numbered_and_marked_in_the_grid(tmp_path: Path) -> None:
    class Visualizations:
        images = torch.full((5, 3, 16, 16), 0.5)
        channels = [0, 3, 4, 9, 10]
        achieved = np.array([0.5, 0.0, 2.0, 1e-7, -0.3])  # dead: not above 1e-6 (Visualizations.dead()'s eps)
        layer = "features.relu1"

    recorder = EvidenceRecorder("t", tmp_path)
    recorder.observe(Visualizations())
    (vis,) = recorder.finish()["visualizations"]
    assert vis["dead"] == [3, 9, 10] and vis["dead_eps"] == 1e-6
    (image,) = vis["images"]
    assert image["caption"] == "channels 0, 3-4, 9-10 · dead (activation ≤ 1e-06, red X): 3, 9-10"
    drawn = read(tmp_path / image["file"]).astype(int)
    assert drawn.shape == (2 * 66 + 2, 3 * 66 + 2, 3)  # 3 columns, 2 rows of 64 px tiles

    def tile(k: int) -> np.ndarray:
        top, left = 2 + (k // 3) * 66, 2 + (k % 3) * 66
        return drawn[top : top + 64, left : left + 64]

    def red(pixel: np.ndarray) -> bool:
        return pixel[0] > 170 and pixel[1] < 90 and pixel[2] < 90

    for k, dead in enumerate([False, True, False, True, True]):
        # frame (middle of the left edge) and X (centre, and a quarter along the diagonal): red only on dead units
        assert [red(tile(k)[32, 0]), red(tile(k)[32, 32]), red(tile(k)[16, 16]), red(tile(k)[48, 63])] == [dead] * 4, k
        assert np.abs(tile(k)[56:60, 24:40] - 128).max() < 12 if not dead else True  # otherwise the grey image
    # the channel number, white on a black box in the top-left corner; "10" needs a wider box than "0"
    def box_width(k: int) -> int:
        return int(np.argmax(tile(k)[0, :, :].max(axis=1) > 60))  # the box's top row: black, then grey or red

    assert tile(0)[1, 1].max() < 40 and (tile(0)[:16, :16].min(axis=2) > 200).sum() >= 4
    assert 4 < box_width(0) < box_width(4) < 32


def test_grid_labels_and_marks_are_drawn_on_enlarged_tiles() -> None:
    tiles = np.full((2, 16, 16, 3), 128, np.uint8)
    plain = render.grid(tiles, pad=2)
    assert plain.shape == (16 + 4, 2 * 18 + 2, 3)  # no labels or marks: as before
    canvas = render.grid(tiles, pad=2, labels=["7", "12"], marked=[False, True])
    assert canvas.shape == (64 + 4, 2 * 66 + 2, 3)  # enlarged 4x (nearest) to 64 px
    second = canvas[2:66, 68:132]
    assert second[32, 0].tolist() == second[32, 63].tolist() == second[63, 32].tolist() == list(render.MARK_COLOUR)
    assert second[32, 32].tolist() == list(render.MARK_COLOUR)  # the X's crossing
    first = canvas[2:66, 2:66]
    assert first[32, 0].tolist() == first[32, 32].tolist() == [128, 128, 128]
    assert first[0, 0].tolist() == [0, 0, 0] and (first[:14, :14].min(axis=2) > 200).sum() >= 4  # "7", white on black
    assert (first[20:, :] == 128).all()  # the label stays in its corner
    with pytest.raises(ValueError, match="grid\\(\\) got 1 labels for 2 images"):
        render.grid(tiles, labels=["1"])


def test_overlay_captions_give_label_prediction_target_and_groups(tmp_path: Path) -> None:
    from cnnaudit import Subject
    from cnnaudit.data import ImageSet

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    subject = Subject(model, layer="1", classes=["doctor", "nurse"], device="cpu")
    people = ImageSet(torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1)),
                      labels=["doctor", "nurse", "doctor", "nurse", "doctor", "nurse"],
                      groups={"gender": ["female", "male"] * 3, "pairing": ["counter"] * 3 + ["stereotyped"] * 3},
                      regions={"box": [(0, 0, 8, 8)] * 6}, ids=[f"p{i}" for i in range(6)])
    recorder = EvidenceRecorder("t", tmp_path)
    with evidence.recording(recorder):
        given = subject.gradcam(people, target=["nurse", "doctor", "doctor", "nurse", "nurse", "nurse"])
        mass = given.mass_in("box")
        female = mass.where(people.group("gender") == "female")
        predicted = subject.gradcam(people[3:])  # target=None: the class each image is predicted as
    out = recorder.finish()
    first, second = out["heatmaps"]
    names = ["doctor", "nurse"]
    predicted_as = [names[c] for c in subject.logits(people.tensor()).argmax(dim=1).tolist()]  # the model's own classes
    assert [i["caption"] for i in first["images"][:2]] == [
        f"gradcam · label doctor · predicted {predicted_as[0]} · target nurse · gender=female · pairing=counter",
        f"gradcam · label nurse · predicted {predicted_as[1]} · target doctor · gender=male · pairing=counter",
    ]
    assert first["images"][5]["short"] == (  # the card says gradcam
        f"label nurse · predicted {predicted_as[5]} · target nurse · gender=male · pairing=stereotyped")
    # target=None: the map explains the predicted class
    assert [i["caption"] for i in second["images"]] == [
        f"gradcam · label {people.labels[3 + k]} · predicted {c} · target {c} · gender={['male', 'female'][k % 2]}"
        " · pairing=stereotyped" for k, c in enumerate(predicted_as[3:])]
    # extremes: the value, then the same facts of the image it belongs to (a where() subset: via its index)
    whole, subset = out["scores"][0], out["scores"][1]
    lowest = int(np.nanargmin(mass.values))
    assert whole["images"]["lowest"][0]["title"] == f"p{lowest}"
    assert whole["images"]["lowest"][0]["caption"] == (
        f"mass_in(box) = {mass.values[lowest]:.3g} · label {people.labels[lowest]} · predicted {predicted_as[lowest]} · target "
        f"{['nurse', 'doctor', 'doctor', 'nurse', 'nurse', 'nurse'][lowest]} · gender={['female', 'male'][lowest % 2]}"
        f" · pairing={'counter' if lowest < 3 else 'stereotyped'}")
    assert whole["images"]["lowest"][0]["short"] == whole["images"]["lowest"][0]["caption"].removeprefix("mass_in(box) = ")
    top = int(np.array([0, 2, 4])[np.nanargmax(female.values)])
    assert subset["images"]["highest"][0]["title"] == f"p{top}"
    assert subset["images"]["highest"][0]["caption"].startswith(f"mass_in(box)[gender=female] = {mass.values[top]:.3g} · ")
    assert "gender=female" in subset["images"]["highest"][0]["caption"]


def test_a_sanity_check_is_recorded_as_a_curve_per_layer_with_its_randomised_maps(tmp_path: Path) -> None:
    from cnnaudit import Subject, metrics
    from cnnaudit.data import ImageSet

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(16, 4),
    )
    subject = Subject(model, layer="4", device="cpu")
    images = ImageSet(torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(3)), labels=list("abcabc"))
    recorder = EvidenceRecorder("t", tmp_path)
    with evidence.recording(recorder):
        check = metrics.sanity_check(subject, images, target=0)
    (summary,) = recorder.finish()["scores"]
    # the curve: the layers in cascade order (layer "4" and image "4" share a name: not an image's value)
    assert [(p["id"], p["value"]) for p in summary["curve"]] == list(zip(["8", "4", "2", "0"], check.values.tolist()))
    assert "lowest" not in summary["images"] and "highest" not in summary["images"]
    # the cascade: image 0's original overlay, then its map after each step, kept by sanity_check (no recompute)
    randomised, correlations = check.source["randomised"], check.source["correlations"]
    assert randomised.shape == (4, *check.source["heatmaps"].raw.shape[1:])
    for k in range(4):  # the stored maps are the ones the correlations were computed from
        rho = stats.spearmanr(check.source["heatmaps"].raw[0].flatten(), randomised[k].flatten()).statistic
        assert rho == pytest.approx(correlations[k, 0], abs=1e-12)
    cascade = summary["images"]["cascade"]
    first_prediction = int(check.source["heatmaps"].predictions[0])
    assert [i["caption"] for i in cascade] == [f"original · label a · predicted {first_prediction} · target 0"] + [
        f"step {k + 1}: {name} randomised, ρ = {correlations[k, 0]:.2f} with the original map"
        for k, name in enumerate(["8", "4", "2", "0"])]
    assert [i["short"] for i in cascade][1:] == [f"ρ = {correlations[k, 0]:.2f} · {k + 1}. {name}"
                                                 for k, name in enumerate(["8", "4", "2", "0"])]
    drawn = read(tmp_path / cascade[2]["file"]).astype(int)
    expected = _overlay(check.source["heatmaps"], 0, raw=randomised[1]).astype(int)
    assert np.abs(drawn - expected).mean() < 10


def test_views_are_recorded_as_images(tmp_path: Path) -> None:
    from cnnaudit.views import View

    recorder = EvidenceRecorder("t", tmp_path)
    recorder.observe(View("filters", np.full((5, 7, 3), 200, np.uint8)))
    (image,) = recorder.finish()["images"]
    assert (image["title"], image["width"], image["height"]) == ("filters", 7, 5)


def test_model_identity_asks_the_subject_and_is_none_without_one(tiny_cnn) -> None:
    from cnnaudit import Subject

    subject = Subject(tiny_cnn, device="cpu")
    assert model_identity(subject) == subject.identity() and model_identity(object()) is None


def test_junit_properties_name_each_statistic() -> None:
    recorder = EvidenceRecorder("t", None)
    with evidence.recording(recorder):
        Scores([0.2, 0.4], "m")
    props = dict(junit_properties(recorder.finish(lambda key: {"mean": 0.25})))
    assert props["cnnaudit.m.n"] == 2 and props["cnnaudit.m.mean"] == pytest.approx(0.3)
    assert props["cnnaudit.m.delta_mean"] == pytest.approx(0.05)
    assert set(props) == {f"cnnaudit.m.{k}" for k in ("n", "n_undefined", "mean", "ci_low", "ci_high", "delta_mean")}


# ---- comparisons (cnnaudit.compare) -----------------------------------------------------------------
def face_mass(n: int = 16, seed: int = 5) -> tuple[Scores, np.ndarray]:
    """A ``mass_in(face)`` Scores over ``n`` images (two undefined) and a gender per image."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 0.6, n)
    values[[3, 10]] = np.nan
    genders = np.array(["female", "male"] * (n // 2))
    return Scores(values, "mass_in(face)", ids=[f"img{i}" for i in range(n)]), genders


def test_an_unpaired_comparison_is_recorded_with_its_own_numbers() -> None:
    face, genders = face_mass()
    recorder = EvidenceRecorder("t", None)
    with evidence.recording(recorder):
        groups = face.by(genders)
        gap = compare(groups["female"], groups["male"])
    (recorded,) = recorder.finish()["comparisons"]
    female, male = face.values[genders == "female"], face.values[genders == "male"]
    female, male = female[~np.isnan(female)], male[~np.isnan(male)]  # image 10 (female) and 3 (male) are undefined
    fresh = compare(Scores(female, "f"), Scores(male, "m"))  # computed again, outside any recording
    assert recorded["key"] == recorded["name"] == "mass_in(face)[female] \u2212 mass_in(face)[male]"
    assert recorded["paired"] is False and (recorded["a"]["n"], recorded["b"]["n"]) == (7, 7)
    assert recorded["mean"] == gap.mean == pytest.approx(female.mean() - male.mean())
    assert (recorded["a"]["mean"], recorded["b"]["mean"]) == (pytest.approx(female.mean()), pytest.approx(male.mean()))
    assert recorded["ci"] == {"low": fresh.ci().low, "high": fresh.ci().high, "level": 0.95}
    assert recorded["ci"]["low"] < recorded["mean"] < recorded["ci"]["high"]
    assert recorded["p_value"] == fresh.p_value == gap.p_value and 0 < recorded["p_value"] <= 1
    assert (recorded["a"]["key"], recorded["b"]["key"]) == ("mass_in(face)[female]", "mass_in(face)[male]")
    assert recorded["thresholds"] == []
    json.dumps(recorded, allow_nan=False)


def test_a_paired_comparison_records_the_pairs_it_used() -> None:
    face, _ = face_mass()
    tools = Scores(np.linspace(0.9, 0.4, 16), "mass_in(tools)", ids=list(reversed(face.ids)))  # same images, other order
    recorder = EvidenceRecorder("t", None)
    with evidence.recording(recorder):
        gap = compare(tools, face)
    (recorded,) = recorder.finish()["comparisons"]
    # pairs in the order of the first side's ids (img15 ... img0), those with an undefined side dropped
    x, y = tools.values, face.values[::-1]
    keep = ~np.isnan(y)
    x, y = x[keep], y[keep]
    assert gap.paired and recorded["paired"] is True and recorded["a"]["n"] == recorded["b"]["n"] == 14
    assert recorded["mean"] == pytest.approx(np.mean(x - y)) and recorded["a"]["mean"] == pytest.approx(x.mean())
    # the same numbers from scipy directly: BCa over resampled pairs, sign-flip permutation test
    boot = stats.bootstrap((x, y), lambda u, v, axis: np.mean(u - v, axis=axis), paired=True, vectorized=True,
                           n_resamples=9999, method="BCa", rng=np.random.default_rng(0))
    flips = stats.permutation_test((x, y), lambda u, v, axis: np.mean(u - v, axis=axis), permutation_type="samples",
                                   vectorized=True, n_resamples=9999, rng=np.random.default_rng(0))
    assert recorded["ci"]["low"] == pytest.approx(boot.confidence_interval.low, rel=1e-9)
    assert recorded["ci"]["high"] == pytest.approx(boot.confidence_interval.high, rel=1e-9)
    assert recorded["p_value"] == pytest.approx(flips.pvalue, rel=1e-9)
    assert recorded["key"] == "mass_in(tools) \u2212 mass_in(face)"  # sides made outside the test: their names


def test_statistics_are_computed_only_when_a_recorder_summarises(monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnaudit.scores

    calls = {"bootstrap": 0, "permutation": 0}
    bootstrap, permutation = cnnaudit.scores.bootstrap_interval, stats.permutation_test

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("computed a statistic nobody asked for")

    monkeypatch.setattr(cnnaudit.scores, "bootstrap_interval", refuse)
    monkeypatch.setattr(stats, "permutation_test", refuse)
    face, genders = face_mass()
    groups = face.by(genders)
    gap = compare(groups["female"], groups["male"])  # no recorder: an ordinary library object
    assert gap.mean == pytest.approx(groups["female"].mean() - groups["male"].mean())

    def counted(name: str, function: object) -> object:
        def wrapper(*args: object, **kwargs: object) -> object:
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(cnnaudit.scores, "bootstrap_interval", counted("bootstrap", bootstrap))
    monkeypatch.setattr(stats, "permutation_test", counted("permutation", permutation))
    recorder = EvidenceRecorder("t", None)
    with evidence.recording(recorder):
        lazy = compare(groups["female"], groups["male"])
        asked = compare(groups["male"], groups["female"])
        asked.ci(), asked.p_value  # the test's own calls
    assert calls == {"bootstrap": 1, "permutation": 1}  # nothing for `lazy` while the test runs
    out = recorder.finish()["comparisons"]
    assert calls == {"bootstrap": 2, "permutation": 2}  # `lazy` once at finish; `asked` reused from its caches
    assert [c["mean"] for c in out] == [lazy.mean, asked.mean] and out[1]["p_value"] == asked.p_value


def test_the_gates_made_on_a_comparison_are_its_thresholds_passed_or_failed() -> None:
    a, b = Scores([0.1, 0.2, 0.3, 0.25, 0.15, 0.05], "f"), Scores([0.6, 0.7, 0.5, 0.65, 0.55, 0.45], "m")
    recorder = EvidenceRecorder("t", None)
    with evidence.recording(recorder):
        gap = compare(a, b)
        close = compare(a, a, paired=False)
        # every f is below every m: of the C(12, 6) = 924 relabellings only this one is as low, so p = 2 / 924
        assert gap.mean == pytest.approx(0.175 - 0.575) and gap.p_value == pytest.approx(2 / 924) and close.mean == 0
        first = abs(gap.mean) < 0.05 or gap.p_value > 0.01  # both sides evaluated, both false
        second = close.p_value < 0.5 or 0.05 <= close.ci().low  # mirrored: ci().low >= 0.05
    assert not first and not second
    one, two = recorder.finish()["comparisons"]
    assert one["thresholds"] == [
        {"stat": "abs(mean)", "op": "<", "value": 0.05, "actual": abs(gap.mean), "holds": False,
         "margin": pytest.approx(0.05 - 0.4)},
        {"stat": "p_value", "op": ">", "value": 0.01, "actual": gap.p_value, "holds": False,
         "margin": pytest.approx(2 / 924 - 0.01)},
    ]
    assert two["key"] == "f \u2212 f" and two["thresholds"] == [
        {"stat": "mean", "op": "==", "value": 0.0, "actual": 0.0, "holds": True, "margin": None},
        {"stat": "p_value", "op": "<", "value": 0.5, "actual": 1.0, "holds": False, "margin": -0.5},
        {"stat": "ci().low", "op": ">=", "value": 0.05, "actual": close.ci().low, "holds": False,
         "margin": pytest.approx(close.ci().low - 0.05)},
    ]


def test_comparisons_name_their_sides_by_their_keys_in_the_test() -> None:
    values = np.array([0.1, 0.5, 0.2, 0.6, 0.3, 0.7])
    recorder = EvidenceRecorder("t", None)
    with evidence.recording(recorder):
        face = Scores(values, "mass_in(face)", ids=range(6))
        female = face.where(np.array([True, False] * 3))
        male = face.where(np.array([False, True] * 3))
        compare(female, male)
        compare(female, male)
        single = compare(Scores([0.4], "x"), Scores([0.1, 0.2], "y"))
    out = recorder.finish()
    # where() names both halves "mass_in(face)[3/6]"; their keys in the test tell them apart
    assert [s["key"] for s in out["scores"]][1:3] == ["mass_in(face)[3/6]", "mass_in(face)[3/6]#2"]
    keys = [c["key"] for c in out["comparisons"]]
    assert keys[:2] == ["mass_in(face)[3/6] \u2212 mass_in(face)[3/6]#2", "mass_in(face)[3/6] \u2212 mass_in(face)[3/6]#2#2"]
    assert out["comparisons"][0]["mean"] == pytest.approx(0.2 - 0.6)
    # one value on a side: the interval is unbounded and the p-value undefined, both recorded as None
    assert single.ci().low == -np.inf and out["comparisons"][2]["ci"] == {"low": None, "high": None, "level": 0.95}
    assert out["comparisons"][2]["p_value"] is None and out["notes"] == []
    props = dict(junit_properties(out))
    prefix = f"cnnaudit.{keys[0]}"
    assert props[f"{prefix}.mean"] == pytest.approx(-0.4) and props[f"{prefix}.paired"] is False
    assert (props[f"{prefix}.n_a"], props[f"{prefix}.n_b"]) == (3, 3) and props[f"{prefix}.mean_b"] == pytest.approx(0.6)
    assert props[f"{prefix}.p_value"] == out["comparisons"][0]["p_value"]
    assert {k.removeprefix(prefix + ".") for k in props if k.startswith(prefix + ".")} == {
        "mean", "ci_low", "ci_high", "p_value", "paired", "n_a", "n_b", "mean_a", "mean_b", "n", "unmatched_a", "unmatched_b",
    }


# ---- render helpers --------------------------------------------------------------------------------
def test_to_rgb8_accepts_the_usual_layouts() -> None:
    gray = np.array([[0.0, 1.0]])
    assert render.to_rgb8(gray).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    chw = torch.zeros(3, 2, 5)
    chw[0] = 0.5
    assert render.to_rgb8(chw).shape == (2, 5, 3) and render.to_rgb8(chw)[0, 0].tolist() == [128, 0, 0]
    assert render.to_rgb8(np.ones((2, 2, 4), np.uint8)).shape == (2, 2, 3)
    assert render.to_rgb8(np.eye(2, dtype=bool))[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match=r"float images must lie in \[0,1\].*range \[-1, 2\]"):
        render.to_rgb8(np.array([[-1.0, 2.0]]))
    with pytest.raises(ValueError, match="expected an image shaped"):
        render.to_rgb8(np.zeros((2, 2, 2, 2)))


def test_outline_draws_white_inside_and_black_outside_the_border() -> None:
    image = np.full((6, 6, 3), 100, np.uint8)
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    drawn = render.outline(image, mask)[..., 0]
    expected = np.array(
        [
            [100, 0, 0, 0, 0, 100],
            [0, 255, 255, 255, 255, 0],
            [0, 255, 100, 100, 255, 0],
            [0, 255, 100, 100, 255, 0],
            [0, 255, 255, 255, 255, 0],
            [100, 0, 0, 0, 0, 100],
        ]
    )
    assert drawn.tolist() == expected.tolist()
    assert image[0, 1, 0] == 100  # the input is not modified


def test_grid_tiles_row_major_with_padding() -> None:
    tiles = np.stack([np.full((2, 3, 3), v, np.uint8) for v in (10, 20, 30)])
    canvas = render.grid(tiles, pad=1, background=0)
    assert canvas.shape == (2 * 3 + 1, 2 * 4 + 1, 3)  # ceil(sqrt(3)) = 2 columns, 2 rows
    assert canvas[1, 1, 0] == 10 and canvas[1, 5, 0] == 20 and canvas[4, 1, 0] == 30 and canvas[4, 5, 0] == 0


def test_thumbnail_shrinks_the_long_side_and_never_enlarges() -> None:
    image = np.zeros((100, 300, 3), np.uint8)
    assert render.thumbnail(image, 150).shape == (50, 150, 3)
    assert render.thumbnail(image, 400) is image


def test_a_summary_that_fails_becomes_a_note_and_the_rest_is_kept() -> None:
    recorder = EvidenceRecorder("t", None)
    with evidence.recording(recorder):
        broken, fine = Scores([0.1, 0.2], "broken"), Scores([0.3, 0.4], "fine")
        gap = compare(Scores([0.1, 0.2, 0.3], "a"), Scores([0.4, 0.5, 0.6], "b"))
    broken.values = None  # summarising it now fails
    gap.a = None  # and so does the comparison's interval
    out = recorder.finish()
    assert [s["key"] for s in out["scores"]] == ["fine", "a", "b"] and out["comparisons"] == []
    assert [note.split(":")[0] for note in out["notes"]] == [
        "cnnaudit could not summarise comparison 'a \u2212 b'", "cnnaudit could not summarise Scores 'broken'"]


def test_overlay_colours_are_matplotlibs_own_lookup() -> None:
    from matplotlib import colormaps

    generator = np.random.default_rng(0)
    heatmap = np.concatenate([generator.random(4000), [0.0, 1.0, 255 / 256, 1 / 256, 0.5]]).astype(np.float32)[None]
    image = generator.random((1, heatmap.shape[1], 3)).astype(np.float32)
    expected = 0.5 * image + 0.5 * colormaps["jet"](heatmap)[..., :3]  # matplotlib's Colormap.__call__, float64
    drawn = render.overlay(image, heatmap).astype(int)
    assert np.abs(drawn - (np.clip(expected, 0, 1) * 255 + 0.5).astype(int)).max() <= 1  # float32 blend rounding


def test_big_images_are_drawn_at_the_evidence_side_and_say_so(tmp_path: Path) -> None:
    size = (3 * EVIDENCE_SIDE, 2 * EVIDENCE_SIDE)  # 3072 x 2048: drawn at 1024 x 683
    images = torch.zeros(1, 3, *size)
    images[..., : size[0] // 2, :] = 1.0  # white top half
    raw = torch.zeros(1, 3, 2)
    raw[0, 0, 0] = 1.0  # the map's mass in the top-left cell
    recorder = EvidenceRecorder("t", tmp_path)
    with evidence.recording(recorder):
        Heatmaps(raw, image_size=size, method="gradcam", images=images).mass_in(
            Regions([(0, 0, size[1] // 2, size[0] // 3)], image_size=size)
        )
    out = recorder.finish()
    shown = out["heatmaps"][0]["images"][0]
    assert (shown["width"], shown["height"], shown["source_width"], shown["source_height"]) == (683, 1024, 2048, 3072)
    assert evidence_size(size) == (1024, 683)
    pixels = read(tmp_path / shown["file"]).astype(int)
    assert pixels.shape == (1024, 683, 3)
    with evidence.paused():  # the same drawing as at full size, then shrunk (up to JPEG and resampling)
        full = Heatmaps(raw, image_size=size, method="gradcam", images=images).overlay(0)
    assert np.abs(pixels - render.thumbnail(full, EVIDENCE_SIDE).astype(int)).mean() < 2
    extreme = out["scores"][0]["images"]["highest"][0] if out["scores"][0]["images"]["highest"] else out["scores"][0]["images"]["lowest"][0]
    assert (extreme["width"], extreme["height"]) == (683, 1024)
    assert len(list(tmp_path.iterdir())) == 4  # two images, each a file and a thumbnail


def test_a_paired_comparison_of_two_heatmap_sets_shows_the_largest_changes_and_both_distributions(tmp_path: Path) -> None:
    first, second = make_heatmaps(10), make_heatmaps(10)
    second.raw = torch.roll(second.raw, shifts=1, dims=0)  # another "model": each image gets another map
    regions = Regions([(4, 4, 12, 12)] * 10, image_size=(24, 24), name="box")
    recorder = EvidenceRecorder("t.py::test", tmp_path)
    with evidence.recording(recorder):
        a, b = first.mass_in(regions), second.mass_in(regions)
        gap = compare(a, b)
    (summary,) = recorder.finish()["comparisons"]
    change = a.values - b.values
    expected = [str(i) for i in np.argsort(-np.abs(change), kind="stable")[:CHANGES_PER_COMPARISON]]
    assert [c["id"] for c in summary["changes"]] == expected and gap.ids == [str(i) for i in range(10)]
    top = summary["changes"][0]
    assert top["change"] == pytest.approx(change[int(expected[0])]) and len(top["images"]) == 3
    assert [image["caption"].split(" = ")[0] for image in top["images"]] == ["mass_in(box)", "mass_in(box)#2", "a − b"]
    # the difference map: red where a's map is the higher one, blue where b's is (RdBu_r over the image in grey)
    i = int(expected[0])
    scaled = [h.raw[i].clamp(min=0) / h.raw[i].clamp(min=0).max() for h in (first, second)]
    diff_image = read(tmp_path / top["images"][2]["file"]).astype(int)
    a_higher = torch.nn.functional.interpolate((scaled[0] - scaled[1])[None, None], size=(24, 24), mode="bilinear",
                                               align_corners=False)[0, 0].numpy()
    red_minus_blue = diff_image[..., 0] - diff_image[..., 2]
    assert np.corrcoef(red_minus_blue.ravel(), a_higher.ravel())[0, 1] > 0.8
    hist = summary["histogram"]
    assert sum(hist["a"]) == sum(hist["b"]) == 10 and hist["low"] <= min(a.min(), b.min()) and hist["high"] >= max(a.max(), b.max())
