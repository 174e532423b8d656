"""The public contract (the user-facing names and behaviour the product promises), end to end, and the
design's example audit run as code.

Every check compares against an independent computation (plain autograd, numpy, a hand-computed
value) or an invariant of the contract. The example audit runs on a model whose weights are
set by hand so that the true answer is known: the "doctor" score reads red tools only, the "nurse"
score blue tools only; a second, biased model's nurse score also reads (female-length) hair, and
the same audit must fail on it.
"""

from __future__ import annotations

import inspect
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import cnnaudit as ca

CAM_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "scorecam")
SALIENCY_METHODS = ("guided_backprop", "deconvnet", "guided_gradcam")
CLASSES = ["cat", "doctor", "nurse"]


# ---- small models ------------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    """conv-ReLU-conv plus a 1x1 strided ``downsample`` projection, as in torchvision's BasicBlock."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        out += self.downsample(x)
        return self.relu(out)


class SmallNet(nn.Module):
    """layer1 (nested Sequential) -> layer2 (residual block with downsample) -> pool -> fc (3 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()))
        self.layer2 = nn.Sequential(ResidualBlock(6, 8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer2(self.layer1(x))).flatten(1))


class SegNet(nn.Module):
    """A segmentation-style model: per-pixel scores of 2 classes, (N,2,H,W)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.fixture
def net() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet().eval()


@pytest.fixture
def subject(net: SmallNet) -> ca.Subject:
    return ca.Subject(net, layer="layer2", classes=CLASSES, preprocess=ca.normalize([0.5] * 3, [0.25] * 3),
                      device="cpu", batch_size=3)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def activation_and_logits(subject: ca.Subject, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle's capture: a plain forward hook (no cnnaudit code) on ``layer``."""
    store: list[torch.Tensor] = []
    module = dict(subject.model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: store.append(o))
    try:
        with torch.enable_grad():
            logits = subject.model(subject.prepare(x.clone().requires_grad_()))
    finally:
        handle.remove()
    return store[0], logits


def oracle_gradcam(subject: ca.Subject, x: torch.Tensor, layer: str, score) -> torch.Tensor:
    """Grad-CAM by hand: ``sum_k mean_ij(dS/dA_kij) A_kij``, per image, with ``torch.autograd.grad``."""
    maps = []
    for i in range(x.shape[0]):
        A, out = activation_and_logits(subject, x[i : i + 1], layer)
        (dA,) = torch.autograd.grad(score(out).sum(), A)
        maps.append((dA.mean(dim=(2, 3), keepdim=True) * A).sum(1)[0].detach())
    return torch.stack(maps)


# ---- names and signatures ----------------------------------------------------------------------
def test_public_names_and_signatures():
    for name in ("Subject", "Heatmaps", "Scores", "ImageSet", "Visualizations", "compare", "load_weights", "normalize"):
        assert hasattr(ca, name), name
    params = inspect.signature(ca.Subject).parameters
    assert list(params)[:6] == ["model", "layer", "classes", "preprocess", "device", "batch_size"]
    assert (params["layer"].default, params["classes"].default, params["preprocess"].default, params["device"].default) == (
        "auto", None, None, "auto")
    assert isinstance(params["batch_size"].default, int) and params["batch_size"].default >= 1
    gradcam = inspect.signature(ca.Subject.gradcam).parameters
    assert list(gradcam)[1:5] == ["images", "target", "layer", "method"]
    assert (gradcam["target"].default, gradcam["layer"].default, gradcam["method"].default) == (None, None, "gradcam")
    saliency = inspect.signature(ca.Subject.saliency).parameters
    assert list(saliency)[1:4] == ["images", "target", "method"] and saliency["method"].default == "guided_backprop"
    from cnnaudit.maximize import maximize as maximize_function

    maximize = inspect.signature(maximize_function).parameters
    for name in ("layer", "channels", "steps", "size", "seed"):
        assert name in maximize, name
    assert maximize["seed"].default == 0
    assert "tolerance" in inspect.signature(ca.Heatmaps.pointing_game).parameters
    assert inspect.signature(ca.Heatmaps.localization_iou).parameters["threshold"].default == 0.15
    assert inspect.signature(ca.Scores.ci).parameters["level"].default == 0.95
    assert list(inspect.signature(ca.ImageSet).parameters)[:5] == ["images", "labels", "regions", "groups", "ids"]
    visualizations = ca.Visualizations
    for name in ("relative_to", "dead", "stability", "high_frequency_energy", "diversity", "activation"):
        assert hasattr(visualizations, name), name
    assert "eps" in inspect.signature(visualizations.dead).parameters
    assert "seeds" in inspect.signature(visualizations.stability).parameters


# ---- Subject.layers ------------------------------------------------------------------------------
def test_layers_inventory_matches_named_modules_and_a_plain_probe(subject):
    inventory = subject.layers()
    names = [name for name, _ in subject.model.named_modules() if name]
    assert [layer.name for layer in inventory] == names
    assert {"layer1.0.0", "layer2.0.downsample", "layer2.0.downsample.0", "layer2.0.conv2"} <= set(names)
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name: str):
        return lambda module, inputs, output: None if name in shapes else shapes.update({name: tuple(output.shape[1:])})

    handles = [m.register_forward_hook(hook(n)) for n, m in subject.model.named_modules() if n]
    try:
        with torch.no_grad():
            subject.model(torch.zeros(1, 3, 224, 224))  # .layers() probes at 224x224 before any image was seen
    finally:
        for handle in handles:
            handle.remove()
    for layer in inventory:
        module = dict(subject.model.named_modules())[layer.name]
        assert layer.type == type(module).__name__
        assert layer.output_shape == shapes[layer.name], layer.name
        assert layer.channels == shapes[layer.name][0], layer.name
    assert inventory["layer2.0.downsample.0"].output_shape == (8, 112, 112)
    assert inventory["fc"].output_shape == (3,)


# ---- Subject.gradcam ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", CAM_METHODS)
def test_gradcam_maps_and_raw_follow_the_conventions(subject, images, method):
    heatmaps = subject.gradcam(images, method=method)
    assert isinstance(heatmaps, ca.Heatmaps) and heatmaps.layer == "layer2"
    maps, raw = heatmaps.maps, heatmaps.raw
    assert maps.dtype == torch.float32 and tuple(maps.shape) == (5, 32, 32)
    assert raw.dtype == torch.float32 and tuple(raw.shape) == (5, 16, 16)  # layer2 is at half resolution
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    # maps = bilinear(align_corners=False) upsample of relu(raw), divided by its per-image max
    up = F.interpolate(raw.clamp(min=0)[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    peak = up.flatten(1).amax(1)
    expected = torch.where(peak[:, None, None] > 0, up / peak.clamp(min=1e-30)[:, None, None], torch.zeros_like(up))
    torch.testing.assert_close(maps, expected)
    assert torch.equal(heatmaps.zero, peak <= 0)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_gradcam_target_forms_agree(subject, images, method):
    predicted = subject.logits(images).argmax(1).tolist()
    by_none = subject.gradcam(images, method=method)
    assert by_none.targets.tolist() == predicted
    torch.testing.assert_close(by_none.raw, subject.gradcam(images, target=predicted, method=method).raw)

    by_index = subject.gradcam(images, target=2, method=method)
    by_name = subject.gradcam(images, target="nurse", method=method)
    by_callable = subject.gradcam(images, target=lambda out: out[:, 2], method=method)
    assert by_index.targets.tolist() == by_name.targets.tolist() == [2] * 5
    assert by_callable.targets.tolist() == [-1] * 5
    torch.testing.assert_close(by_index.raw, by_name.raw)
    torch.testing.assert_close(by_index.raw, by_callable.raw)

    per_image = ["cat", "doctor", "nurse", 1, 0]
    batched = subject.gradcam(images, target=per_image, method=method)
    assert batched.targets.tolist() == [0, 1, 2, 1, 0]
    one_by_one = torch.cat([subject.gradcam(images[i : i + 1], target=t, method=method).raw for i, t in enumerate(per_image)])
    torch.testing.assert_close(batched.raw, one_by_one, rtol=1e-4, atol=1e-6)


def test_gradcam_equals_a_plain_autograd_oracle(subject, images):
    heatmaps = subject.gradcam(images, target="doctor", layer="layer1")
    expected = oracle_gradcam(subject, images, "layer1", lambda out: out[:, 1])
    torch.testing.assert_close(heatmaps.raw, expected, rtol=1e-4, atol=1e-6)
    assert heatmaps.layer == "layer1" and tuple(heatmaps.raw.shape) == (5, 32, 32)


def test_uint8_hwc_images_equal_float_images(subject):
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    as_float = torch.from_numpy(pixels.copy()).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(subject.gradcam(pixels, target=1).raw, subject.gradcam(as_float, target=1).raw)
    torch.testing.assert_close(subject.gradcam(pixels[0], target=1).raw, subject.gradcam(as_float[:1], target=1).raw)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_callable_target_on_a_segmentation_output(method):
    torch.manual_seed(1)
    model = SegNet().eval()
    subject = ca.Subject(model, layer="body", device="cpu")
    x = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(24, 24)
    mask[4:12, 6:18] = 1

    def score(out: torch.Tensor) -> torch.Tensor:  # mean class-1 score inside the mask, one per image
        return (out[:, 1] * mask).sum((1, 2)) / mask.sum()

    heatmaps = subject.gradcam(x, target=score, method=method)
    assert tuple(heatmaps.maps.shape) == (3, 24, 24) and heatmaps.targets.tolist() == [-1, -1, -1]
    if method == "gradcam":
        torch.testing.assert_close(heatmaps.raw, oracle_gradcam(subject, x, "body", score), rtol=1e-4, atol=1e-6)
    if method != "eigencam":  # Eigen-CAM ignores the target by definition
        with pytest.raises(ValueError, match="callable"):
            subject.gradcam(x, target=1, method=method)


# ---- Subject.saliency -----------------------------------------------------------------------------
def test_saliency_methods(subject, images):
    maps = {method: subject.saliency(images, target="doctor", method=method) for method in SALIENCY_METHODS}
    for method, heatmaps in maps.items():
        assert isinstance(heatmaps, ca.Heatmaps), method
        assert tuple(heatmaps.raw.shape) == tuple(heatmaps.maps.shape) == (5, 32, 32), method
        assert heatmaps.maps.dtype == heatmaps.raw.dtype == torch.float32
        assert float(heatmaps.raw.min()) >= 0.0  # max_c |gradient|
        assert float(heatmaps.maps.max()) == pytest.approx(1.0)
    assert maps["guided_backprop"].layer == maps["deconvnet"].layer == "input"
    assert not torch.allclose(maps["guided_backprop"].raw, maps["deconvnet"].raw)
    # guided Grad-CAM = guided backprop x bilinear(relu(Grad-CAM)) at input resolution
    cam = subject.gradcam(images, target="doctor").raw
    up = F.interpolate(cam.clamp(min=0)[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(maps["guided_gradcam"].raw, maps["guided_backprop"].raw * up, rtol=1e-4, atol=1e-7)
    assert maps["guided_gradcam"].layer == "layer2"


# ---- Subject.maximize -> Visualizations -------------------------------------------------------------
def test_maximize_gives_visualizations_with_scores(subject, images, snapshot, same_state):
    before = snapshot(subject.model)
    vis = subject.maximize("layer1.0.0", channels="all", steps=3, size=32, seed=0)
    same_state(before, snapshot(subject.model))
    assert isinstance(vis, ca.Visualizations)
    assert tuple(vis.images.shape) == (6, 3, 32, 32)
    assert float(vis.images.min()) >= 0.0 and float(vis.images.max()) <= 1.0
    activation = vis.activation
    assert isinstance(activation, ca.Scores) and activation.n == 6 and activation.values.dtype == np.float64
    # .activation is the channel mean of the layer on the final (untransformed) images
    with torch.no_grad():
        direct = subject.model.layer1[0][0](subject.preprocess(vis.images)).mean(dim=(2, 3)).diagonal()
    np.testing.assert_allclose(activation.values, direct.double().numpy(), rtol=1e-4, atol=1e-6)
    assert vis.dead(eps=1e9) == list(range(6)) and vis.dead(eps=-1e9) == []
    relative = vis.relative_to(ca.ImageSet(images))
    with torch.no_grad():
        best = subject.model.layer1[0][0](subject.preprocess(images)).mean(dim=(2, 3)).amax(0).double().numpy()
    np.testing.assert_allclose(relative.values, np.where(best > 0, activation.values / best, np.nan), rtol=1e-4)
    stability = vis.stability(seeds=(1,))
    assert stability.activation_spread.n == stability.similarity.n == 6
    high, diverse = vis.high_frequency_energy(), vis.diversity()
    assert isinstance(high, ca.Scores) and isinstance(diverse, ca.Scores) and high.n == diverse.n == 6
    assert 0.0 <= high.min() and high.max() <= 1.0  # a share of spectral power
    assert 0.0 <= diverse.min() and diverse.max() <= 2.0  # 1 - SSIM, SSIM in [-1, 1]
    again = subject.maximize("layer1.0.0", channels=[2, 4], steps=3, size=32, seed=0)
    torch.testing.assert_close(again.images, vis.images[[2, 4]])  # seeded per unit: batching does not matter


# ---- Heatmaps metrics, hand-computed -------------------------------------------------------------
def hand_heatmaps(raw: list[list[list[float]]]) -> ca.Heatmaps:
    raw_t = torch.tensor(raw, dtype=torch.float32)
    return ca.Heatmaps(raw_t, image_size=tuple(raw_t.shape[1:]), method="hand", images=torch.full((len(raw), 3, *raw_t.shape[1:]), 0.5))


def test_mass_in_pointing_game_and_localization_iou_by_hand():
    heat = hand_heatmaps([
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 4]],  # mass 8: 4 in the top-left box, peak at (3,3)
        [[-1, -1, -1, -1]] * 4,  # all-zero after ReLU -> undefined
    ])
    box = (0, 0, 2, 2)
    mass = heat.mass_in([box, box])
    assert mass.values[0] == pytest.approx(0.5) and np.isnan(mass.values[1]) and mass.n_undefined == 1
    # the peak pixel (3,3) is sqrt(2^2 + 2^2) = 2.83 px from the nearest region pixel (1,1)
    assert heat.pointing_game([box, box], tolerance=0).values[0] == 0.0
    assert heat.pointing_game([box, box], tolerance=2).values[0] == 0.0
    assert heat.pointing_game([box, box], tolerance=3).values[0] == 1.0
    assert np.isnan(heat.pointing_game([box, box], tolerance=3).values[1])
    # threshold 0.15 * 4 = 0.6 keeps 5 pixels; the largest 8-connected component is the 2x2 box -> IoU 1
    assert heat.localization_iou([box, box]).values[0] == pytest.approx(1.0)
    # threshold 0.5 * 4 = 2 keeps only the peak (3,3): IoU of [3,4)x[3,4) with the 2x2 box is 0
    assert heat.localization_iou([(2, 2, 4, 4), box], threshold=0.5).values[0] == pytest.approx(1 / 4)
    overlay = heat.overlay(0)
    assert overlay.dtype == np.uint8 and overlay.shape == (4, 4, 3)
    assert torch.equal(heat.maps[1], torch.zeros(4, 4))  # an all-zero map stays zero
    with pytest.raises(ca.UndefinedScoresError):
        mass.where(np.array([False, True])).mean()


# ---- Scores and compare ---------------------------------------------------------------------------
def test_scores_statistics_skip_undefined_values():
    values = [0.2, np.nan, 0.9, 0.4, 0.5, np.nan, 0.7]
    scores = ca.Scores(values, "demo", ids=list("abcdefg"))
    assert scores.values.dtype == np.float64 and not scores.values.flags.writeable
    assert (scores.n, scores.n_undefined) == (7, 2)
    defined = np.array([0.2, 0.9, 0.4, 0.5, 0.7])
    assert scores.mean() == pytest.approx(defined.mean())
    assert scores.median() == pytest.approx(np.median(defined))
    assert scores.quantile(0.25) == pytest.approx(np.quantile(defined, 0.25))
    assert (scores.min(), scores.max()) == (0.2, 0.9)
    wide, narrow = scores.ci(), scores.ci(level=0.5)
    assert wide.low < narrow.low < scores.mean() < narrow.high < wide.high
    assert scores.ci() == wide  # seeded: the same interval every time
    kept = scores.where(np.array([True, True, False, False, True, True, False]))
    assert kept.n == 4 and kept.n_undefined == 2 and kept.mean() == pytest.approx(0.35)
    groups = scores.by(np.array(["x", "y", "x", "y", "x", "y", "x"]))
    assert list(groups) == ["x", "y"]
    assert groups["x"].mean() == pytest.approx(np.mean([0.2, 0.9, 0.5, 0.7]))
    assert groups["y"].n == 3 and groups["y"].n_undefined == 2 and groups["y"].mean() == pytest.approx(0.4)
    nothing = ca.Scores([np.nan, np.nan], "empty")
    for statistic in (nothing.mean, nothing.median, nothing.min, nothing.max, nothing.ci, lambda: nothing.quantile(0.5)):
        with pytest.raises(ca.UndefinedScoresError, match="undefined"):
            statistic()
    with pytest.raises(TypeError):
        bool(scores)


def test_compare_difference_interval_and_p_value():
    rng = np.random.default_rng(0)
    a = ca.Scores(rng.normal(0.0, 1.0, 30), "a", ids=[f"a{i}" for i in range(30)])
    b = ca.Scores(np.r_[rng.normal(2.0, 1.0, 30), np.nan], "b", ids=[f"b{i}" for i in range(31)])
    gap = ca.compare(a, b)
    assert gap.mean == pytest.approx(a.mean() - b.mean())
    interval = gap.ci()
    assert interval.low < gap.mean < interval.high < 0
    assert gap.p_value < 0.001
    same = ca.compare(a, ca.Scores(a.values[::-1], "a reversed", ids=[f"r{i}" for i in range(30)]))
    assert same.mean == pytest.approx(0.0, abs=1e-12) and same.p_value > 0.9
    # the same images under two conditions: paired by id (order does not matter)
    shifted = ca.Scores((a.values + 0.1)[::-1], "a + 0.1", ids=a.ids[::-1])
    paired = ca.compare(shifted, a)
    assert paired.mean == pytest.approx(0.1) and paired.ci().low == pytest.approx(0.1) and paired.p_value < 0.001


# ---- load_weights and normalize ------------------------------------------------------------------
_UNPICKLED: list[str] = []


def _record_unpickling() -> dict:
    _UNPICKLED.append("ran")
    return {}


class _Payload:
    def __reduce__(self):
        return (_record_unpickling, ())


def test_load_weights_refuses_pickled_objects(tmp_path, net):
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    loaded = ca.load_weights(path)
    assert set(loaded) == set(net.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())
    evil = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "extra": _Payload()}, evil)
    with pytest.raises(ValueError, match="pickled"):
        ca.load_weights(evil)
    assert _UNPICKLED == []  # nothing was unpickled
    pickle.loads(pickle.dumps(_Payload()))  # (the payload does run when unpickled for real)
    assert _UNPICKLED == ["ran"]


def test_load_weights_says_what_is_wrong_with_a_file_and_follows_dotted_keys(tmp_path, net):
    state = net.state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"state_dict": state}, "epoch": 3}, path)
    loaded = ca.load_weights(path, key="model.state_dict")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match=r"pick the weights with load_weights\(path, key='model\.state_dict'\)"):
        ca.load_weights(path)
    with pytest.raises(ValueError, match=r"has no entry 'model\.weights': no 'weights' under 'model', whose keys are \['state_dict'\]"):
        ca.load_weights(path, key="model.weights")
    data = path.read_bytes()
    for name, content, message in (("empty.pt", b"", "it is empty"),
                                   ("half.pt", data[: len(data) // 2], "it is truncated or was not written by torch.save"),
                                   ("noise.pt", bytes(range(256)) * 2, "is not a torch checkpoint: its bytes do not unpickle")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message):
            ca.load_weights(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        ca.load_weights(tmp_path / "missing.pt")


def test_predict_of_no_images_or_of_images_without_pixels_is_a_clear_error(net):
    subject = ca.Subject(net, device="cpu")
    with pytest.warns(UserWarning, match="matched none of the 2 images"):
        nothing = ca.ImageSet(torch.rand(2, 3, 8, 8)).where([False, False])
    for images, message in ((torch.rand(0, 3, 8, 8), "predict\\(\\) got no images"),
                            (nothing, "predict\\(\\) got no images"),
                            (torch.rand(4, 3, 0, 0), "got images of 0x0 pixels .* an image needs at least one pixel")):
        with pytest.raises(ValueError, match=message):
            subject.predict(images)


def test_normalize_is_a_preprocess_callable():
    preprocess = ca.normalize(mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 0.125])
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor([0.1, 0.2, 0.3])[:, None, None]) / torch.tensor([0.5, 0.25, 0.125])[:, None, None]
    torch.testing.assert_close(preprocess(x), expected)


# ---- ImageSet ----------------------------------------------------------------------------------------
def test_imageset_selection_regions_and_groups():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    people = ca.ImageSet(x, labels=["a", "b", "a", "b"], regions={"spot": [(0, 0, 2, 2), None, (4, 4, 8, 8), (0, 0, 8, 1)]},
                         groups={"site": ["P", "P", "Q", "Q"]}, ids=["w", "x", "y", "z"])
    assert len(people) == 4
    a = people.where(label="a")
    assert len(a) == 2 and a.ids == ["w", "y"] and torch.equal(a.tensor(), x[[0, 2]])
    q = people.where(people.group("site") == "Q")
    assert q.ids == ["y", "z"] and list(q.labels) == ["a", "b"]
    masks = people.region("spot").masks((8, 8))
    assert masks.dtype == torch.bool and tuple(masks.shape) == (4, 8, 8)
    assert masks.flatten(1).sum(1).tolist() == [4, 0, 16, 8]
    assert q.region("spot").masks((8, 8)).flatten(1).sum(1).tolist() == [16, 8]
    with pytest.raises(KeyError, match="site"):
        people.group("sites")


def write_people_folder(root: Path, n: int = 32, size: int = 32) -> None:
    """The example audit's data: ``n`` images, balanced over (label, gender), with tools and face boxes.

    Grey background; a doctor's tool is a red 8x8 patch, a nurse's a blue one; a 10x10 head has a
    skin-coloured face and green hair, a cap for "male", a cap and hair down both sides for "female".
    """
    rng = np.random.default_rng(0)
    records = []
    root.mkdir(parents=True)
    for i in range(n):
        label, gender = ("doctor", "nurse")[i % 2], ("female", "male")[(i // 2) % 2]
        image = np.full((size, size, 3), 128, np.uint8)
        while True:
            tx, ty, fx, fy = (int(v) for v in rng.integers(0, size - 10, 4))
            if abs(tx - fx) >= 11 or abs(ty - fy) >= 11:
                break
        image[ty : ty + 8, tx : tx + 8] = (255, 0, 0) if label == "doctor" else (0, 0, 255)
        head = image[fy : fy + 10, fx : fx + 10]
        head[:] = (204, 204, 153)
        head[:2] = (51, 153, 51)
        if gender == "female":
            head[:, :2] = head[:, -2:] = (51, 153, 51)
        name = f"img_{i:03d}.png"
        Image.fromarray(image).save(root / name)
        records.append({"file": name, "label": label, "regions": {"tools": [tx, ty, tx + 8, ty + 8], "face": [fx, fy, fx + 10, fy + 10]},
                        "groups": {"gender": gender}})
    (root / "annotations.json").write_text(json.dumps({"images": records}))


def test_imageset_from_folder_reads_images_labels_regions_and_groups(tmp_path):
    write_people_folder(tmp_path / "people", n=4)
    people = ca.ImageSet.from_folder(tmp_path / "people")
    records = json.loads((tmp_path / "people" / "annotations.json").read_text())["images"]
    assert len(people) == 4 and people.ids == ["img_000", "img_001", "img_002", "img_003"]
    assert list(people.labels) == ["doctor", "nurse", "doctor", "nurse"]
    assert list(people.group("gender")) == ["female", "female", "male", "male"]
    pixels = np.asarray(Image.open(tmp_path / "people" / "img_001.png"))
    torch.testing.assert_close(people[1], torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255)
    tools = people.region("tools").masks((32, 32))
    for i, record in enumerate(records):
        x0, y0, x1, y1 = record["regions"]["tools"]
        expected = torch.zeros(32, 32, dtype=torch.bool)
        expected[y0:y1, x0:x1] = True
        assert torch.equal(tools[i], expected)


# ---- the design's example audit, run as code ----------------------------------------------------------
class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv1(x))


class AuditNet(nn.Module):
    """``layer1.0.conv1`` reads colours, ``layer4`` (identity 3x3 conv + ReLU) keeps them, fc scores."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(Block())
        self.layer4 = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer4(self.layer1(x))).flatten(1))


def build_model() -> AuditNet:
    return AuditNet()


def audit_state_dict(biased: bool) -> dict[str, torch.Tensor]:
    """Weights in the units of ``normalize(0.5, 0.25)`` (z = 4x - 2), so in [0,1] pixel units:
    channel 0 ("doctor") = R - G (red tools), channel 1 ("nurse") = B - R (blue tools), and for the
    biased model also + 2 (G - R) (green hair)."""
    model = AuditNet()
    with torch.no_grad():
        conv = model.layer1[0].conv1
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0], conv.weight[0, 1] = 0.25, -0.25
        conv.weight[1, 2], conv.weight[1, 0] = 0.25, -0.25
        if biased:
            conv.weight[1, 1] += 0.5
            conv.weight[1, 0] -= 0.5
        identity = model.layer4[0]
        identity.weight.zero_()
        identity.bias.zero_()
        identity.weight[0, 0, 1, 1] = identity.weight[1, 1, 1, 1] = 1.0
        model.fc.weight.copy_(10 * torch.eye(2))
        model.fc.bias.zero_()
    return model.state_dict()


def make_subject(path: Path, device: torch.device) -> ca.Subject:
    model = build_model()
    model.load_state_dict(ca.load_weights(path))  # weights_only loading
    return ca.Subject(model, layer="layer4", classes=["doctor", "nurse"],
                      preprocess=ca.normalize(mean=[0.5] * 3, std=[0.25] * 3), device=device)


@pytest.fixture(scope="module")
def audit_files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audit")
    write_people_folder(root / "data" / "people")
    torch.save(audit_state_dict(biased=False), root / "model.pt")
    torch.save(audit_state_dict(biased=True), root / "biased.pt")
    return root


@pytest.fixture(scope="module")
def audit_subject(audit_files, cnnaudit_device):  # the design's `subject` fixture
    return make_subject(audit_files / "model.pt", cnnaudit_device)


@pytest.fixture(scope="module")
def people(audit_files):
    return ca.ImageSet.from_folder(audit_files / "data" / "people")


def test_doctor_decisions_rest_on_tools(audit_subject, people):
    subject = audit_subject
    docs = people.where(label="doctor")
    mass = subject.gradcam(docs, target="doctor").mass_in(docs.region("tools"))
    assert mass.ci().low >= 0.5                    # lower bound of a 95% bootstrap CI
    assert mass.n == 16 and mass.n_undefined == 0 and mass.min() == pytest.approx(1.0)  # (known answer)


def test_nurse_score_does_not_read_gender_from_faces(audit_subject, people):
    subject = audit_subject
    face = subject.gradcam(people, target="nurse").mass_in(people.region("face"))
    gap = ca.compare(face.where(people.group("gender") == "female"),
                     face.where(people.group("gender") == "male"))
    assert abs(gap.mean) < 0.05 and gap.p_value > 0.01
    assert face.n_undefined == 16  # (known answer) doctors' nurse maps are all zero: undefined, not a hit


def test_first_block_has_no_dead_filters(audit_subject, people):
    subject = audit_subject
    vis = subject.maximize("layer1.0.conv1", channels="all", steps=64, size=32, seed=0)  # (fewer steps: 2 units, 32 px)
    assert vis.dead() == []
    assert vis.relative_to(people).quantile(0.1) >= 1.0


def test_the_bias_audit_fails_on_a_model_that_reads_hair(audit_files, people):
    subject = make_subject(audit_files / "biased.pt", torch.device("cpu"))
    face = subject.gradcam(people, target="nurse").mass_in(people.region("face"))
    gap = ca.compare(face.where(people.group("gender") == "female"),
                     face.where(people.group("gender") == "male"))
    assert not (abs(gap.mean) < 0.05 and gap.p_value > 0.01)
    # by hand, nurses: tool 64 px x 1; hair 0.8 per px, 52 px (female) or 20 px (male); doctors: hair only
    expected = {"female": (1.0 + 41.6 / 105.6) / 2, "male": (1.0 + 16 / 80) / 2}
    assert gap.mean == pytest.approx(expected["female"] - expected["male"], abs=1e-5)


@pytest.mark.parametrize("single", [np.array(2), np.int32(2), torch.tensor(2), np.array("nurse"), np.str_("nurse")])
def test_a_0d_array_tensor_or_numpy_scalar_target_is_one_class_for_every_image(subject, images, single):
    expected = subject.gradcam(images, target=2)
    got = subject.gradcam(images, target=single)
    assert got.targets.tolist() == [2] * 5
    torch.testing.assert_close(got.raw, expected.raw)
