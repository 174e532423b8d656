"""Grad-CAM / HiResCAM / LayerCAM on five torchvision architectures against a plain-autograd oracle.

The oracle works one image at a time and shares no code with cnnaudit: a plain forward hook copies
the layer's output, the architecture's head (written out below, as in torchvision's ``forward``)
is applied to a leaf holding that copy, and ``torch.autograd.grad`` gives dS/dA.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnaudit as ca

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pooled_classifier(model: nn.Module, a: torch.Tensor) -> torch.Tensor:
    return model.classifier(torch.flatten(model.avgpool(a), 1))


HEADS: dict[str, tuple[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]]] = {
    "resnet18": ("layer4", lambda m, a: m.fc(torch.flatten(m.avgpool(a), 1))),
    "vgg11": ("features", pooled_classifier),
    "densenet121": ("features", lambda m, a: m.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(a), 1), 1))),
    "mobilenet_v3_small": ("features", pooled_classifier),
    "efficientnet_b0": ("features", pooled_classifier),
}

ORACLE_MAPS = {
    "gradcam": lambda a, g: (g.mean(dim=(1, 2), keepdim=True) * a).sum(0),
    "hirescam": lambda a, g: (g * a).sum(0),
    "layercam": lambda a, g: (torch.clamp(g, min=0) * a).sum(0),
}


def oracle(model: nn.Module, layer: str, head, image: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, dS/dA) for one image (3,H,W) in [0,1]."""
    copies: list[torch.Tensor] = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: copies.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(((image - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])[None])
    finally:
        handle.remove()
    a = copies[0].requires_grad_()
    (g,) = torch.autograd.grad(head(model, a)[0, target], a)
    return a[0].detach(), g[0]


@pytest.mark.parametrize("name", sorted(HEADS))
def test_cams_match_plain_autograd_oracle_per_image(torchvision_model, name):
    model = torchvision_model(name)
    layer, head = HEADS[name]
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    targets = [0, 5, 9]
    subject = ca.Subject(model, preprocess=ca.normalize(MEAN, STD), device="cpu", batch_size=2)
    results = {method: subject.gradcam(x, target=targets, method=method) for method in ORACLE_MAPS}
    assert subject.layer == layer
    for i, target in enumerate(targets):
        a, g = oracle(model, layer, head, x[i], target)
        assert g.abs().max() > 0
        for method, formula in ORACLE_MAPS.items():
            expected = formula(a, g)
            scale = expected.abs().max().item()
            torch.testing.assert_close(results[method].raw[i], expected, rtol=1e-4, atol=1e-5 * scale)
