"""Any input a real model takes: 1-channel and N-channel images, and models in float64 / bfloat16 / float16.

The Grad-CAM oracle below is plain autograd on the model's own pieces (no cnnaudit code): the
layer's output ``A`` as a leaf, ``dA = d score / dA``, ``L = sum_k mean_ij(dA_k) A_k``.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import cnnaudit as ca
from cnnaudit.attribution import cam
from cnnaudit.render import overlay, to_rgb8


def conv_net(channels: int, seed: int = 0) -> nn.Sequential:
    """conv(C->6) -> ReLU -> conv(6->8, stride 2) -> ReLU -> 4x4 average pool -> linear(128->4); layer "3" is the
    CAM layer (the pooled head makes its gradient vary over positions, so the Grad-CAM family's maps differ)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(8 * 4 * 4, 4)).eval()


def rand_images(n: int, channels: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def oracle_gradcam(model: nn.Sequential, model_input: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw Grad-CAM at layer "3" and the max-normalised map at input size, by plain autograd in float64."""
    model = copy.deepcopy(model).double()
    with torch.enable_grad():
        A = model[:4](model_input.double()).detach().requires_grad_()
        score = model[4:](A)[:, target].sum()
        (dA,) = torch.autograd.grad(score, A)
    raw = (dA.mean(dim=(2, 3), keepdim=True) * A).sum(dim=1).detach()
    up = F.interpolate(raw.clamp(min=0)[:, None], size=model_input.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return raw, up / up.flatten(1).amax(dim=1)[:, None, None]


@pytest.mark.parametrize("channels", [1, 5])
def test_gradcam_of_a_c_channel_model_equals_the_autograd_oracle(channels):
    model = conv_net(channels)
    mean, std = [0.1 * c for c in range(channels)], [0.5 + 0.1 * c for c in range(channels)]
    subject = ca.Subject(model, layer="3", preprocess=ca.normalize(mean, std), device="cpu", cache=False)
    x = rand_images(3, channels)
    maps = subject.gradcam(x, target=2)
    model_input = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    raw, normalised = oracle_gradcam(model, model_input, 2)
    assert maps.raw.dtype == maps.maps.dtype == torch.float32 and maps.maps.shape == (3, 32, 32)
    assert (maps.raw.double() - raw).abs().max() < 1e-5 * raw.abs().max()
    assert (maps.maps.double() - normalised).abs().max() < 1e-5
    assert subject.layer == "3" and ca.Subject(model, device="cpu").layer == "3"  # the probe has C channels
    assert subject.layers().input_size[0] == channels


def test_uint8_grey_images_and_imagesets_of_one_channel():
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    one = ca.images.as_batch(grey)
    assert one.shape == (1, 1, 12, 10) and torch.equal(one[0, 0], torch.from_numpy(grey).float() / 255)
    assert ca.images.as_batch(np.stack([grey, grey])[..., None]).shape == (2, 1, 12, 10)  # (N,H,W,1)
    assert ca.images.as_batch(np.zeros((12, 10, 4), np.uint8)).shape == (1, 4, 12, 10)  # (H,W,C)
    assert ca.images.as_batch(np.zeros((1, 12, 10, 5), np.uint8)).shape == (1, 5, 12, 10)  # many channels: (1,H,W,C)
    with pytest.raises(ValueError, match=r"\(8, 32, 32\), which reads as one 8x32 image with 32 channels: pass a stack "
                                         r"of grey images as \(N, H, W, 1\)"):
        ca.images.as_batch(np.zeros((8, 32, 32), np.uint8))  # a grey stack, not one image of 32 channels
    assert ca.images.as_batch([grey, grey]).shape == (2, 1, 12, 10)
    with pytest.raises(ValueError, match=r"channel counts \[1, 3\]"):
        ca.images.as_batch([torch.zeros(1, 4, 4), torch.zeros(3, 4, 4)])
    with pytest.raises(ValueError, match="channels-last"):
        ca.images.as_batch(torch.zeros(2, 16, 16, 1))
    people = ca.ImageSet([grey, grey], labels=["a", "b"])
    assert people.tensor().shape == (2, 1, 12, 10)
    with pytest.raises(ValueError, match=r"image '1' has 3 channels, image '0' has 1"):
        ca.ImageSet([torch.zeros(1, 4, 4), torch.zeros(3, 4, 4)])
    loaded = ca.ImageSet([lambda: torch.zeros(1, 4, 4), lambda: torch.zeros(3, 4, 4)])
    with pytest.raises(ValueError, match=r"image '1' has 3 channels, image '0' has 1"):
        loaded.tensor()


def test_from_folder_loads_grey_files_as_one_channel_when_asked(tmp_path):
    Image.fromarray(np.full((8, 8), 40, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((8, 8, 3), (10, 20, 30), np.uint8)).save(tmp_path / "b.png")
    deep = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "c.png")
    (tmp_path / "annotations.json").write_text(json.dumps([{"file": f} for f in ("a.png", "b.png", "c.png")]))
    rgb = ca.ImageSet.from_folder(tmp_path).tensor()  # as before: every file as RGB
    assert rgb.shape == (3, 3, 8, 8) and torch.allclose(rgb[1, :, 0, 0] * 255, torch.tensor([10.0, 20.0, 30.0]))
    grey = ca.ImageSet.from_folder(tmp_path, channels=1).tensor()
    assert grey.shape == (3, 1, 8, 8)
    assert torch.allclose(grey[0, 0], torch.full((8, 8), 40 / 255))
    assert torch.allclose(grey[2, 0], torch.from_numpy(deep / 65535.0).float())  # 16-bit kept, not clipped
    assert torch.allclose(grey[1, 0, 0, 0] * 255, torch.tensor(0.299 * 10 + 0.587 * 20 + 0.114 * 30), atol=0.6)  # PIL's L
    with pytest.raises(ValueError, match=r"channels=2.*files load with 1, 3 or 4"):
        ca.ImageSet.from_folder(tmp_path, channels=2)
    with pytest.raises(ValueError, match=r"image '0' has 1 channel.*channels=3"):
        ca.ImageSet([torch.zeros(1, 4, 4)], channels=3)


def test_normalize_with_any_number_of_channels():
    five = ca.normalize(mean=[0.0, 0.1, 0.2, 0.3, 0.4], std=[1.0, 0.5, 0.25, 2.0, 4.0])
    x = torch.full((2, 5, 3, 3), 0.5)
    torch.testing.assert_close(five(x)[0, :, 0, 0], torch.tensor([0.5, 0.8, 1.2, 0.1, 0.025]))
    one = ca.normalize(mean=[0.5], std=[0.25])
    torch.testing.assert_close(one(torch.ones(1, 1, 2, 2)), torch.full((1, 1, 2, 2), 2.0))
    with pytest.raises(ValueError, match=r"normalize has 5 values \(mean and std\) but the images have 3 channels"):
        five(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="mean has 2 values and std 3"):
        ca.normalize((0, 0), (1, 1, 1))


def test_a_channel_mismatch_names_both_counts():
    subject = ca.Subject(conv_net(1), layer="3", device="cpu")
    with pytest.raises(ValueError, match=r"the model takes 1-channel input.* 3 channels .*shape \(2, 3, 32, 32\)"):
        subject.gradcam(rand_images(2, 3))
    with pytest.raises(ValueError, match=r"the model takes 1-channel input"):
        subject.predict(rand_images(2, 3))


def test_overlays_and_grids_of_one_and_five_channel_images():
    subject = ca.Subject(conv_net(1), layer="3", device="cpu")
    x = rand_images(2, 1)
    maps = subject.gradcam(x)
    grey = x[1, 0].numpy()[..., None].repeat(3, axis=2)
    assert maps.image(1).shape == (32, 32, 3)
    np.testing.assert_array_equal(maps.overlay(1), overlay(grey, maps.maps[1].numpy()))
    five = rand_images(2, 5)
    shown = ca.images.display_rgb(five)  # C >= 3: the first three channels as RGB
    assert torch.equal(shown, five[:, :3])
    two = rand_images(2, 2)
    assert torch.allclose(ca.images.display_rgb(two), two.mean(dim=1, keepdim=True).expand(2, 3, 32, 32))
    np.testing.assert_array_equal(to_rgb8(five[0]), to_rgb8(five[0, :3]))  # report images: the same rule
    np.testing.assert_array_equal(to_rgb8(two[0]), to_rgb8(two[0].mean(dim=0)))
    np.testing.assert_array_equal(to_rgb8(five[0].permute(1, 2, 0)), to_rgb8(five[0, :3]))  # (H,W,C) too
    assert to_rgb8(x[0]).shape == (32, 32, 3) and (to_rgb8(x[0])[..., 0] == to_rgb8(x[0])[..., 2]).all()


def test_a_preprocess_that_changes_the_channel_count_is_told_by_image_channels():
    """Grey images, an RGB model: the preprocess repeats the channel; maximisation and the probe make grey images."""
    model = conv_net(3)
    grey_to_rgb = lambda x: x.repeat(1, 3, 1, 1)  # noqa: E731
    subject = ca.Subject(model, layer="3", preprocess=grey_to_rgb, device="cpu", image_channels=1)
    assert subject.image_channels == 1 and subject.layers().input_size == (3, 224, 224)
    assert subject.maximize("2", channels=[0], steps=2, size=16).images.shape == (1, 1, 16, 16)
    guessed = ca.Subject(model, layer="3", preprocess=grey_to_rgb, device="cpu")
    assert guessed.image_channels == 3  # from the first convolution
    with pytest.raises(ValueError, match=r"takes 3-channel input, but got 9 channels.*image_channels=C"):
        guessed.maximize("2", channels=[0], steps=2, size=16)
    automatic = ca.Subject(model, preprocess=grey_to_rgb, device="cpu")
    automatic.gradcam(rand_images(2, 1))  # the auto layer's probe is a grey image like these
    assert automatic.layer == "3" and automatic.image_channels == 1  # the images audited tell it
    with pytest.raises(ValueError, match="image_channels must be a positive int"):
        ca.Subject(model, image_channels=0)


def test_maximising_a_one_channel_unit_gives_one_channel_images():
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():  # channel 0 = x, channel 1 = 1 - x: optima are white and black, value 1
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, 1.0]))
    subject = ca.Subject(nn.Sequential(conv, nn.ReLU()), device="cpu")
    vis = subject.maximize("1", channels="all", steps=24, size=16)
    assert vis.images.shape == (2, 1, 16, 16) and vis.images.dtype == torch.float32
    assert vis.achieved.min() > 0.95
    grid = vis.grid()
    assert grid.shape[-1] == 3 and (grid[..., 0] == grid[..., 2]).all()  # grey
    real = ca.ImageSet(rand_images(3, 1, size=16))
    assert np.all(vis.relative_to(real).values > 1.0)
    fourier = ca.Subject(conv_net(5), device="cpu").maximize("2", channels=[0, 1], steps=4, size=16, param="fourier")
    assert fourier.images.shape == (2, 5, 16, 16)


@pytest.fixture(scope="module")
def float32_maps() -> tuple[nn.Sequential, torch.Tensor, dict[str, torch.Tensor]]:
    model = conv_net(3, seed=3)
    x = rand_images(3, 3, seed=4)
    subject = ca.Subject(model, layer="3", device="cpu", cache=False)
    return model, x, {method: subject.gradcam(x, target=1, method=method).maps for method in cam.METHODS}


def test_a_float64_model_gives_the_float32_models_maps(float32_maps):
    model, x, reference = float32_maps
    double = copy.deepcopy(model).double()
    subject = ca.Subject(double, layer="3", preprocess=ca.normalize([0.5], [1.0]), device="cpu", cache=False)
    single = ca.Subject(model, layer="3", preprocess=ca.normalize([0.5], [1.0]), device="cpu", cache=False)
    for method in ("gradcam", "hirescam", "eigencam"):
        maps = subject.gradcam(x, target=1, method=method)
        assert maps.raw.dtype == maps.maps.dtype == torch.float32
        assert (maps.maps - single.gradcam(x, target=1, method=method).maps).abs().max() < 1e-5
    saliency = subject.saliency(x, target=1)
    assert saliency.raw.dtype == torch.float32
    assert all(p.dtype == torch.float64 for p in double.parameters())
    assert subject.predict(x).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_method_runs_on_a_low_precision_model(float32_maps, dtype, snapshot, same_state):
    model, x, reference = float32_maps
    low = copy.deepcopy(model).to(dtype)
    before = snapshot(low)
    subject = ca.Subject(low, layer="3", device="cpu", cache=False)
    for method in cam.METHODS:
        maps = subject.gradcam(x, target=1, method=method).maps
        assert maps.dtype == torch.float32, method
        for ours, theirs in zip(maps.flatten(1), reference[method].flatten(1)):
            assert torch.corrcoef(torch.stack([ours, theirs]))[0, 1] > 0.99, method
    assert subject.saliency(x, target=1).raw.dtype == torch.float32
    vis = subject.maximize("3", channels=[0, 1], steps=2, size=16)
    assert vis.images.dtype == torch.float32
    same_state(before, snapshot(low))
    assert all(p.dtype == dtype for p in low.parameters())


@pytest.fixture(scope="module")
def grey_resnet() -> nn.Module:
    """torchvision's ResNet-18 with a 1-channel stem (the usual change for grey medical images), seeded weights."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=2)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model.eval()


def test_a_grey_resnet_audits_like_an_rgb_one(grey_resnet, snapshot, same_state):
    m = grey_resnet
    x = rand_images(2, 1, size=64)
    subject = ca.Subject(m, preprocess=ca.normalize([0.5], [0.25]), device="cpu", cache=False)
    maps = subject.gradcam(x, target=1)
    assert subject.layer == "layer4"
    with torch.enable_grad():
        stem = m.maxpool(m.relu(m.bn1(m.conv1((x - 0.5) / 0.25))))
        A = m.layer4(m.layer3(m.layer2(m.layer1(stem)))).detach().requires_grad_()
        (dA,) = torch.autograd.grad(m.fc(torch.flatten(m.avgpool(A), 1))[:, 1].sum(), A)
    oracle = (dA.mean(dim=(2, 3), keepdim=True) * A).sum(dim=1)
    assert (maps.raw - oracle).abs().max() < 1e-5 * oracle.abs().max()
    low = copy.deepcopy(m).to(torch.bfloat16)
    before = snapshot(low)
    half = ca.Subject(low, preprocess=ca.normalize([0.5], [0.25]), device="cpu", cache=False)
    for method in ("gradcam", "eigencam"):
        ours, theirs = half.gradcam(x, target=1, method=method).maps, subject.gradcam(x, target=1, method=method).maps
        assert ours.dtype == torch.float32
        assert all(torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.99 for a, b in zip(ours.flatten(1), theirs.flatten(1)))
    same_state(before, snapshot(low))


def test_report_evidence_of_a_grey_model(tmp_path):
    """The recorder draws overlays and the maximisation grid of 1-channel images (grey, three equal channels)."""
    from cnnaudit.records import EvidenceRecorder

    subject = ca.Subject(conv_net(1), layer="3", device="cpu")
    recorder = EvidenceRecorder("t", tmp_path)
    with ca.evidence.recording(recorder):
        subject.gradcam(ca.ImageSet(rand_images(2, 1)), target=0)
        subject.maximize("2", channels=[0, 1], steps=2, size=16)
    out = recorder.finish()
    assert len(out["heatmaps"][0]["images"]) == 2 and len(out["visualizations"][0]["images"]) == 1
    assert not out["notes"]  # nothing failed to render
    for record in (out["heatmaps"][0]["images"][0], out["visualizations"][0]["images"][0]):
        assert (tmp_path / record["file"]).is_file()
