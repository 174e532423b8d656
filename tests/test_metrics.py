"""Attention metrics: hand-computed values, undefined cases, ties, resolutions, RISE AUCs, sanity check."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from cnnaudit import metrics
from cnnaudit.heatmaps import Heatmaps
from cnnaudit.images import as_batch
from cnnaudit.regions import Regions
from cnnaudit.subject import Subject

NAN = float("nan")
SIZE = (4, 4)


def heatmaps(raw, size=SIZE, **kwargs) -> Heatmaps:
    raw = torch.as_tensor(raw, dtype=torch.float32)
    return Heatmaps(raw if raw.ndim == 3 else raw[None], image_size=size, method="test", **kwargs)


def one(scores) -> float:
    assert scores.n == 1
    return float(scores.values[0])


# 2x2 -> 4x4 bilinear (align_corners=False) of [[1, 0], [0, 0]] is outer(w, w), w = (1, .75, .25, 0)
CORNER = heatmaps([[1.0, 0.0], [0.0, 0.0]])


def test_mass_in_and_enrichment_hand_computed():
    # total mass (1 + .75 + .25)^2 = 4; top-left 2x2 holds 1.75^2 = 3.0625; right half 2 * .25 = .5
    assert one(metrics.mass_in(CORNER, [(0, 0, 2, 2)])) == pytest.approx(3.0625 / 4)
    assert one(metrics.mass_in(CORNER, [(2, 0, 4, 4)])) == pytest.approx(0.5 / 4)
    assert one(metrics.enrichment(CORNER, [(0, 0, 2, 2)])) == pytest.approx((3.0625 / 4) / (4 / 16))
    assert one(metrics.enrichment(CORNER, [(0, 0, 4, 4)])) == pytest.approx(1.0)
    uniform = heatmaps(torch.full((1, 3, 3), 0.2))
    for box in [(0, 0, 1, 1), (1, 0, 4, 3), (0, 0, 4, 4)]:
        assert one(metrics.enrichment(uniform, [box])) == pytest.approx(1.0)


def test_metrics_ignore_negative_raw_values():
    signed = heatmaps([[[2.0, -5.0], [-1.0, 2.0]]], size=(2, 2))
    assert one(metrics.mass_in(signed, [(0, 0, 1, 1)])) == pytest.approx(0.5)


ALL = {
    "mass_in": metrics.mass_in,
    "enrichment": metrics.enrichment,
    "pointing_game": metrics.pointing_game,
    "localization_iou": metrics.localization_iou,
    "rank_accuracy": metrics.rank_accuracy,
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_empty_regions_and_zero_maps_are_undefined_never_hits(name):
    good = torch.zeros(4, 4)
    good[1, 1] = 1.0
    zero = torch.zeros(4, 4)
    negative = -torch.ones(4, 4)  # all zero after ReLU
    maps = heatmaps(torch.stack([good, good, good, good, zero, negative, good]))
    regions = Regions(
        [None, (1, 1, 1, 3), (5, 5, 9, 9), [], (0, 0, 4, 4), (0, 0, 4, 4), (0, 0, 4, 4)], image_size=SIZE, name="tools"
    )
    scores = ALL[name](maps, regions)
    assert np.isnan(scores.values[:6]).all()
    assert scores.values[6] == pytest.approx({"localization_iou": 1 / 16}.get(name, 1.0))
    assert scores.n_undefined == 6 and scores.name == f"{name}(tools)"
    if name == "pointing_game":
        assert np.isnan(metrics.pointing_game(maps, regions, tolerance=100).values[:6]).all()


def test_pointing_game_tolerance_and_ties():
    raw = torch.zeros(8, 8)
    raw[1, 6] = 1.0  # 3 px right of the region's last column (3)
    one_peak = heatmaps(raw, size=(8, 8))
    region = [(0, 0, 4, 4)]
    assert one(metrics.pointing_game(one_peak, region, tolerance=0)) == 0.0
    assert one(metrics.pointing_game(one_peak, region, tolerance=2.9)) == 0.0
    assert one(metrics.pointing_game(one_peak, region, tolerance=3)) == 1.0
    assert one(metrics.pointing_game(one_peak, [(6, 1, 7, 2)], tolerance=0)) == 1.0
    tied = raw.clone()
    tied[2, 2] = tied[3, 3] = 1.0  # three maxima, two of them inside
    assert one(metrics.pointing_game(heatmaps(tied, size=(8, 8)), region, tolerance=0)) == pytest.approx(2 / 3)
    # a uniform map scores chance (the area fraction), not a hit
    assert one(metrics.pointing_game(heatmaps(torch.ones(8, 8), size=(8, 8)), region, tolerance=0)) == pytest.approx(16 / 64)


@pytest.mark.parametrize("layer, size", [((6, 9), (50, 70)), ((2, 2), (64, 64))])
def test_a_flat_map_upsampled_scores_chance(layer, size):
    """Bilinear upsampling of equal layer values rounds them a few float32 units apart (a flat 6x9 map at
    50x70 px has 3 pixels exactly at its maximum, so it scored 0.667 for a 10x10 box, and a 2x2 one at
    64x64 scored 0): ties within the dtype's rounding count as ties, and a flat map scores the area fraction."""
    maps = Heatmaps(torch.full((1, *layer), 0.37), image_size=size, method="test")
    mass = maps.mass[0]
    assert (mass == mass.max()).sum() < mass.numel()  # the rounding this test is about is there
    assert one(metrics.pointing_game(maps, [(0, 0, 10, 10)], tolerance=0)) == pytest.approx(100 / (size[0] * size[1]))
    peaked = torch.full((1, *layer), 0.37)
    peaked[0, 0, 0] = 0.38  # a real maximum, 3% above the rest: its plateau in the top-left quadrant, nothing else
    quadrant = [(0, 0, size[1] // 2, size[0] // 2)]
    assert one(metrics.pointing_game(Heatmaps(peaked, image_size=size, method="test"), quadrant, tolerance=0)) == 1.0
    assert one(metrics.pointing_game(Heatmaps(peaked, image_size=size, method="test"), [(size[1] // 2, 0, size[1], size[0])],
                                     tolerance=0)) == 0.0


@pytest.mark.parametrize("tolerance", [0.5, 1, 1.5, 2.9, 3, math.sqrt(8), 7.5, 15, 100])
def test_within_distance_is_the_euclidean_distance_transform(tolerance):
    """The device dilation against scipy's exact distance transform, on sparse random masks (non-square, ragged edges)."""
    from scipy import ndimage

    generator = torch.Generator().manual_seed(int(tolerance * 10))
    masks = torch.rand(5, 23, 37, generator=generator) > 0.995
    masks[3] = False  # an empty region stays empty
    masks[4, 0, 36] = True  # a corner pixel
    expected = np.stack([ndimage.distance_transform_edt(~m) <= tolerance if m.any() else np.zeros_like(m) for m in masks.numpy()])
    np.testing.assert_array_equal(metrics.within_distance(masks, tolerance).numpy(), expected)


def test_localization_iou_largest_component_threshold_and_ties():
    raw = torch.zeros(8, 8)
    raw[0:2, 0:3] = 1.0  # 6 px at the maximum
    raw[5:8, 4:8] = 0.5  # 12 px above 15% of the maximum: the largest component
    raw[4, 0] = 0.1  # below 15%: ignored
    maps = heatmaps(raw, size=(8, 8))
    # bbox of the large component is (4, 5, 8, 8); with the region (4, 4, 8, 8): 12 / 16
    assert one(metrics.localization_iou(maps, [(4, 4, 8, 8)])) == pytest.approx(12 / 16)
    # threshold 0.6 keeps only the 6 px block (0, 0, 3, 2); with the region (0, 0, 4, 4): 6 / 16
    assert one(metrics.localization_iou(maps, [(0, 0, 4, 4)], threshold=0.6)) == pytest.approx(6 / 16)
    # threshold 0.05 adds the 0.1 pixel as a component of its own: the 12 px block still wins
    assert one(metrics.localization_iou(maps, [(4, 4, 8, 8)], threshold=0.05)) == pytest.approx(12 / 16)
    # 8-connectivity: a diagonal pair is one component; equal areas -> the first in raster order
    ties = torch.zeros(8, 8)
    ties[0, 0] = ties[1, 1] = ties[5, 5] = ties[5, 6] = 1.0
    tie_maps = heatmaps(ties, size=(8, 8))
    assert one(metrics.localization_iou(tie_maps, [(0, 0, 2, 2)])) == 1.0
    assert one(metrics.localization_iou(tie_maps, [(5, 5, 7, 6)])) == 0.0


def test_rank_accuracy_hand_computed_with_ties():
    raw = torch.arange(16, dtype=torch.float32).reshape(4, 4)  # top-4 pixels: the last row
    assert one(metrics.rank_accuracy(heatmaps(raw), [(0, 3, 4, 4)])) == 1.0
    assert one(metrics.rank_accuracy(heatmaps(raw), [(1, 2, 4, 4)])) == pytest.approx(5 / 6)  # top-6: 15..10, 12 is out
    peak = torch.zeros(4, 4)
    peak[0, 1] = 1.0
    # K = 4: the peak (inside) + 3 of the 15 tied zeros, 3 of which are inside -> (1 + 3 * 3/15) / 4
    assert one(metrics.rank_accuracy(heatmaps(peak), [(1, 0, 3, 2)])) == pytest.approx((1 + 3 * 3 / 15) / 4)
    assert one(metrics.rank_accuracy(heatmaps(torch.ones(4, 4)), [(1, 0, 3, 2)])) == pytest.approx(4 / 16)


def test_regions_at_another_resolution_than_the_map():
    raw = torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(0))
    maps = heatmaps(raw)  # layer 2x2, input 4x4
    at_input = Regions([(1, 1, 3, 3), (0, 0, 2, 4), (2, 0, 4, 1)], image_size=SIZE)
    at_double = Regions([(2, 2, 6, 6), (0, 0, 4, 8), (4, 0, 8, 2)], image_size=(8, 8))
    masks16 = at_input.masks(size=(16, 16))
    as_masks = Regions(masks16)  # boolean masks at 16x16 for a 4x4 input
    for metric in ALL.values():
        expected = metric(maps, at_input).values
        np.testing.assert_allclose(metric(maps, at_double).values, expected)
        np.testing.assert_allclose(metric(maps, as_masks).values, expected)
    assert one(metrics.mass_in(CORNER, Regions([(0, 0, 4, 4)], image_size=(8, 8)))) == pytest.approx(3.0625 / 4)


def test_each_map_is_scored_alone_never_normalised_across_the_batch():
    raw = torch.rand(5, 3, 3, generator=torch.Generator().manual_seed(1))
    scaled = raw.clone()
    scaled[0] *= 1000.0
    scaled[3] *= 1e-3
    regions = Regions([(0, 0, 2, 2), (1, 1, 4, 4), (0, 2, 4, 4), (2, 0, 3, 4), (0, 0, 1, 1)], image_size=SIZE)
    for metric in ALL.values():
        np.testing.assert_allclose(metric(heatmaps(scaled), regions).values, metric(heatmaps(raw), regions).values, rtol=1e-6)
        alone = [one(metric(heatmaps(raw[i]), regions[i : i + 1])) for i in range(5)]
        np.testing.assert_allclose(metric(heatmaps(raw), regions).values, alone, rtol=1e-6)


def test_scores_carry_their_source_and_the_heatmaps_methods_delegate():
    raw = torch.rand(2, 2, 2, generator=torch.Generator().manual_seed(2))
    maps = Heatmaps(raw, image_size=SIZE, method="test", ids=["a", "b"])
    regions = Regions([(0, 0, 2, 2), (2, 2, 4, 4)], image_size=SIZE, name="tools")
    scores = maps.mass_in(regions)
    assert scores.name == "mass_in(tools)" and scores.ids == ["a", "b"] and scores.unit == "image"
    assert scores.source["heatmaps"] is maps and scores.source["regions"] is regions
    assert scores.source["index"].tolist() == [0, 1]
    assert metrics.mass_in(maps, [(0, 0, 2, 2), (2, 2, 4, 4)]).name == "mass_in(region)"
    for method in ("enrichment", "rank_accuracy"):
        np.testing.assert_array_equal(getattr(maps, method)(regions).values, getattr(metrics, method)(maps, regions).values)
    np.testing.assert_array_equal(maps.pointing_game(regions, tolerance=1).values, metrics.pointing_game(maps, regions, tolerance=1).values)
    np.testing.assert_array_equal(maps.localization_iou(regions, threshold=0.5).values, metrics.localization_iou(maps, regions, threshold=0.5).values)
    with pytest.raises(ValueError, match="cover 1 images but there are 2 maps"):
        metrics.mass_in(maps, regions[:1])


def test_box_iou():
    assert metrics.box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert metrics.box_iou((0, 0, 1, 1), (1, 0, 2, 1)) == 0.0


# ---- deletion / insertion on a model whose answer is known ---------------------------------------
H = W = 8
REGION = torch.zeros(H, W, dtype=torch.bool)
REGION[2:5, 1:5] = True  # 12 of 64 pixels
GAIN = 4.0


class RegionMean(nn.Module):
    """logits = (GAIN * mean of the image over REGION, 0): p(class 0) = sigmoid(GAIN * mean)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("region", REGION.clone())
        self.conv = nn.Conv2d(3, 3, 1)  # unused: gives the subject a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1)[:, self.region].mean(dim=1) * GAIN
        return torch.stack([mean, torch.zeros_like(mean)], dim=1)


def expected_auc(region_left: list[float], steps: int) -> float:
    """Trapezoidal AUC of sigmoid(GAIN * mean over the region) along the steps, computed by hand."""
    p = [1 / (1 + math.exp(-GAIN * m)) for m in region_left]
    return sum((p[i] + p[i + 1]) / 2 for i in range(steps)) / steps


@pytest.fixture
def region_subject():
    return Subject(RegionMean(), device="cpu", batch_size=7)


def perfect_and_reversed(images, subject):
    raw = torch.stack([REGION.float(), (~REGION).float()])  # region first / region last
    return Heatmaps(raw, image_size=(H, W), method="test", targets=[0, 0], images=images, subject=subject)


def test_deletion_and_insertion_auc_of_a_perfect_and_a_reversed_map(region_subject):
    steps = 16  # k_i = 4 i pixels changed at step i
    maps = perfect_and_reversed(torch.ones(2, 3, H, W), region_subject)
    removed_perfect = [min(4 * i, 12) for i in range(steps + 1)]  # region pixels come first
    removed_reversed = [max(0, 4 * i - 52) for i in range(steps + 1)]  # after the 52 others
    deletion = metrics.deletion(maps, steps=steps, substrate="zeros")
    assert deletion.name == "deletion(zeros)"
    assert deletion.values[0] == pytest.approx(expected_auc([1 - r / 12 for r in removed_perfect], steps))
    assert deletion.values[1] == pytest.approx(expected_auc([1 - r / 12 for r in removed_reversed], steps))
    insertion = metrics.insertion(maps, steps=steps, substrate="zeros")
    assert insertion.values[0] == pytest.approx(expected_auc([r / 12 for r in removed_perfect], steps))
    assert insertion.values[1] == pytest.approx(expected_auc([r / 12 for r in removed_reversed], steps))
    assert deletion.values[0] < deletion.values[1] and insertion.values[0] > insertion.values[1]
    curves = deletion.source["curves"]
    assert curves.shape == (2, steps + 1) and curves[0, 0] == pytest.approx(1 / (1 + math.exp(-GAIN)))


def test_substrates(region_subject):
    steps = 16
    # image = 1 on the region, 0 elsewhere; its mean is 12/64 everywhere in the "mean" substrate
    image = REGION.float().expand(1, 3, H, W).clone()
    maps = perfect_and_reversed(torch.cat([image, image]), region_subject)
    removed = [min(4 * i, 12) for i in range(steps + 1)]
    mean = metrics.deletion(maps, steps=steps, substrate="mean")
    assert mean.values[0] == pytest.approx(expected_auc([(12 - r + r * 12 / 64) / 12 for r in removed], steps))
    # blurring a constant image changes nothing: the curve stays at its first value
    flat = perfect_and_reversed(torch.ones(2, 3, H, W), region_subject)
    blur = metrics.insertion(flat, steps=steps)
    assert blur.name == "insertion(blur)"
    np.testing.assert_allclose(blur.values, 1 / (1 + math.exp(-GAIN)), rtol=1e-5)
    half = metrics.deletion(flat, steps=steps, substrate=lambda x: x * 0.5)
    assert half.values[0] == pytest.approx(expected_auc([1 - r / 24 for r in removed], steps))
    with pytest.raises(ValueError, match="unknown substrate 'noise'"):
        metrics.deletion(flat, substrate="noise")


def test_deletion_undefined_and_bad_input(region_subject):
    raw = torch.stack([REGION.float(), torch.zeros(H, W)])
    maps = Heatmaps(raw, image_size=(H, W), method="test", targets=[0, 0], images=torch.ones(2, 3, H, W), subject=region_subject)
    values = metrics.deletion(maps, steps=4).values
    assert not np.isnan(values[0]) and np.isnan(values[1])
    with pytest.raises(ValueError, match="pass subject="):
        metrics.deletion(Heatmaps(raw, image_size=(H, W), method="test", targets=[0, 0], images=torch.ones(2, 3, H, W)))
    with pytest.raises(ValueError, match="callable target"):
        metrics.deletion(Heatmaps(raw, image_size=(H, W), method="test", images=torch.ones(2, 3, H, W)), region_subject)


# ---- randomisation sanity check ------------------------------------------------------------------
def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )


def brightness(subject, images, target) -> Heatmaps:
    """An "explainer" that never looks at the model: the image's brightness."""
    x = as_batch(images)
    return Heatmaps(x.mean(dim=1), image_size=tuple(x.shape[-2:]), method="brightness")


def test_sanity_check_passes_gradcam_fails_a_weight_independent_explainer_and_leaves_the_model_alone():
    model = small_cnn()
    model.train()
    model[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    subject = Subject(model, layer="4", device="cpu")
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))

    check = metrics.sanity_check(subject, images, target=0)
    assert check.name == "sanity_check(gradcam)" and check.unit == "layer"
    assert check.ids == ["8", "4", "2", "0"]  # parameterised modules, from the top
    assert check.source["correlations"].shape == (4, 6)
    assert check.max() < 0.8  # every re-initialisation changed the maps

    blind = metrics.sanity_check(subject, images, target=0, method=brightness)
    np.testing.assert_allclose(blind.values, 1.0)
    assert not blind.max() < 0.8

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and not model[0].weight.requires_grad and model[2].weight.requires_grad
    again = metrics.sanity_check(subject, images, target=0, layers=["8", "4"])
    np.testing.assert_allclose(again.values, check.values[:2])  # seeded: the same re-initialisations


def test_sanity_check_by_blocks_reinitialises_every_parameterised_module_inside():
    import copy

    from scipy import stats

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )
    subject = Subject(model, layer="1", device="cpu")
    images = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    check = metrics.sanity_check(subject, images, target=0, layers=["4", "1"])
    # by hand: the head under seed 0, then both convs of block "1" under seed 1, cumulatively
    twin = copy.deepcopy(model)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        twin[4].reset_parameters()
        torch.manual_seed(1)
        twin[1][0].reset_parameters()
        twin[1][2].reset_parameters()
    before = subject.gradcam(images, target=0).raw.flatten(1).numpy()
    after = Subject(twin, layer="1", device="cpu").gradcam(images, target=0).raw.flatten(1).numpy()
    expected = np.mean([stats.spearmanr(a, b).statistic for a, b in zip(before, after)])
    assert check.values[1] == pytest.approx(expected)
    with pytest.raises(ValueError, match="layer '2' has no parameters"):
        metrics.sanity_check(subject, images, target=0, layers=["2"])


class Scale4d(nn.Module):
    """A module with a 4-D parameter and no ``reset_parameters``: re-initialised with ``normal_``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(4, 3, 2, 2) + 0.5)


def test_sanity_check_reinitialises_a_channels_last_model_as_its_contiguous_twin():
    """Random fills draw in memory order, so a channels-last weight got other values from the same
    seed (torch 2.11's Conv2d.reset_parameters too: a sanity check 0.12 away on the demo model). The
    re-initialisation fills contiguous storage, then restores the layout."""
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    contiguous = metrics.sanity_check(Subject(small_cnn(), layer="4", device="cpu"), images, target=0)
    model = small_cnn().to(memory_format=torch.channels_last)
    np.testing.assert_allclose(metrics.sanity_check(Subject(model, layer="4", device="cpu"), images, target=0).values,
                               contiguous.values, atol=1e-6)
    conv = nn.Conv2d(8, 16, 3).to(memory_format=torch.channels_last)
    expected = nn.Conv2d(8, 16, 3)
    with torch.random.fork_rng():
        metrics._reinitialise(conv, 7, "conv")
        torch.manual_seed(7)
        expected.reset_parameters()
    assert torch.equal(conv.weight, expected.weight) and torch.equal(conv.bias, expected.bias)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain = Scale4d()
    channels_last = copy.deepcopy(plain)
    channels_last.weight.data = channels_last.weight.data.contiguous(memory_format=torch.channels_last)
    for module in (plain, channels_last):
        metrics._reinitialise(module, 3, "scale")
    assert torch.equal(plain.weight, channels_last.weight)
    assert channels_last.weight.is_contiguous(memory_format=torch.channels_last) and not channels_last.weight.is_contiguous()


def test_sanity_check_records_only_the_audited_models_maps_as_evidence():
    from cnnaudit import evidence
    from cnnaudit.records import EvidenceRecorder

    subject = Subject(small_cnn(), layer="4", device="cpu")
    recorder = EvidenceRecorder("test", None)
    with evidence.recording(recorder):
        metrics.sanity_check(subject, torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), target=0)
    recorded = recorder.finish()
    assert len(recorded["heatmaps"]) == 1  # the original maps, not one per randomised twin
    assert [model["sha256"] for model in recorded["models"]] == [subject.identity()["sha256"]]


# ---- regions by name ---------------------------------------------------------------------------------
def test_a_region_name_is_the_region_of_the_imageset_the_maps_were_computed_on():
    from cnnaudit.data import ImageSet

    people = ImageSet(torch.zeros(3, 3, 4, 4), labels=["a", "b", "a"], ids=["x", "y", "z"],
                      regions={"tools": [(0, 0, 2, 2), (0, 0, 4, 4), (2, 0, 4, 4)], "face": [None, None, (0, 0, 1, 1)]})
    subset = people.where(label="a")  # images x and z: the names must resolve to these two, not to x and y
    maps = Heatmaps(CORNER.raw.expand(2, 2, 2), image_size=SIZE, method="test", images=subset, ids=subset.ids)
    by_name = maps.mass_in("tools")
    assert by_name.name == "mass_in(tools)" and by_name.ids == ["x", "z"]
    assert by_name.values.tolist() == pytest.approx([3.0625 / 4, 0.5 / 4])  # see test_mass_in_and_enrichment_hand_computed
    assert maps.pointing_game("tools", tolerance=0).values.tolist() == [1.0, 0.0]
    for name, metric in ALL.items():
        np.testing.assert_array_equal(metric(maps, "face").values, metric(maps, subset.region("face")).values, err_msg=name)
    np.testing.assert_array_equal(maps.localization_iou("tools", threshold=0.5).values,
                                  maps.localization_iou(subset.region("tools"), threshold=0.5).values)
    with pytest.raises(KeyError, match=r"pointing_game\('tool'\): unknown region 'tool' \(did you mean 'tools'\?\); available: 'face', 'tools'"):
        maps.pointing_game("tool")


def test_a_region_name_on_maps_of_plain_tensors_says_to_pass_the_regions():
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    from_tensor = Subject(model, layer="0", device="cpu").gradcam(torch.rand(2, 3, 4, 4), target=0)
    with pytest.raises(ValueError, match=r"mass_in\('tools'\): a region name is looked up in the ImageSet the heatmaps were "
                                         r"computed on, but these were computed from a Tensor, not an ImageSet; pass the regions "
                                         r"themselves, e.g. mass_in\(images\.region\('tools'\)\)"):
        from_tensor.mass_in("tools")
    with pytest.raises(ValueError, match=r"localization_iou\('face'\): .* computed without their images"):
        CORNER.localization_iou("face")
