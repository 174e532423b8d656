"""CAM methods against hand-computed values (a worked Grad-CAM example and closed forms), and batching invariants."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import cnnaudit as ca
from cnnaudit import hooks

# A two-channel 2x2 layer with a linear head: score_0 = sum_kij G_kij A_kij, so dS/dA = G.
A1 = [[1.0, 2.0], [0.0, 1.0]]
A2 = [[2.0, 0.0], [1.0, 1.0]]
G1 = [[1.0, -1.0], [2.0, 0.0]]
G2 = [[0.0, -1.0], [-1.0, -2.0]]

# Worked by hand (sum A1 = sum A2 = 4):
EXPECTED = {
    # alpha = (mean G1, mean G2) = (0.5, -1): 0.5*A1 - A2
    "gradcam": [[-1.5, 1.0], [-1.0, -0.5]],
    # G1*A1 + G2*A2 = [[1,-2],[0,0]] + [[0,0],[-1,-2]]
    "hirescam": [[1.0, -2.0], [-1.0, -2.0]],
    # relu(G1)*A1 = [[1,0],[2,0]]*A1 = [[1,0],[0,0]]; relu(G2) = 0
    "layercam": [[1.0, 0.0], [0.0, 0.0]],
    # w1 = (1*1 + 2*(-1) + 0*2 + 1*0)/4 = -1/4; w2 = (2*0 + 0*(-1) + 1*(-1) + 1*(-2))/4 = -3/4
    "xgradcam": [[-1.75, -0.5], [-0.75, -1.0]],
    # channel 1: a = g^2/(2g^2 + 4g^3) = 1/6 (g=1), -1/2 (g=-1), 1/10 (g=2), 0 (g=0);
    # w1 = 1/6*1 + 1/10*2 = 11/30; channel 2: relu(G2) = 0 so w2 = 0  ->  11/30 * A1
    "gradcam++": [[11 / 30, 22 / 30], [0.0, 11 / 30]],
}


@pytest.fixture
def two_by_two(make_linear_head_model):
    model, image = make_linear_head_model([A1, A2], [G1, G2], scale=2.0)
    return ca.Subject(model, layer="relu", device="cpu"), image


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_gradient_methods_match_hand_computation(two_by_two, method):
    subject, image = two_by_two
    heatmaps = subject.gradcam(image, target=0, method=method)
    torch.testing.assert_close(heatmaps.raw[0], torch.tensor(EXPECTED[method]), rtol=1e-6, atol=1e-6)
    assert heatmaps.targets.tolist() == [0]


def test_scorecam_matches_hand_computation(two_by_two):
    """Masks M_k = A_k / max A_k (min 0): M1 = [[.5,1],[0,.5]], M2 = [[1,0],[.5,.5]].

    The model is linear in the image, so s_k = sum (G1*A1 + G2*A2) * M_k with
    G1*A1 + G2*A2 = [[1,-2],[-1,-2]]: s_1 = .5 - 2 - 1 = -2.5, s_2 = 1 - .5 - 1 = -0.5.
    softmax: alpha_1 = 1/(1+e^2), alpha_2 = 1/(1+e^-2); map = alpha_1 A1 + alpha_2 A2.
    """
    subject, image = two_by_two
    a1, a2 = 1 / (1 + math.exp(2)), 1 / (1 + math.exp(-2))
    expected = a1 * torch.tensor(A1) + a2 * torch.tensor(A2)
    torch.testing.assert_close(subject.gradcam(image, target=0, method="scorecam").raw[0], expected)


@pytest.mark.parametrize(("c", "bias", "expected"), [((3.0, 4.0), 0.0, [[0, 5], [-5, 0]]), ((-3.0, -4.0), 10.0, [[0, -5], [5, 0]])])
def test_eigencam_rank_one_closed_form_and_sign(c, bias, expected):
    """A_k = c_k f + b: centred activations are (f - mean f) c^T, so the first component is c/|c| and the
    projection (f - mean f)|c| = [[0,5],[-5,0]] for f = [[1,2],[0,1]], |c| = 5. The sign convention makes
    the map correlate with sum_k A_k = (c_1 + c_2) f + 2b: + for c = (3,4), flipped for c = (-3,-4)."""
    f = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, 0, 0, 0] = torch.tensor(c) * 2.0  # image channel 0 holds f / 2
        conv.bias.fill_(bias)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(8, 2))
    image = torch.zeros(1, 3, 2, 2)
    image[0, 0] = f / 2
    heatmaps = ca.Subject(model, layer="0", device="cpu").gradcam(image, method="eigencam")
    torch.testing.assert_close(heatmaps.raw[0], torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=1e-5)


def test_seeds_gradcam_combination_example(make_linear_head_model):
    """The worked example: A^1, A^2 with alpha = (1/3, -2/3) give ReLU(...) = [[1/3,0,2/3],[0,1,0],[0,1/3,0]]."""
    A = [[[1, 0, 2], [3, 5, 0], [1, 1, 1]], [[0, 1, 0], [3, 1, 0], [1, 0, 1]]]
    G = [[[1 / 3] * 3] * 3, [[-2 / 3] * 3] * 3]  # constant gradients: their means are alpha
    model, image = make_linear_head_model(A, G, scale=5.0)
    heatmaps = ca.Subject(model, layer="relu", device="cpu").gradcam(image, target=0)
    expected = torch.tensor([[1 / 3, 0, 2 / 3], [0, 1, 0], [0, 1 / 3, 0]])
    torch.testing.assert_close(heatmaps.raw[0].clamp(min=0), expected)
    torch.testing.assert_close(heatmaps.maps[0], expected)  # peak is 1, so normalising changes nothing
    assert heatmaps.overlay(0).shape == (3, 3, 3)


def test_seeds_gradient_example_through_capture_engine(seeds_subject, seeds_x):
    """O = [[4,7],[5,6]], outputs (13, 15), dy1/dO = [[0,1],[0,1]], dy1/dX = [[0,1,0],[0,2,2],[0,1,2]]."""
    subject, _ = seeds_subject()
    X = seeds_x[None, None].requires_grad_()
    with subject.audit(), hooks.record({"conv": subject.module("conv")}) as recording:
        y = subject.forward(X)
        O = recording["conv"]
        dO, dX = hooks.gradient(y[:, 0], [O, X])
    torch.testing.assert_close(O[0, 0].detach(), torch.tensor([[4.0, 7.0], [5.0, 6.0]]))
    torch.testing.assert_close(y.detach(), torch.tensor([[13.0, 15.0]]))
    torch.testing.assert_close(dO[0, 0], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    torch.testing.assert_close(dX[0, 0], torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 2.0], [0.0, 1.0, 2.0]]))


def test_seeds_gradient_example_cams(seeds_subject):
    """alpha = mean(dy1/dO) = 1/2 -> Grad-CAM 0.5*O; HiResCAM O*dy1/dO = [[0,7],[0,6]]; y2 is predicted."""
    subject, image = seeds_subject()
    torch.testing.assert_close(subject.gradcam(image, target=0).raw[0], torch.tensor([[2.0, 3.5], [2.5, 3.0]]))
    torch.testing.assert_close(subject.gradcam(image, target=0, method="hirescam").raw[0], torch.tensor([[0.0, 7.0], [0.0, 6.0]]))
    predicted = subject.gradcam(image)  # y = (13, 15): class 1; dy2/dO = [[1,0],[1,1]], alpha = 3/4
    assert predicted.targets.tolist() == [1]
    torch.testing.assert_close(predicted.raw[0], 0.75 * torch.tensor([[4.0, 7.0], [5.0, 6.0]]))


def test_maps_are_bilinear_relu_normalised_and_zero_maps_flagged(make_linear_head_model):
    model, image = make_linear_head_model([A1, A2], [G1, G2], scale=2.0)
    big = torch.nn.functional.interpolate(image, size=(8, 8), mode="nearest")  # layer stays 2x2 after pooling
    model = nn.Sequential(nn.AvgPool2d(4), *model)
    subject = ca.Subject(model, layer="2", device="cpu")  # "2" is the ReLU
    maps = subject.gradcam(big, target=0, method="layercam").maps[0]
    # relu(raw) = [[1,0],[0,0]] upsampled x4, align_corners=False: output pixel i samples source
    # coordinate (i + 0.5)/4 - 0.5 = -0.375, -0.125 (clamped to 0), 0.125, 0.375, ..., 1.125 (clamped to 1)
    assert maps.shape == (8, 8)
    torch.testing.assert_close(maps[:2, :2], torch.ones(2, 2))
    torch.testing.assert_close(maps[0, 2:], torch.tensor([0.875, 0.625, 0.375, 0.125, 0.0, 0.0]))
    torch.testing.assert_close(maps[2, 2], torch.tensor(0.875**2))
    assert torch.count_nonzero(maps[6:, :]) == 0 and torch.count_nonzero(maps[:, 6:]) == 0
    blank = subject.gradcam(big * 0, target=0)  # A = 0 everywhere: an all-zero map stays zero, flagged
    assert blank.zero.tolist() == [True] and torch.count_nonzero(blank.maps) == 0


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "scorecam"])
def test_batch_equals_per_image_loop(tiny_cnn, images16, method):
    subject = ca.Subject(tiny_cnn, layer="features.2", device="cpu", batch_size=3)  # batches of 3 + 1
    targets = [0, 3, 1, 4]
    batched = subject.gradcam(images16, target=targets, method=method)
    for i in range(4):
        single = subject.gradcam(images16[i : i + 1], target=targets[i], method=method)
        torch.testing.assert_close(batched.raw[i], single.raw[0], rtol=1e-5, atol=1e-6)
    assert batched.targets.tolist() == targets


def test_resnet18_batch_equals_per_image_loop(torchvision_model):
    subject = ca.Subject(torchvision_model("resnet18"), device="cpu", batch_size=2)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    batched = subject.gradcam(x)
    for i in range(3):
        torch.testing.assert_close(batched.raw[i], subject.gradcam(x[i : i + 1]).raw[0], rtol=1e-4, atol=1e-6)


def test_targets_by_name_index_sequence_and_callable(tiny_cnn, images16):
    subject = ca.Subject(tiny_cnn, layer="features.2", classes=list("abcde"), device="cpu")
    by_index = subject.gradcam(images16, target=2)
    torch.testing.assert_close(subject.gradcam(images16, target="c").raw, by_index.raw)
    torch.testing.assert_close(subject.gradcam(images16, target=["c"] * 4).raw, by_index.raw)
    via_callable = subject.gradcam(images16, target=lambda out: out[:, 2])
    torch.testing.assert_close(via_callable.raw, by_index.raw)
    assert via_callable.targets.tolist() == [-1] * 4
    predicted = subject.gradcam(images16)
    assert predicted.targets.tolist() == tiny_cnn(images16).argmax(1).tolist()


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam"])
def test_a_row_wise_callable_target_does_not_depend_on_the_batching(tiny_cnn, images16, method):
    """The callable contract: one score per row from that row alone, so batch_size=1 (Score-CAM: one
    masked copy per pass) and batch_size=4 (Score-CAM: passes of 4 masked copies that mix images) agree."""

    def log_probability_of_class_2(out: torch.Tensor) -> torch.Tensor:
        return out[:, 2] - out.logsumexp(dim=1)

    maps = [
        ca.Subject(tiny_cnn, layer="features.2", device="cpu", batch_size=size, cache=False)
        .gradcam(images16, target=log_probability_of_class_2, method=method).raw
        for size in (1, 4)
    ]
    torch.testing.assert_close(maps[0], maps[1], rtol=1e-5, atol=1e-6)
    assert maps[0].abs().amax() > 0


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
@pytest.mark.parametrize(
    ("target", "got"),
    [(lambda out: out[:, 2].sum(), r"got a tensor of shape \(\)"), (lambda out: out[:, 2].tolist(), "got a list"),
     (lambda out: out, r"got a tensor of shape \(\d, 5\)")],
    ids=["scalar", "list", "2-D"],
)
def test_a_callable_target_breaking_the_contract_is_refused(tiny_cnn, images16, method, target, got):
    subject = ca.Subject(tiny_cnn, layer="features.2", device="cpu", batch_size=4)
    with pytest.raises(ValueError, match=rf"must return one score per row, computed from that row alone: a 1-D tensor of shape \(\d\,\) here; {got}"):
        subject.gradcam(images16, target=target, method=method)


def test_scorecam_checks_the_callable_on_its_masked_copies_too(tiny_cnn, images16):
    """features.2 has 6 channels: 3 images give 18 masked copies, in passes of 4 and a last one of 2."""

    def wrong_for_two_rows(out: torch.Tensor) -> torch.Tensor:
        return out[:, 2] if out.shape[0] != 2 else out[:, 2:4]

    subject = ca.Subject(tiny_cnn, layer="features.2", device="cpu", batch_size=4)
    subject.gradcam(images16[:3], target=wrong_for_two_rows)  # the batch of 3 images is fine
    with pytest.raises(ValueError, match=r"a 1-D tensor of shape \(2,\) here; got a tensor of shape \(2, 2\)"):
        subject.gradcam(images16[:3], target=wrong_for_two_rows, method="scorecam")


def test_scorecam_fills_each_pass_with_masked_copies_of_several_images(tiny_cnn, images16):
    """features.2 has 6 channels: 4 images are 24 masked copies, which go in 3 full passes of 8 (not 4 of 6)."""
    batch_sizes: list[int] = []
    handle = tiny_cnn.register_forward_hook(lambda module, inputs, output: batch_sizes.append(inputs[0].shape[0]))
    try:
        ca.Subject(tiny_cnn, layer="features.2", device="cpu", batch_size=8, cache=False).gradcam(images16, method="scorecam")
    finally:
        handle.remove()
    assert batch_sizes == [4, 8, 8, 8]


def test_segmentation_callable_target_matches_plain_autograd():
    """A fully convolutional model; the target is the mean class-1 logit inside a mask."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(8, 8)
    mask[2:5, 3:7] = 1

    def score(out: torch.Tensor) -> torch.Tensor:
        return (out[:, 1] * mask).sum((1, 2)) / mask.sum()

    heatmaps = ca.Subject(model, layer="1", device="cpu").gradcam(x, target=score)
    for i in range(2):
        leaf = model[1](model[0](x[i : i + 1])).detach().requires_grad_()
        (g,) = torch.autograd.grad(score(model[2](leaf)).sum(), leaf)
        torch.testing.assert_close(heatmaps.raw[i], (g[0].mean((1, 2))[:, None, None] * leaf[0]).sum(0).detach())


class BackboneUnderNoGrad(nn.Module):
    """A frozen backbone run under ``no_grad`` (or ``inference_mode``) inside ``forward``: the graph is cut."""

    def __init__(self, mode=torch.no_grad) -> None:
        super().__init__()
        self.mode = mode
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.mode():
            features = self.backbone(x)
        return self.head(features.mean((2, 3)))


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_a_forward_cutting_the_graph_is_named_not_blamed_on_the_layer(images16, mode):
    subject = ca.Subject(BackboneUnderNoGrad(mode), device="cpu")
    cut = r"the model's forward runs \(part of\) itself under torch\.no_grad\(\) or torch\.inference_mode\(\)"
    with pytest.raises(ValueError, match=cut + r".*reaches layer 'backbone'.*method='eigencam' or 'scorecam'"):
        subject.gradcam(images16, target=0)
    for method in ("guided_backprop", "guided_gradcam"):
        with pytest.raises(ValueError, match=cut + r".*reaches the input image; [^']*$"):
            subject.saliency(images16, target=0, method=method)
    assert subject.gradcam(images16, target=0, method="eigencam").raw.shape == (4, 16, 16)  # the advice works


def test_a_layer_off_the_path_is_still_blamed_on_the_layer(images16):
    class SideBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.unused = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.unused(x)
            return self.head(self.conv(x).mean((2, 3)))

    with pytest.raises(ValueError, match="the recorded layer does not feed the model output"):
        ca.Subject(SideBranch(), device="cpu").gradcam(images16, target=0, layer="unused")
