"""Shared fixtures: small seeded models and a snapshot of everything an audit must leave untouched."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import pytest
import torch
from torch import nn

# The tests run tiny tensors, where intra-op thread synchronisation costs more than it saves
# (10-100x slower on a busy 2-core machine); one thread per process also suits pytest-xdist.
torch.set_num_threads(1)


class TinyCNN(nn.Module):
    """conv(3->4) -> in-place ReLU -> conv(4->6) -> ReLU -> BatchNorm -> global average pool -> linear(6->5)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(6)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def tiny_cnn() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN().eval()


_TORCHVISION_CACHE: dict[str, nn.Module] = {}


@pytest.fixture(scope="session")
def torchvision_model() -> Callable[[str], nn.Module]:
    """``get(name)``: a torchvision model with seeded random weights (``torch.manual_seed(0)``, 10
    classes), in eval mode, built once per session. Tests must leave it as they found it."""

    def get(name: str) -> nn.Module:
        if name not in _TORCHVISION_CACHE:
            import torchvision

            torch.manual_seed(0)
            _TORCHVISION_CACHE[name] = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
        return _TORCHVISION_CACHE[name]

    return get


@pytest.fixture
def images16() -> torch.Tensor:
    """Four seeded random 16x16 images in [0,1]."""
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def linear_head_model(
    activations: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor], scale: float
) -> tuple[nn.Module, torch.Tensor]:
    """A model whose layer ``relu`` outputs exactly ``activations`` and whose class-0 score has exactly
    ``gradients`` as its gradient with respect to that layer; and the image that produces them.

    ``conv`` (1x1) multiplies image channel ``k`` by ``scale`` into channel ``k``; ``relu`` leaves the
    non-negative activations unchanged; ``head`` is linear, score_0 = sum_kij G_kij A_kij, so
    dS/dA = G. The image is ``A / scale`` (it must lie in [0,1]).
    """
    A = torch.stack([torch.as_tensor(a, dtype=torch.float32) for a in activations])
    G = torch.stack([torch.as_tensor(g, dtype=torch.float32) for g in gradients])
    k, h, w = A.shape
    conv = nn.Conv2d(3, k, 1, bias=False)
    head = nn.Linear(k * h * w, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for channel in range(k):
            conv.weight[channel, channel] = scale
        head.weight.zero_()
        head.weight[0] = G.flatten()
        head.weight[1] = 1.0
    image = torch.zeros(1, 3, h, w)
    image[0, :k] = A / scale
    model = nn.Sequential()
    model.add_module("conv", conv)
    model.add_module("relu", nn.ReLU())
    model.add_module("flatten", nn.Flatten())
    model.add_module("head", head)
    return model.eval(), image


@pytest.fixture
def make_linear_head_model() -> Callable[..., tuple[nn.Module, torch.Tensor]]:
    return linear_head_model


class SeedsConvFC(nn.Module):
    """The hand-worked Grad-CAM example: conv weight [[1,0],[1,2]] (no bias) -> O (2x2) -> [ReLU] -> FC [[0,1,0,1],[1,0,1,1]] (no bias)."""

    def __init__(self, relu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 2, bias=False)
        self.relu = nn.ReLU() if relu else nn.Identity()
        self.fc = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[1.0, 0.0], [1.0, 2.0]]]]))
            self.fc.weight.copy_(torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


SEEDS_X = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 2.0], [2.0, 1.0, 2.0]])


@pytest.fixture
def seeds_x() -> torch.Tensor:
    """The hand-worked example's input X (3x3)."""
    return SEEDS_X.clone()


@pytest.fixture
def seeds_subject() -> Callable[..., tuple[Any, torch.Tensor]]:
    """``make(relu=False) -> (Subject, image)``: the image holds X / 3 in channel 0 (images live in
    [0,1]) and the subject's preprocess ``x -> 3 * x[:, :1]`` restores X."""

    def make(relu: bool = False) -> tuple[Any, torch.Tensor]:
        import cnnaudit as ca

        image = torch.zeros(1, 3, 3, 3)
        image[0, 0] = SEEDS_X / 3
        return ca.Subject(SeedsConvFC(relu), layer="conv", preprocess=lambda x: 3 * x[:, :1], device="cpu"), image

    return make


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def model_state(model: nn.Module) -> dict[str, Any]:
    """Training flags, hooks, requires_grad, parameter values, .grad and buffers, copied."""
    return {
        "training": [m.training for m in model.modules()],
        "hooks": [[len(getattr(m, name)) for name in _HOOK_DICTS] for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "values": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
    }


def assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    for key in ("training", "hooks", "requires_grad"):
        assert before[key] == after[key], key
    for key in ("values", "buffers"):
        assert all(torch.equal(a, b) for a, b in zip(before[key], after[key], strict=True)), key
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b)), "grads"


@pytest.fixture
def snapshot() -> Callable[[nn.Module], dict[str, Any]]:
    return model_state


@pytest.fixture
def same_state() -> Callable[[dict[str, Any], dict[str, Any]], None]:
    return assert_same_state
