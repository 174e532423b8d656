"""Grad-CAM and Score-CAM against their floor and the peers, side by side in one process (run by ``run.py``).

Every variant gets the same model object, the same ``[0,1]`` CPU images, the same target classes
(each image's predicted class, computed once beforehand) and produces the same thing: maps at
input resolution.

* ``cnnaudit`` — ``Subject(cache=False).gradcam(images, target=classes).maps``: ReLU, bilinear
  upsampling and normalisation included, everything on the device.
* ``cnnaudit_cached`` — the same request to a subject with the cache on (the default): what an
  audit pays when an earlier one asked for the same maps.
* ``floor`` — the least work any Grad-CAM needs: host-to-device copy, normalisation, forward
  pass with frozen parameters, a hook making the layer's output a leaf, the target scores and
  one ``torch.autograd.grad`` to the layer. No CAM work.
* ``pytorch_grad_cam`` — ``pytorch_grad_cam.GradCAM`` (numpy maps, normalised, input size).
* ``captum`` — ``captum.attr.LayerGradCam(..., relu_attributions=True)`` then
  ``LayerAttribution.interpolate(..., "bilinear")`` to the input size (not normalised).

The peers get the model and the normalised input (normalisation counted in their time), with
parameters requiring grad, as a user's model has them. Before timing, one round of every variant
(which is also the warm-up) checks that the maps agree: the lowest per-image Pearson correlation
with cnnaudit's must exceed 0.99, else the benchmark stops — a speed comparison of different
outputs would mean nothing. This check lives here rather than in the test suite because it only
matters where the peers are installed (the ``bench`` extra, which CI does not install); the
maps themselves are tested against plain-autograd oracles in ``tests/``.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import torch
import torchvision
from torch import nn

import cnnaudit as ca
from timing import interleaved, per_image_ms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
AGREEMENT = 0.99
GOAL_RATIO_TO_FLOOR = 1.15
GOAL_SPEEDUP_VS_PYTORCH_GRAD_CAM = 2.0


def require_peers() -> None:
    missing = [name for name in ("pytorch_grad_cam", "captum") if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"the peers {missing} are not installed; install the bench extra: pip install -e '.[bench]'")


def build(model_name: str, device: torch.device) -> nn.Module:
    """A torchvision model with seeded random weights (nothing is downloaded), in eval mode on ``device``."""
    torch.manual_seed(0)
    return getattr(torchvision.models, model_name)(weights=None).eval().to(device)


def random_images(n: int, size: int) -> torch.Tensor:
    """``n`` seeded uniform-noise images ``(n,3,size,size)`` in ``[0,1]`` on the CPU."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def predicted_classes(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return model(ca.normalize(MEAN, STD)(images.to(device))).argmax(1).cpu()


def floor_pass(model: nn.Module, layer: nn.Module, images: torch.Tensor, classes: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``dS/dA`` for the layer output ``A`` with frozen parameters: the floor of every Grad-CAM."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    recorded: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        recorded.append(output.detach().requires_grad_())
        return recorded[-1]

    handle = layer.register_forward_hook(hook)
    for p in parameters:
        p.requires_grad_(False)
    try:
        output = model(ca.normalize(MEAN, STD)(images.to(device, non_blocking=True)))
        scores = output.gather(1, classes.to(device, non_blocking=True)[:, None])
        (gradient,) = torch.autograd.grad(scores.sum(), recorded[0])
    finally:
        handle.remove()
        for p in parameters:
            p.requires_grad_(True)
    return gradient


def pytorch_grad_cam_maps(method: str, model: nn.Module, layer: nn.Module, images: torch.Tensor, classes: torch.Tensor,
                          device: torch.device, batch_size: int | None = None) -> torch.Tensor:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model_input = ca.normalize(MEAN, STD)(images.to(device, non_blocking=True))
    with getattr(pytorch_grad_cam, method)(model=model, target_layers=[layer]) as cam:
        if batch_size is not None:
            cam.batch_size = batch_size  # Score-CAM's masked inputs per forward pass
        maps = cam(input_tensor=model_input, targets=[ClassifierOutputTarget(c) for c in classes.tolist()])
    return torch.from_numpy(maps)


def captum_maps(model: nn.Module, layer: nn.Module, images: torch.Tensor, classes: torch.Tensor, device: torch.device) -> torch.Tensor:
    from captum.attr import LayerAttribution, LayerGradCam

    model_input = ca.normalize(MEAN, STD)(images.to(device, non_blocking=True))
    attributions = LayerGradCam(model, layer).attribute(model_input, target=classes.to(device), relu_attributions=True)
    return LayerAttribution.interpolate(attributions, tuple(images.shape[-2:]), interpolate_mode="bilinear")[:, 0]


def lowest_correlation(maps: torch.Tensor, reference: torch.Tensor) -> float:
    """The lowest per-image Pearson correlation of two ``(N,H,W)`` stacks of maps (1 for two equal constant maps)."""
    a, b = (m.detach().cpu().double().flatten(1) for m in (maps, reference))
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    norms = a.norm(dim=1) * b.norm(dim=1)
    both_flat = (a.abs().amax(1) == 0) & (b.abs().amax(1) == 0)
    correlation = torch.where(norms > 0, (a * b).sum(1) / norms.clamp(min=1e-300), both_flat.double())
    return float(correlation.min())


def compare(variants: dict[str, Callable[[], torch.Tensor]], device: torch.device, repeats: int, checked: tuple[str, ...],
            threshold: float | None) -> tuple[dict[str, list[float]], dict[str, float]]:
    """One untimed round (warm-up) whose maps are compared with ``cnnaudit``'s, then the timed rounds.

    Returns (seconds per round of each variant, lowest correlation per checked variant); raises
    ``SystemExit`` when a checked variant's correlation is at or below ``threshold``.
    """
    outputs = {name: variant() for name, variant in variants.items()}
    agreement = {name: round(lowest_correlation(outputs[name], outputs["cnnaudit"]), 6) for name in checked}
    failed = {name: value for name, value in agreement.items() if threshold is not None and not value > threshold}
    if failed:
        raise SystemExit(f"maps disagree with cnnaudit's (lowest per-image correlation {failed}, need > {threshold}); not timing them")
    del outputs
    return interleaved(variants, device, repeats, warmup=0), agreement


def measure_gradcam(model_name: str, device: torch.device, batch: int, size: int, repeats: int) -> dict[str, object]:
    """Grad-CAM time per image of cnnaudit, its floor and the peers on ``model_name``'s ``layer4``."""
    require_peers()
    model = build(model_name, device)
    layer = model.layer4
    images = random_images(batch, size)
    classes = predicted_classes(model, images, device)
    settings = dict(layer="layer4", preprocess=ca.normalize(MEAN, STD), device=device, batch_size=batch)
    plain, cached = ca.Subject(model, cache=False, **settings), ca.Subject(model, **settings)
    variants: dict[str, Callable[[], torch.Tensor]] = {
        "cnnaudit": lambda: plain.gradcam(images, target=classes).maps,
        "cnnaudit_cached": lambda: cached.gradcam(images, target=classes).maps,
        "floor": lambda: floor_pass(model, layer, images, classes, device),
        "pytorch_grad_cam": lambda: pytorch_grad_cam_maps("GradCAM", model, layer, images, classes, device),
        "captum": lambda: captum_maps(model, layer, images, classes, device),
    }
    seconds, agreement = compare(variants, device, repeats, ("cnnaudit_cached", "pytorch_grad_cam", "captum"), AGREEMENT)
    spread = per_image_ms(seconds, batch)
    ms = {name: value["median"] for name, value in spread.items()}
    ratio_to_floor = ms["cnnaudit"] / ms["floor"]
    speedup_vs_pgc = ms["pytorch_grad_cam"] / ms["cnnaudit"]
    return {
        "model": f"{model_name} (random init, seed 0)",
        "layer": "layer4",
        "batch": batch,
        "size": size,
        "repeats": repeats,
        "ms_per_image": spread,
        "ratio_to_floor": round(ratio_to_floor, 3),
        "speedup_vs_pytorch_grad_cam": round(speedup_vs_pgc, 3),
        "speedup_vs_captum": round(ms["captum"] / ms["cnnaudit"], 3),
        "speedup_cached": round(ms["cnnaudit"] / ms["cnnaudit_cached"], 1),
        "lowest_map_correlation_with_cnnaudit": agreement,
        "goals": {
            "ratio_to_floor_at_most": GOAL_RATIO_TO_FLOOR,
            "ratio_to_floor_met": ratio_to_floor <= GOAL_RATIO_TO_FLOOR,
            "speedup_vs_pytorch_grad_cam_at_least": GOAL_SPEEDUP_VS_PYTORCH_GRAD_CAM,
            "speedup_vs_pytorch_grad_cam_met": speedup_vs_pgc >= GOAL_SPEEDUP_VS_PYTORCH_GRAD_CAM,
        },
    }


def measure_scorecam(model_name: str, layer_name: str, device: torch.device, n_images: int, size: int, batch: int,
                     repeats: int) -> dict[str, object]:
    """Score-CAM time per image of cnnaudit and pytorch-grad-cam: ``channels`` masked forward passes per image each.

    Both mask the normalised model input, ``batch`` masked images per forward pass. The maps are
    compared but not required to agree to 0.99: pytorch-grad-cam upsamples the masks with
    ``align_corners=True`` (``nn.UpsamplingBilinear2d``), cnnaudit with ``align_corners=False`` as
    everywhere else.
    """
    require_peers()
    model = build(model_name, device)
    layer = model.get_submodule(layer_name)
    images = random_images(n_images, size)
    classes = predicted_classes(model, images, device)
    subject = ca.Subject(model, layer=layer_name, preprocess=ca.normalize(MEAN, STD), device=device, batch_size=batch, cache=False)
    variants: dict[str, Callable[[], torch.Tensor]] = {
        "cnnaudit": lambda: subject.gradcam(images, target=classes, method="scorecam").maps,
        "pytorch_grad_cam": lambda: pytorch_grad_cam_maps("ScoreCAM", model, layer, images, classes, device, batch_size=batch),
    }
    seconds, agreement = compare(variants, device, repeats, ("pytorch_grad_cam",), None)
    spread = per_image_ms(seconds, n_images)
    ms = {name: value["median"] for name, value in spread.items()}
    channels = subject.layers(size=(size, size))[layer_name].channels
    return {
        "model": f"{model_name} (random init, seed 0)",
        "layer": layer_name,
        "channels": channels,
        "images": n_images,
        "size": size,
        "masked_images_per_forward": batch,
        "repeats": repeats,
        "ms_per_image": spread,
        "speedup_vs_pytorch_grad_cam": round(ms["pytorch_grad_cam"] / ms["cnnaudit"], 3),
        "lowest_map_correlation_with_cnnaudit": agreement,
    }
