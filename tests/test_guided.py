"""Guided backprop, deconvnet and guided Grad-CAM against hand-computed tiny ReLU nets and a module-swap oracle."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnaudit as ca
from cnnaudit.attribution.guided import GuidedRuleWarning

# A 2-pixel ReLU net on image channel 0: h = relu(W1 p), y = W2 h. For p = (0.5, 0.25):
# W1 p = (0.25, -0.75, 0.5), so the forward mask is (1, 0, 1); class 0 reads W2[0] = (1, 3, -2).
W1 = [[1.0, -1.0], [-2.0, 1.0], [0.0, 2.0]]
W2 = [[1.0, 3.0, -2.0], [0.0, 0.0, 0.0]]
P = (0.5, 0.25)
EXPECTED = {
    # gradient at h: W2[0] * mask * [W2[0] > 0] = (1, 0, 0) -> dy/dp = W1[0] = (1, -1)
    "guided_backprop": [1.0, 1.0],
    # gradient at h: relu(W2[0]) = (1, 3, 0) -> dy/dp = 1*(1,-1) + 3*(-2,1) = (-5, 2)
    "deconvnet": [5.0, 2.0],
}
# (the plain gradient would be 1*(1,-1) - 2*(0,2) = (1, -5): different from both)


class TwoPixelNet(nn.Module):
    def __init__(self, relu: str) -> None:
        super().__init__()
        self.relu_kind = relu
        self.hidden = nn.Linear(2, 3, bias=False)
        self.out = nn.Linear(3, 2, bias=False)
        self.relu = nn.ReLU(inplace=relu == "module_inplace")
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor(W1))
            self.out.weight.copy_(torch.tensor(W2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x[:, 0, 0, :])
        if self.relu_kind.startswith("module"):
            h = self.relu(h)
        elif self.relu_kind == "functional":
            h = F.relu(h)
        elif self.relu_kind == "functional_inplace":
            h = F.relu(h, inplace=True)
        elif self.relu_kind == "torch_relu_":
            torch.relu_(h)  # result deliberately ignored: the in-place effect must be what counts
        elif self.relu_kind == "tensor_method":
            h = h.relu()
        return self.out(h)


def two_pixel_image() -> torch.Tensor:
    image = torch.zeros(1, 3, 1, 2)
    image[0, 0, 0] = torch.tensor(P)
    return image


@pytest.mark.parametrize("relu", ["module", "module_inplace", "functional", "functional_inplace", "torch_relu_", "tensor_method"])
@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_rules_match_hand_computation_for_every_way_of_calling_relu(relu, method):
    subject = ca.Subject(TwoPixelNet(relu), device="cpu")
    heatmaps = subject.saliency(two_pixel_image(), target=0, method=method)
    torch.testing.assert_close(heatmaps.raw[0, 0], torch.tensor(EXPECTED[method]))
    assert heatmaps.layer == "input"


def test_guided_gradcam_matches_hand_computation(make_linear_head_model):
    """The worked example's A^1, A^2 (alpha = 1/3, -2/3) at scale 5. Guided backprop reaches image channel 0 as
    5 * relu(1/3) * [A^1 > 0] (channel 1's gradient -2/3 is blocked), so the map is 5/3 [A^1 > 0];
    times the Grad-CAM map [[1/3,0,2/3],[0,1,0],[0,1/3,0]] (same resolution: no upsampling)."""
    A = [[[1, 0, 2], [3, 5, 0], [1, 1, 1]], [[0, 1, 0], [3, 1, 0], [1, 0, 1]]]
    G = [[[1 / 3] * 3] * 3, [[-2 / 3] * 3] * 3]
    model, image = make_linear_head_model(A, G, scale=5.0)
    subject = ca.Subject(model, layer="relu", device="cpu")
    guided = subject.saliency(image, target=0)
    torch.testing.assert_close(guided.raw[0], 5 / 3 * (torch.tensor(A[0]) > 0).float())
    combined = subject.saliency(image, target=0, method="guided_gradcam")
    expected = 5 / 3 * torch.tensor([[1 / 3, 0, 2 / 3], [0, 1, 0], [0, 1 / 3, 0]])
    torch.testing.assert_close(combined.raw[0], expected)
    assert combined.layer == "relu"


def test_seeds_gradient_example_with_identity_relu(seeds_subject):
    """The worked example's conv + FC with a ReLU after the conv (O > 0, dy1/dO >= 0: nothing is blocked): guided
    backprop equals dy1/dX = [[0,1,0],[0,2,2],[0,1,2]], times 3 for the preprocess x -> 3x."""
    subject, image = seeds_subject(relu=True)
    expected = 3 * torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 2.0], [0.0, 1.0, 2.0]])
    for method in ("guided_backprop", "deconvnet"):
        torch.testing.assert_close(subject.saliency(image, target=0, method=method).raw[0], expected)


class _OracleGuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0).to(grad.dtype) * (grad > 0).to(grad.dtype)


class _OracleReLU(nn.Module):
    def forward(self, x):
        return _OracleGuidedReLU.apply(x)


def test_resnet18_inplace_relu_matches_module_swap_oracle(torchvision_model):
    """ResNet's in-place nn.ReLU modules vs an independent oracle that swaps every nn.ReLU module for
    a non-in-place guided ReLU and takes the plain autograd input gradient, image by image."""
    model = torchvision_model("resnet18")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    heatmaps = ca.Subject(model, device="cpu").saliency(x, target=[1, 4])
    oracle = copy.deepcopy(model)
    for name, module in list(oracle.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, _OracleReLU())
    for i, target in enumerate([1, 4]):
        image = x[i : i + 1].clone().requires_grad_()
        (g,) = torch.autograd.grad(oracle(image)[0, target], image)
        torch.testing.assert_close(heatmaps.raw[i], g[0].abs().amax(0), rtol=1e-4, atol=1e-7)
    assert not torch.equal(heatmaps.raw, ca.Subject(model, device="cpu").saliency(x, target=[1, 4], method="deconvnet").raw)


def test_batched_saliency_equals_per_image(tiny_cnn, images16):
    subject = ca.Subject(tiny_cnn, layer="features.2", device="cpu", batch_size=3)
    for method in ("guided_backprop", "deconvnet", "guided_gradcam"):
        batched = subject.saliency(images16, target=2, method=method)
        for i in range(4):
            single = subject.saliency(images16[i : i + 1], target=2, method=method)
            torch.testing.assert_close(batched.raw[i], single.raw[0], rtol=1e-5, atol=1e-7)


def test_other_activations_raise_instead_of_a_silently_wrong_map(snapshot, same_state):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    subject = ca.Subject(model, device="cpu")
    before = snapshot(model)
    with pytest.raises(ValueError, match="silu.*ReLU networks"):
        subject.saliency(torch.rand(1, 3, 8, 8))
    same_state(before, snapshot(model))
    x = torch.ones(3, requires_grad=True)  # the rectifier mode is gone: relu backward is the plain one again
    (g,) = torch.autograd.grad(F.relu(x - torch.tensor([2.0, 0.0, 0.0])).mul(torch.tensor([1.0, -1.0, 1.0])).sum(), x)
    assert g.tolist() == [0.0, -1.0, 1.0]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_scripted_model_is_refused():
    model = torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 2)))
    with pytest.raises(ValueError, match="TorchScript"):
        ca.Subject(model, device="cpu").saliency(torch.rand(1, 3, 8, 8))


def test_unknown_saliency_method(tiny_cnn, images16):
    with pytest.raises(ValueError, match="guided_backprop, deconvnet, guided_gradcam"):
        ca.Subject(tiny_cnn, device="cpu").saliency(images16, method="smoothgrad")


HAND_WRITTEN = {
    "clamp": (lambda x: x.clamp(min=0), "clamp"),
    "maximum": (lambda x: torch.maximum(x, torch.zeros_like(x)), "torch.maximum"),
    "mask_product": (lambda x: x * (x > 0), r"comparison \(x > 0\)"),
    "swish": (lambda x: x * torch.sigmoid(x), "sigmoid"),
}


class HandWrittenCNN(nn.Module):
    """A small CNN whose non-linearities are written without any ReLU call (or with nn.ReLU, ``act=None``)."""

    def __init__(self, act=None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.act = act
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu = nn.ReLU() if act is None else None  # an unused nn.ReLU is refused (ValueError)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.act if self.act is not None else self.relu
        return self.fc(act(self.conv2(act(self.conv1(x)))).mean(dim=(2, 3)))


@pytest.mark.parametrize("form", sorted(HAND_WRITTEN))
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_no_relu_call_warns_that_the_rule_changed_nothing(form, method, images16):
    act, seen = HAND_WRITTEN[form]
    subject = ca.Subject(HandWrittenCNN(act), device="cpu")
    with pytest.warns(GuidedRuleWarning, match=rf"no ReLU call .*{seen}.*plain input gradient"):
        subject.saliency(images16[:2], target=1, method=method)


def test_the_clamp_form_returns_the_plain_input_gradient(images16):
    model = HandWrittenCNN(HAND_WRITTEN["clamp"][0]).eval()
    x = images16[:3]
    with pytest.warns(GuidedRuleWarning):
        heatmaps = ca.Subject(model, device="cpu").saliency(x, target=[0, 2, 1], method="guided_backprop")
    image = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(model(image)[torch.arange(3), torch.tensor([0, 2, 1])].sum(), image)
    torch.testing.assert_close(heatmaps.raw, g.abs().amax(dim=1), rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "guided_gradcam"])
def test_relu_networks_do_not_warn(method, images16):
    subject = ca.Subject(HandWrittenCNN(), layer="conv2", device="cpu")
    subject.saliency(images16[:2], target=1, method=method)
