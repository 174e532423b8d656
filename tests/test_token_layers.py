"""Token-grid (ViT) and channels-last (Swin) layers as CAM layers, against a plain-autograd oracle.

The oracle shares no code with cnnaudit: a plain forward hook swaps the layer's output for a leaf
copy (the rest of the model runs from it), ``torch.autograd.grad`` gives dS/dA, and the output is
sliced / permuted by hand to ``(C, h, w)``: ViT drops its class token and unflattens the 4x4 patch
grid (64 px, patch 16), Swin permutes its ``(h, w, C)`` stage output. One image at a time, while
cnnaudit runs batches of 2.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnaudit as ca
from cnnaudit import layouts

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VIT_NORM = "encoder.layers.encoder_layer_11.ln_1"  # the last block's first norm: the standard ViT CAM layer
TARGETS = [3, 7]

Read = Callable[[torch.Tensor], torch.Tensor]


def vit_grid(t: torch.Tensor) -> torch.Tensor:
    """(N, 17, C) -> (N, C, 4, 4): drop the class token, unflatten the row-major patch tokens."""
    return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    """torchvision vit_b_16 at 64 px (4x4 patch grid + class token), seeded random weights, 10 classes. torchvision
    initialises the head to zero (every gradient would be 0), so the head gets seeded random weights too."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=64, num_classes=10).eval()
    with torch.no_grad():
        model.heads.head.weight.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(1))
    return model


@pytest.fixture(scope="module")
def swin() -> nn.Module:
    """torchvision swin_t, seeded random weights, 10 classes (any input size works; 96 px gives a 3x3 last stage)."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.swin_t(weights=None, num_classes=10).eval()


def images(size: int, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(7))


def oracle(model: nn.Module, layer: str, read: Read, image: torch.Tensor,
           target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, dS/dA), each (C, h, w), for one image (3, H, W) in [0, 1]."""
    leaves: list[torch.Tensor] = []

    def swap(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        leaves.append(output.detach().clone().requires_grad_())
        return leaves[-1]

    handle = dict(model.named_modules())[layer].register_forward_hook(swap)
    try:
        with torch.enable_grad():
            scores = model(((image - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])[None])
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(scores[0, target], leaves[0])
    return read(leaves[0].detach())[0], read(g)[0]


ORACLE_MAPS = {
    "gradcam": lambda a, g: (g.mean(dim=(1, 2), keepdim=True) * a).sum(0),
    "hirescam": lambda a, g: (g * a).sum(0),
    "layercam": lambda a, g: (torch.clamp(g, min=0) * a).sum(0),
}


def relative_errors(subject: ca.Subject, model: nn.Module, layer: str, read: Read, x: torch.Tensor,
                    methods: tuple[str, ...] = tuple(ORACLE_MAPS)) -> dict[str, float]:
    """max |cnnaudit - oracle| per gradient method over the images of ``x``, relative to the size of the summands
    (the formula on |A| and |dA|): a sum that cancels is measured by the terms it cancels."""
    results = {method: subject.gradcam(x, target=TARGETS, layer=layer, method=method) for method in methods}
    errors = dict.fromkeys(methods, 0.0)
    for i, target in enumerate(TARGETS):
        a, g = oracle(model, layer, read, x[i], target)
        assert g.abs().max() > 0  # the patch tokens do feed the score
        for method in methods:
            formula = ORACLE_MAPS[method]
            expected = formula(a, g)
            assert results[method].raw[i].shape == expected.shape
            error = (results[method].raw[i] - expected).abs().max() / formula(a.abs(), g.abs()).max()
            errors[method] = max(errors[method], error.item())
    return errors


@pytest.mark.parametrize("layer", [VIT_NORM, "encoder.layers.encoder_layer_5"])
def test_vit_token_grid_cams_match_plain_autograd_oracle(vit, snapshot, same_state, layer):
    before = snapshot(vit)
    subject = ca.Subject(vit, preprocess=ca.normalize(MEAN, STD), device="cpu", batch_size=2)
    errors = relative_errors(subject, vit, layer, vit_grid, images(64))
    assert max(errors.values()) < 1e-6, errors
    heatmaps = subject.gradcam(images(64), target=TARGETS, layer=layer)
    assert heatmaps.layout == "tokens 4x4 +1" and heatmaps.raw.shape == (2, 4, 4) and heatmaps.maps.shape == (2, 64, 64)
    same_state(before, snapshot(vit))


@pytest.mark.parametrize("layer, grid, methods", [("features.7", 3, ("gradcam", "layercam")),
                                                  ("features.5", 6, tuple(ORACLE_MAPS))])
def test_swin_channels_last_cams_match_plain_autograd_oracle(swin, layer, grid, methods):
    subject = ca.Subject(swin, preprocess=ca.normalize(MEAN, STD), device="cpu", batch_size=2)
    errors = relative_errors(subject, swin, layer, channels_last, images(96), methods)
    assert max(errors.values()) < 1e-6, errors
    assert subject.gradcam(images(96), target=TARGETS, layer=layer).layout == f"channels-last {grid}x{grid}"


def test_hirescam_that_cancels_to_rounding_noise_before_a_layernorm_is_refused(swin):
    """Swin's ``features.7`` feeds only ``norm`` (a LayerNorm over channels): LN(c x) = LN(x), so HiResCAM's
    sum_k dS/dA_k A_k is 0 at every position in exact arithmetic (the oracle's map is rounding noise), and
    normalising it would draw noise at full contrast."""
    x = images(96)
    for i, target in enumerate(TARGETS):
        a, g = oracle(swin, "features.7", channels_last, x[i], target)
        assert (g * a).sum(0).abs().max() < 1e-4 * (g.abs() * a.abs()).sum(0).max()  # cancelled
        assert (g.mean(dim=(1, 2), keepdim=True) * a).sum(0).abs().max() > 1e-2 * (g.abs().mean(dim=(1, 2), keepdim=True) * a.abs()).sum(0).max()
    subject = ca.Subject(swin, preprocess=ca.normalize(MEAN, STD), device="cpu")
    with pytest.raises(ValueError, match=r"hirescam at layer 'features.7' cancels to rounding noise.*LayerNorm.*"
                                         r"method='gradcam' or 'layercam'"):
        subject.gradcam(x, target=TARGETS, layer="features.7", method="hirescam")
    assert subject.gradcam(x, target=TARGETS, layer="permute", method="hirescam").zero.sum() == 0  # after the norm


def test_eigencam_on_a_token_grid_matches_an_svd_oracle(vit):
    """Eigen-CAM: the centred (hw, C) activations projected on their first right singular vector (numpy, float64),
    signed to correlate with the channel sum."""
    x = images(64)
    subject = ca.Subject(vit, preprocess=ca.normalize(MEAN, STD), device="cpu")
    heatmaps = subject.gradcam(x, layer=VIT_NORM, method="eigencam")
    for i in range(len(x)):
        a = oracle(vit, VIT_NORM, vit_grid, x[i], 0)[0].double().numpy()
        centred = a.reshape(a.shape[0], -1).T - a.reshape(a.shape[0], -1).T.mean(axis=0)
        projection = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
        projection *= -1.0 if projection @ a.sum(axis=0).ravel() < 0 else 1.0
        expected = projection.reshape(4, 4)
        assert np.abs(heatmaps.raw[i].numpy() - expected).max() < 1e-5 * np.abs(expected).max()


def test_scorecam_on_a_channels_last_stage_matches_oracle(swin):
    """Score-CAM at Swin's first stage (96 channels, 8x8 at 32 px): each channel map upsampled, min-max
    normalised, multiplied into the model input; softmax of the target scores weights the channels."""
    x = images(32, n=1)
    subject = ca.Subject(swin, preprocess=ca.normalize(MEAN, STD), device="cpu", batch_size=48)
    heatmaps = subject.gradcam(x, target=TARGETS[:1], layer="features.1", method="scorecam")
    a = oracle(swin, "features.1", channels_last, x[0], TARGETS[0])[0]
    masks = F.interpolate(a[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    low, high = masks.amin(dim=(1, 2, 3), keepdim=True), masks.amax(dim=(1, 2, 3), keepdim=True)
    masks = (masks - low) / (high - low)
    model_input = (x[0] - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        scores = torch.cat([swin(model_input * masks[k : k + 48])[:, TARGETS[0]] for k in range(0, 96, 48)])
    expected = (scores.softmax(dim=0)[:, None, None] * a).sum(0)
    assert heatmaps.layout == "channels-last 8x8"
    assert (heatmaps.raw[0] - expected).abs().max() < 1e-5 * expected.abs().max()


def vit_reshape(output: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    return output[:, 1:].unflatten(1, (input_size[0] // 16, input_size[1] // 16)).permute(0, 3, 1, 2)


def test_a_reshape_callable_reads_the_layer_as_the_user_says_and_keys_the_cache(vit):
    x = images(64)
    inferred = ca.Subject(vit, device="cpu").gradcam(x, target=TARGETS, layer=VIT_NORM, method="hirescam")
    for reshape in (vit_reshape, {VIT_NORM: vit_reshape}):
        subject = ca.Subject(vit, device="cpu", reshape=reshape)
        given = subject.gradcam(x, target=TARGETS, layer=VIT_NORM, method="hirescam")
        assert given.layout == "reshape 4x4"
        torch.testing.assert_close(given.raw, inferred.raw, rtol=0, atol=0)
    subject.reshape = lambda output, size: vit_reshape(output, size).transpose(2, 3)  # another reading: not a cache hit
    transposed = subject.gradcam(x, target=TARGETS, layer=VIT_NORM, method="hirescam")
    torch.testing.assert_close(transposed.raw, inferred.raw.transpose(1, 2), rtol=0, atol=0)
    inventory = ca.Subject(vit, device="cpu", reshape={VIT_NORM: vit_reshape}).layers(size=(64, 64))
    assert inventory[VIT_NORM].layout == "reshape"
    assert inventory["encoder.layers.encoder_layer_10.ln_1"].layout == "tokens 4x4 +1"


@pytest.mark.parametrize("reshape, message", [
    (lambda o, size: vit_reshape(o, size).mean(dim=1, keepdim=True), "computes new values"),
    (lambda o, size: 2 * vit_reshape(o, size), "computes new values"),
    (lambda o, size: vit_reshape(o, size).flip(0), "mixes images"),
    (lambda o, size: vit_reshape(o, size)[:, :, :, [0, 0, 1, 2]], "repeats elements"),
    (lambda o, size: o[:, 1:], r"returned shape \(2, 16, 768\); it must return a 4-D"),
    (lambda o, size: vit_reshape(o, size)[:1], "batch size N = 2"),
])
def test_a_reshape_that_is_not_a_selection_of_each_image_is_refused(vit, reshape, message):
    subject = ca.Subject(vit, device="cpu", reshape=reshape)
    with pytest.raises(ValueError, match=message) as error:
        subject.gradcam(images(64), target=TARGETS, layer=VIT_NORM)
    assert VIT_NORM in str(error.value)


def test_reshape_argument_errors_name_what_to_pass(tiny_cnn):
    with pytest.raises(KeyError, match="features.2"):
        ca.Subject(tiny_cnn, device="cpu", reshape={"features.22": vit_reshape})
    with pytest.raises(TypeError, match=r"reshape\['features.2'\] must be a function"):
        ca.Subject(tiny_cnn, device="cpu", reshape={"features.2": 3})
    with pytest.raises(TypeError, match="reshape must be a function"):
        ca.Subject(tiny_cnn, device="cpu", reshape=[vit_reshape])


def test_a_subject_with_a_reshape_dict_is_copied_with_it_for_the_sanity_check(tiny_cnn, images16):
    """``sanity_check`` audits a deep copy of the subject; the caller's dict changed afterwards changes nothing."""
    by_layer = {"features.2": lambda output, size: output.transpose(2, 3)}
    subject = ca.Subject(tiny_cnn, layer="features.2", device="cpu", reshape=by_layer)
    by_layer.clear()
    twin = copy.deepcopy(subject)
    plain = ca.Subject(tiny_cnn, layer="features.2", device="cpu").gradcam(images16, target=1).raw
    for audited in (subject, twin):
        heatmaps = audited.gradcam(images16, target=1)
        assert heatmaps.layout == "reshape 16x16"
        torch.testing.assert_close(heatmaps.raw, plain.transpose(1, 2), rtol=0, atol=0)


class TokenModel(nn.Module):
    """Patch embedding (patch ``p``) -> ``extra`` leading tokens -> a token mixer -> mean token -> linear head."""

    def __init__(self, patch: int, extra: int) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, patch, stride=patch)
        self.extra = nn.Parameter(torch.randn(1, extra, 8))
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = self.mix(torch.cat([self.extra.expand(x.shape[0], -1, -1), tokens], dim=1))
        return self.head(tokens.mean(dim=1))


def test_an_ambiguous_token_count_lists_the_readings_and_names_reshape():
    torch.manual_seed(0)
    subject = ca.Subject(TokenModel(patch=21, extra=1), device="cpu")  # 64 px: a 3x3 grid + 1 = 10 = 2x2 + 6
    with pytest.raises(ValueError, match=r"3x3 grid \+ 1 leading token.*2x2 grid \+ 6 leading token.*"
                                         r"Subject\(\.\.\., reshape=callable\)"):
        subject.gradcam(images(64), layer="mix")
    assert subject.layers(size=(64, 64))["mix"].layout == "ambiguous: reshape="
    given = ca.Subject(subject.model, device="cpu",
                       reshape=lambda o, size: o[:, 1:].unflatten(1, (3, 3)).permute(0, 3, 1, 2))
    assert given.gradcam(images(64), layer="mix").raw.shape == (2, 3, 3)
    two = ca.Subject(TokenModel(patch=16, extra=2), device="cpu")
    assert two.gradcam(images(64), layer="mix").layout == "tokens 4x4 +2"


class NormedTokenModel(TokenModel):
    """:class:`TokenModel` with a transformer-style last block norm ``blocks.0.ln_1`` after the embedding."""

    def __init__(self, patch: int, extra: int) -> None:
        super().__init__(patch, extra)
        self.blocks = nn.Sequential(nn.Module())
        self.blocks[0].ln_1 = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.extra.expand(x.shape[0], -1, -1), tokens], dim=1)
        return self.head(self.mix(self.blocks[0].ln_1(tokens)).mean(dim=1))


def test_auto_on_an_ambiguous_token_grid_names_reshape_instead_of_mapping_the_patch_embedding():
    torch.manual_seed(0)
    model = NormedTokenModel(patch=21, extra=1)  # 64 px: 10 tokens read as 3x3 + 1 or 2x2 + 6
    with pytest.raises(ValueError, match=r"'blocks.0.ln_1'.*ambiguous.*reshape=callable"):
        ca.Subject(model, device="cpu").gradcam(images(64))
    grid = lambda out, size: out[:, 1:].unflatten(1, (3, 3)).permute(0, 3, 1, 2)  # noqa: E731
    given = ca.Subject(model, device="cpu", reshape={"blocks.0.ln_1": grid})
    assert given.gradcam(images(64)).layout == "reshape 3x3" and given.layer == "blocks.0.ln_1"
    assert ca.Subject(model, device="cpu").layers(size=(64, 64))["blocks.0.ln_1"].channels == 8  # C, not T
    failing = ca.Subject(model, device="cpu", reshape=lambda out, size: out.unflatten(1, (4, 4)))
    with pytest.raises(ValueError, match=r"reshape for layer 'blocks.0.ln_1' .* raised RuntimeError: unflatten"):
        failing.gradcam(images(64))


@pytest.mark.parametrize("shape, size, reading", [
    ((1, 197, 768), (224, 224), ("tokens", (14, 14), 1)),  # ViT-B/16
    ((1, 198, 768), (224, 224), ("tokens", (14, 14), 2)),  # DeiT distilled: class + distillation token
    ((1, 201, 768), (224, 224), ("tokens", (14, 14), 5)),  # class + 4 registers
    ((1, 257, 1024), (224, 224), ("tokens", (16, 16), 1)),  # ViT-L/14
    ((1, 25, 384), (64, 96), ("tokens", (4, 6), 1)),  # a non-square input
    ((1, 7, 7, 768), (224, 224), ("channels-last", (7, 7), 0)),  # swin_t features.7
    ((1, 56, 56, 96), (224, 224), ("channels-last", (56, 56), 0)),
    ((1, 512, 7, 7), (224, 224), ("nchw", (7, 7), 0)),  # resnet layer4
    ((1, 64, 55, 55), (224, 224), ("nchw", (55, 55), 0)),  # AlexNet's first conv (a stride of 4.07)
    ((1, 8, 8, 8), (64, 64), ("nchw", (8, 8), 0)),  # both readings plausible: (N, C, h, w) as always
    ((1, 100, 17, 35), (64, 64), ("nchw", (17, 35), 0)),  # neither plausible: (N, C, h, w) as always
])
def test_layouts_are_inferred_from_the_shape_and_the_input_size(shape, size, reading):
    layout = layouts.infer(shape, size)
    assert (layout.kind, layout.grid, layout.extra) == reading


def test_shapes_that_are_no_map_or_no_grid_are_clear_errors():
    with pytest.raises(ValueError, match=r"\(1, 17, 768\) for a 70x70 input.*ambiguous.*4x4 grid \+ 1.*3x3 grid \+ 8"):
        layouts.infer((1, 17, 768), (70, 70), "blocks.11")
    with pytest.raises(ValueError, match="matches no grid"):
        layouts.infer((1, 10000, 64), (224, 224))  # 100x100 needs a patch of 2.24
    with pytest.raises(ValueError, match=r"outputs shape \(1, 10\).*reshape=callable"):
        layouts.infer((1, 10), (64, 64))


def test_layers_marks_token_grid_and_channels_last_layers(vit, swin, tiny_cnn):
    inventory = ca.Subject(vit, device="cpu").layers(size=(64, 64))
    assert inventory[VIT_NORM].layout == "tokens 4x4 +1" and inventory[VIT_NORM].channels == 768
    assert inventory["conv_proj"].layout is None and inventory["heads.head"].layout is None
    header = str(inventory).splitlines()[1].split()
    assert header[-3:] == ["output", "shape", "layout"]
    lines = str(inventory).splitlines()
    assert any(line.startswith(VIT_NORM) and line.endswith("17x768        tokens 4x4 +1") for line in lines)
    stages = ca.Subject(swin, device="cpu").layers(size=(96, 96))
    assert (stages["features.7"].layout, stages["features.7"].channels) == ("channels-last 3x3", 768)
    assert stages["features.0.0"].layout is None and stages["permute"].layout is None  # already (N, C, h, w)
    assert "layout" not in str(ca.Subject(tiny_cnn, device="cpu").layers(size=(16, 16))).splitlines()[1]


@pytest.mark.parametrize("layer", ["encoder.layers.encoder_layer_11", "encoder.ln"])
def test_vit_layers_whose_patch_tokens_do_not_feed_the_head_are_refused(vit, layer):
    """After the last attention only the class token reaches the head: the patch tokens' gradient is exactly 0."""
    a, g = oracle(vit, layer, lambda t: t, images(64)[0], TARGETS[0])
    assert g[1:].abs().max() == 0 and g[0].abs().max() > 0
    with pytest.raises(ValueError, match=rf"{layer!r} is a token grid.*16 patch tokens get no gradient.*{VIT_NORM!r}"):
        ca.Subject(vit, device="cpu").gradcam(images(64), target=TARGETS, layer=layer)


def test_auto_layer_is_the_last_blocks_first_norm_on_vit_and_the_final_map_on_swin(vit, swin):
    subject = ca.Subject(vit, device="cpu")
    assert subject.gradcam(images(64), target=TARGETS).layout == "tokens 4x4 +1" and subject.layer == VIT_NORM
    stages = ca.Subject(swin, device="cpu")
    assert stages.gradcam(images(64), target=TARGETS).layout is None
    assert stages.layer == "permute"  # the final norm's output, permuted to (N, C, h, w) by swin_t itself


def test_channel_objectives_read_a_token_grid_and_a_channels_last_stage_over_their_grid(vit, swin):
    """A channel is a feature dimension C averaged over the grid: the class token is not part of it."""
    for model, layer, read, size in ((vit, VIT_NORM, vit_grid, 64), (swin, "features.7", channels_last, 64)):
        vis = ca.Subject(model, device="cpu").maximize(layer, channels=[3, 5], steps=2, size=size)
        seen: list[torch.Tensor] = []
        handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            with torch.no_grad():
                model(vis.images)
        finally:
            handle.remove()
        expected = read(seen[0])[[0, 1], [3, 5]].mean(dim=(1, 2)).double().numpy()
        np.testing.assert_allclose(vis.achieved, expected, rtol=1e-5)


def test_classic_views_read_a_channels_last_layer_as_its_channels_first_twin(images16):
    """feature_map_grid and a channel's DeepDream at a permuted (N, h, w, C) layer equal those at the (N, C, h, w)
    layer it permutes."""
    from torchvision.ops.misc import Permute

    from cnnaudit import views

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), Permute([0, 2, 3, 1]), nn.Flatten(), nn.Linear(5 * 16 * 16, 2))
    subject = ca.Subject(model, device="cpu")
    assert subject.layers(size=(16, 16))["1"].layout == "channels-last 16x16"
    np.testing.assert_array_equal(views.feature_map_grid(subject, images16[0], "1"),
                                  views.feature_map_grid(subject, images16[0], "0"))
    np.testing.assert_array_equal(views.deepdream(subject, images16[0], "1", channel=3, steps=2, octaves=1),
                                  views.deepdream(subject, images16[0], "0", channel=3, steps=2, octaves=1))
