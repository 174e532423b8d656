"""``cnnaudit.targets`` (segmentation and detection targets) and ``layer="auto"`` on torchvision's
FCN / DeepLabV3 / Faster R-CNN, against a plain-autograd oracle.

The oracle works one image at a time and shares no code with cnnaudit: a plain forward hook replaces
the layer's output by a leaf holding a copy of it, the model runs on, the score is computed by hand
from the model output (boolean indexing for masks, a Python loop and a hand-written IoU for
detections), and ``torch.autograd.grad`` gives dS/dA; Grad-CAM is ``sum_k mean_ij(dS/dA_k) A_k``.

Random weights: the models' batch-norm statistics are first recalibrated on random images (the
initial running statistics make MobileNetV3's activations vanish, ~1e-9, so every score would be
constant); nothing else is trained.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn
from torchvision.models import detection, segmentation

import cnnaudit as ca
from cnnaudit import targets
from cnnaudit.attribution.cam import scorecam

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLASSES = ["background", "cat", "dog", "car", "tree"]


def calibrated(model: nn.Module, module: nn.Module, x: torch.Tensor) -> nn.Module:
    """``model`` in eval mode after ``module``'s batch norms took their statistics from ``x`` (one pass)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    module.train()
    with torch.no_grad():
        module(x)
    return model.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def fcn() -> nn.Module:
    torch.manual_seed(0)
    return segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=5).eval()


@pytest.fixture(scope="module")
def deeplab() -> nn.Module:
    torch.manual_seed(0)
    model = segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
    return calibrated(model, model, torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(1)))


@pytest.fixture(scope="module")
def frcnn() -> nn.Module:
    torch.manual_seed(0)
    model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=5, box_score_thresh=0.0
    )
    return calibrated(model, model.backbone, torch.randn(4, 3, 320, 320, generator=torch.Generator().manual_seed(1)))


def oracle_gradcam(
    model: nn.Module, layer: str, model_input: torch.Tensor, score: Callable[[object], torch.Tensor]
) -> torch.Tensor:
    """Grad-CAM ``(h, w)`` of ``score(model(model_input[None]))`` at ``layer``, one image, plain autograd."""
    leaves: list[torch.Tensor] = []

    def replace(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        leaves.append(output.detach().clone().requires_grad_())
        return leaves[-1]

    handle = dict(model.named_modules())[layer].register_forward_hook(replace)
    try:
        value = score(model(model_input[None]))
    finally:
        handle.remove()
    (a,) = leaves
    (g,) = torch.autograd.grad(value, a)
    assert g.abs().max() > 0, "the oracle's score does not depend on the layer: the test would prove nothing"
    return (g[0].mean(dim=(1, 2), keepdim=True) * a[0].detach()).sum(0)


def normalized(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def assert_matches_oracle(raw: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs error, asserted at float32 rounding of the map's scale; returned relative to that scale."""
    scale = expected.abs().max().item()
    assert scale > 0
    error = (raw - expected).abs().max().item()
    assert error <= 1e-4 * scale, (error, scale)
    return error / scale


def iou_by_hand(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def best_detection_score(found: dict, box: list[float], label: int, threshold: float) -> torch.Tensor | None:
    """The matched detection's score by a Python loop: highest IoU >= threshold among ``label``, tie: higher score."""
    best, key = None, (-1.0, -1.0)
    for k in range(len(found["scores"])):
        overlap = iou_by_hand(box, found["boxes"][k].tolist())
        candidate = (overlap, found["scores"][k].item())
        if int(found["labels"][k]) == label and overlap >= threshold and candidate > key:
            best, key = k, candidate
    return None if best is None else found["scores"][best]


# ---- segmentation ------------------------------------------------------------------------------

def test_fcn_gradcam_of_the_class_inside_a_mask_matches_the_oracle(fcn, images):
    masks = torch.zeros(2, 96, 96, dtype=torch.bool)
    masks[0, 10:50, 20:70] = True
    masks[1, 40:90, 0:30] = True
    subject = ca.Subject(fcn, classes=CLASSES, preprocess=ca.normalize(MEAN, STD), device="cpu", batch_size=1)
    heatmaps = subject.gradcam(images, target=targets.segmentation("dog", mask=masks))
    assert subject.layer == "backbone.layer4"
    assert heatmaps.targets.tolist() == [-1, -1] and heatmaps.predictions.tolist() == [-1, -1]
    for i in range(2):
        expected = oracle_gradcam(fcn, "backbone.layer4", normalized(images[i]), lambda out: out["out"][0, 2][masks[i]].sum())
        assert_matches_oracle(heatmaps.raw[i], expected)


def test_deeplab_gradcam_of_the_predicted_region_matches_the_oracle(deeplab, images):
    subject = ca.Subject(deeplab, device="cpu")
    heatmaps = subject.gradcam(images, target=targets.segmentation(1))
    assert subject.layer == "backbone.16"
    for i in range(2):
        def score(out: dict) -> torch.Tensor:
            logits = out["out"][0]
            region = logits.argmax(0) == 1
            assert 0 < int(region.sum()) < region.numel()  # a real, partial predicted region
            return logits[1][region].sum()

        assert_matches_oracle(heatmaps.raw[i], oracle_gradcam(deeplab, "backbone.16", images[i], score))


def test_segmentation_score_is_the_masked_logit_sum_and_empty_regions_are_undefined():
    assert ca.targets.segmentation is targets.segmentation  # reachable as an attribute of the package
    logits = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)  # class 1: [[4,5],[6,7]], [[16..19]]
    masks = torch.tensor([[[True, False], [False, True]], [[False, False], [False, False]]])
    bound = targets.segmentation(1, mask=masks).bind(2, int, None)
    scores = bound.scores({"out": logits, "aux": logits}, torch.tensor([0, 1]))
    assert scores[0].item() == 4 + 7 and scores[1].isnan()
    swapped = bound.scores(logits, torch.tensor([1, 0]))  # row k is scored with the mask of image rows[k]
    assert swapped[0].isnan() and swapped[1].item() == 16 + 19
    predicted = targets.segmentation(2).bind(2, int, None).scores(logits, torch.tensor([0, 1]))
    assert predicted.tolist() == [8 + 9 + 10 + 11, 20 + 21 + 22 + 23]  # class 2 is the argmax everywhere
    assert targets.segmentation(0).bind(2, int, None).scores(logits, torch.tensor([0, 1])).isnan().all()
    one_for_all = targets.segmentation(1, mask=masks[0].numpy()).bind(2, int, None)
    assert one_for_all.scores(logits, torch.tensor([0, 1])).tolist() == [11, 16 + 19]


def test_an_empty_mask_gives_an_all_zero_map_and_undefined_metrics_while_the_other_image_keeps_its_map(fcn, images):
    masks = torch.zeros(2, 96, 96, dtype=torch.bool)
    masks[0, 10:50, 20:70] = True
    subject = ca.Subject(fcn, preprocess=ca.normalize(MEAN, STD), device="cpu")
    heatmaps = subject.gradcam(images, target=targets.segmentation(2, mask=masks))
    assert heatmaps.zero.tolist() == [False, True] and heatmaps.raw[1].abs().max() == 0
    expected = oracle_gradcam(fcn, "backbone.layer4", normalized(images[0]), lambda out: out["out"][0, 2][masks[0]].sum())
    assert_matches_oracle(heatmaps.raw[0], expected)
    mass = heatmaps.mass_in([(0, 0, 48, 48)] * 2)
    assert mass.n_undefined == 1 and mass.values[1] != mass.values[1] and 0 < mass.values[0] < 1
    saliency = subject.saliency(images, target=targets.segmentation(2, mask=masks))
    assert saliency.raw[1].abs().max() == 0 and saliency.raw[0].abs().max() > 0


def test_segmentation_mask_from_an_imageset_region_equals_the_same_masks_given_as_data(deeplab, images):
    boxes = [(20, 10, 70, 50), (0, 40, 30, 90)]
    people = ca.ImageSet(images, regions={"thing": [[box] for box in boxes]})
    subject = ca.Subject(deeplab, device="cpu", cache=False)
    by_name = subject.gradcam(people, target=targets.segmentation(1, mask="thing"))
    by_regions = subject.gradcam(images, target=targets.segmentation(1, mask=people.region("thing")))
    masks = torch.zeros(2, 96, 96, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = True
    by_data = subject.gradcam(images, target=targets.segmentation(1, mask=masks))
    assert by_data.raw.abs().amax(dim=(1, 2)).min() > 0
    torch.testing.assert_close(by_name.raw, by_data.raw, rtol=0, atol=0)
    torch.testing.assert_close(by_regions.raw, by_data.raw, rtol=0, atol=0)


def test_scorecam_scores_each_masked_copy_with_its_own_images_mask():
    """A tiny segmentation net, one image per batch (so the batch offsets matter), against Score-CAM by hand."""
    torch.manual_seed(3)
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()))
    net.add_module("head", nn.Conv2d(4, 3, 1))
    model = _DictOutput(net).eval()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, :4], masks[1, :, 4:], masks[2, 2:6, 2:6] = True, True, True
    heatmaps = ca.Subject(model, layer="net.features", device="cpu", batch_size=1).gradcam(
        x, target=targets.segmentation(1, mask=masks), method="scorecam")
    with torch.no_grad():
        for i in range(3):
            A = net.features(x[i : i + 1])[0]
            s = []
            for k in range(4):
                m = A[k] - A[k].min()  # the layer keeps 8x8, so the upsampling is the identity
                m = m / m.max() if m.max() > 0 else m
                s.append(model(x[i : i + 1] * m)["out"][0, 1][masks[i]].sum())
            expected = (torch.stack(s).softmax(0)[:, None, None] * A).sum(0)
            torch.testing.assert_close(heatmaps.raw[i], expected, rtol=1e-5, atol=1e-6)


class _DictOutput(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.net(x)}


def test_scorecam_gives_undefined_masked_scores_weight_zero_and_an_all_undefined_image_a_zero_map():
    A = torch.tensor([[[[1.0, 2.0]], [[3.0, 5.0]]], [[[1.0, 1.0]], [[1.0, 1.0]]]])  # (2 images, 2 channels, 1, 2)
    masked = torch.tensor([[float("nan"), 0.3], [float("nan"), float("nan")]])
    torch.testing.assert_close(scorecam(A, masked), torch.tensor([[[3.0, 5.0]], [[0.0, 0.0]]]))


# ---- detection ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def detected(frcnn, images) -> list[dict]:
    with torch.no_grad():
        return frcnn(images)


def _top(found: dict, label: int) -> list[float]:
    """The box of the highest-scoring detection labelled ``label``."""
    keep = found["labels"] == label
    assert keep.any()
    return found["boxes"][keep][found["scores"][keep].argmax()].tolist()


def test_faster_rcnn_gradcam_of_the_matched_detection_score_matches_the_oracle(frcnn, images, detected):
    labels = [int(detected[0]["labels"][0]), int(detected[1]["labels"][-1])]
    boxes = [_top(detected[i], labels[i]) for i in range(2)]
    subject = ca.Subject(frcnn, device="cpu")
    for i, label in enumerate(labels):  # one class per call: the same class for both images, and the image's own
        heatmaps = subject.gradcam(images, target=targets.detection(label, boxes=boxes, iou=0.5))
        assert subject.layer == "backbone.body.16"
        assert heatmaps.targets.tolist() == [-1, -1] and heatmaps.predictions.tolist() == [-1, -1]
        for j in range(2):
            def score(out: list) -> torch.Tensor:
                found = best_detection_score(out[0], boxes[j], label, 0.5)
                assert found is not None
                return found

            if best_detection_score(detected[j], boxes[j], label, 0.5) is None:
                assert heatmaps.raw[j].abs().max() == 0
                continue
            assert_matches_oracle(heatmaps.raw[j], oracle_gradcam(frcnn, "backbone.body.16", images[j], score))


def test_detection_without_a_match_is_undefined_and_leaves_the_other_images_map_intact(frcnn, images, detected):
    label = int(detected[0]["labels"][0])
    absent = next(c for c in range(1, 5) if not (detected[1]["labels"] == c).any())
    box = _top(detected[0], label)
    subject = ca.Subject(frcnn, device="cpu")
    mixed = subject.gradcam(images, target=targets.detection(label, boxes=[box, None]))
    assert mixed.zero.tolist() == [False, True]
    expected = oracle_gradcam(frcnn, "backbone.body.16", images[0], lambda out: best_detection_score(out[0], box, label, 0.5))
    assert_matches_oracle(mixed.raw[0], expected)
    nothing = subject.gradcam(images, target=targets.detection(absent, boxes=[box, box]), method="layercam")
    assert nothing.zero[1] and nothing.raw[1].abs().max() == 0
    mass = nothing.mass_in([(0, 0, 48, 48)] * 2)
    assert mass.values[1] != mass.values[1] and mass.n_undefined >= 1
    far = subject.gradcam(images[:1], target=targets.detection(label, boxes=[(0, 0, 1, 1)], iou=0.9))
    assert far.zero.tolist() == [True]


def test_detection_match_picks_highest_iou_then_highest_score_and_needs_the_class_and_threshold():
    found = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 12], [0, 0, 10, 10]]),
        "labels": torch.tensor([1, 1, 1, 2]),
        "scores": torch.tensor([0.3, 0.6, 0.9, 0.99]),
    }
    rows = torch.tensor([0])
    score = lambda cls, box, iou=0.5: targets.detection(cls, [box], iou).bind(1, int, None).scores([found], rows)[0]
    assert score(1, (0, 0, 10, 10)).item() == pytest.approx(0.6)  # IoU 1 twice: the higher score; not the IoU 10/12 one
    assert score(1, (0, 0, 10, 12)).item() == pytest.approx(0.9)
    assert score(2, (0, 0, 10, 10)).item() == pytest.approx(0.99)
    assert score(3, (0, 0, 10, 10)).isnan()  # no detection of the class
    assert score(1, (0, 0, 10, 20), iou=0.7).isnan() and score(1, (0, 0, 10, 20), iou=0.6).item() == pytest.approx(0.9)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
    assert targets.detection(1, [(0, 0, 10, 10)]).bind(1, int, None).scores([empty], rows)[0].isnan()  # no detections


def test_detection_boxes_from_an_imageset_region_name(frcnn, images, detected):
    label = int(detected[0]["labels"][0])
    box = [round(v) for v in _top(detected[0], label)]
    scenes = ca.ImageSet(images, regions={"thing": [[tuple(box)], None]})
    subject = ca.Subject(frcnn, device="cpu", cache=False)
    by_name = subject.gradcam(scenes, target=targets.detection(label, boxes="thing", iou=0.3))
    by_data = subject.gradcam(images, target=targets.detection(label, boxes=[box, None], iou=0.3))
    assert by_name.zero.tolist() == [False, True]
    torch.testing.assert_close(by_name.raw, by_data.raw, rtol=0, atol=0)


def test_the_detection_model_is_left_as_found(frcnn, images, detected):
    params = list(frcnn.parameters())
    before = [p.requires_grad for p in params], [m.training for m in frcnn.modules()], [p.clone() for p in params[:5]]
    ca.Subject(frcnn, device="cpu").gradcam(images, target=targets.detection(1, boxes=[_top(detected[0], int(
        detected[0]["labels"][0]))] * 2, iou=0.01))
    assert [p.requires_grad for p in params] == before[0] and [m.training for m in frcnn.modules()] == before[1]
    assert all(torch.equal(p, q) for p, q in zip(params[:5], before[2])) and all(p.grad is None for p in params)
    assert not any(m._forward_hooks for m in frcnn.modules())


# ---- layer="auto" and errors -------------------------------------------------------------------

def test_auto_layer_picks_the_last_backbone_stage_never_heads(fcn, deeplab, frcnn):
    """Before: FCN's logit map ``classifier``, Faster R-CNN's ``roi_heads.box_roi_pool`` (one row per proposal)."""
    for model, expected in ((fcn, "backbone.layer4"), (deeplab, "backbone.16"), (frcnn, "backbone.body.16")):
        assert ca.Subject(model, device="cpu").layer == expected


def test_clear_errors_for_bad_arguments(fcn, deeplab, frcnn, images, detected):
    seg = ca.Subject(deeplab, classes=CLASSES, device="cpu")
    with pytest.raises(ValueError, match=r"unknown class 'dgo' \(did you mean 'dog'\?\)"):
        seg.gradcam(images, target=targets.segmentation("dgo"))
    with pytest.raises(ValueError, match="class index 7 is out of range for a segmentation output with 5 classes"):
        ca.Subject(deeplab, device="cpu").gradcam(images, target=targets.segmentation(7))
    with pytest.raises(ValueError, match=r"mask: got 3 masks for 2 images"):
        seg.gradcam(images, target=targets.segmentation(1, mask=torch.ones(3, 96, 96, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"mask is 48x48 pixels but the model output is 96x96"):
        seg.gradcam(images, target=targets.segmentation(1, mask=torch.ones(2, 48, 48, dtype=torch.bool)))
    with pytest.raises(ValueError, match="mask must be boolean"):
        seg.gradcam(images, target=targets.segmentation(1, mask=torch.full((96, 96), 0.5)))
    with pytest.raises(ValueError, match=r"mask='thing' names a region, but the audited images are not an ImageSet"):
        seg.gradcam(images, target=targets.segmentation(1, mask="thing"))
    with pytest.raises(ValueError, match="targets.detection reads a list of dicts"):
        seg.gradcam(images, target=targets.detection(1, boxes=[(0, 0, 5, 5)] * 2))
    det = ca.Subject(frcnn, device="cpu")
    with pytest.raises(ValueError, match=r"boxes: got 1 boxes for 2 images"):
        det.gradcam(images, target=targets.detection(1, boxes=[(0, 0, 5, 5)]))
    with pytest.raises(ValueError, match=r"boxes\[1\] = \(5, 0, 0, 5\) is not a box"):
        det.gradcam(images, target=targets.detection(1, boxes=[(0, 0, 5, 5), (5, 0, 0, 5)]))
    with pytest.raises(ValueError, match=r"iou must be a number in \(0, 1\]"):
        det.gradcam(images, target=targets.detection(1, boxes=[(0, 0, 5, 5)] * 2, iou=0))
    with pytest.raises(TypeError, match=r"the model returned a list of 2 .*output=0.*to explain a "
                       r"segmentation or detection model, give gradcam\(\) / saliency\(\) a target of cnnaudit.targets"):
        det.gradcam(images, target=1)
    with pytest.raises(ValueError, match=r"targets.segmentation reads a \(N, classes, H, W\) tensor"):
        det.gradcam(images, target=targets.segmentation(1))


class _ProposalHead(nn.Module):
    """Features, then a shared conv run on two "levels" and a pooling with one row per "proposal" (4 per image)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.level_conv = nn.Conv2d(4, 4, 1)
        self.box_pool = nn.Upsample(size=(3, 3))
        self.score = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        coarse = self.level_conv(features[..., ::2, ::2])
        levels = self.level_conv(features) + coarse.repeat_interleave(2, -1).repeat_interleave(2, -2)
        boxes = self.box_pool(levels.repeat_interleave(4, dim=0))  # (4N, C, 3, 3)
        return self.score(boxes.mean((2, 3))).reshape(x.shape[0], 4)


def test_auto_layer_skips_modules_run_twice_and_outputs_with_a_row_per_box():
    from cnnaudit.layers import auto_layer

    assert auto_layer(_ProposalHead().eval(), torch.zeros(1, 3, 8, 8)) == "features"


class _OwnClassPerImage:
    """A user's own ``ImageTarget``: the logit of a class given per image (read through ``rows``)."""

    def __init__(self, classes: list[int], shape_of_result: tuple[int, ...] | None = None) -> None:
        self.classes, self.shape_of_result = classes, shape_of_result

    def bind(self, n_images: int, class_index: Callable, region: object) -> _OwnClassPerImage:
        return self

    def scores(self, output: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        picked = output.gather(1, torch.tensor(self.classes)[rows][:, None])[:, 0]
        return picked if self.shape_of_result is None else picked.reshape(self.shape_of_result)


def test_an_own_image_target_gets_each_rows_image_index_and_its_result_is_checked(images16):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    subject = ca.Subject(model.eval(), device="cpu", batch_size=3, cache=False)
    own = subject.gradcam(images16, target=_OwnClassPerImage([2, 0, 1, 2]))
    torch.testing.assert_close(own.raw, subject.gradcam(images16, target=[2, 0, 1, 2]).raw)  # batches of 3 then 1
    with pytest.raises(ValueError, match=r"_OwnClassPerImage.scores must return a float tensor of shape \(3,\); got"):
        subject.gradcam(images16, target=_OwnClassPerImage([2, 0, 1, 2], shape_of_result=(3, 1)))
