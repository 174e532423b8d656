"""Classic views: filter grids, feature-map grids, DeepDream; returned as arrays and recorded as evidence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from skimage import data
from torch import nn

from cnnaudit import Subject, deepdream, evidence, feature_map_grid, filter_grid
from cnnaudit.views import View


class Collect:
    def __init__(self) -> None:
        self.seen: list[object] = []

    def observe(self, obj: object) -> None:
        self.seen.append(obj)


def hand_set_conv() -> nn.Sequential:
    """Kernel 0: +1 at the centre of the red input. Kernel 1: -0.5 at the top-left of the green input."""
    conv = nn.Conv2d(3, 2, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        conv.weight[1, 1, 0, 0] = -0.5
    return nn.Sequential(nn.Identity(), conv, nn.ReLU())


def test_filter_grid_maps_weights_around_mid_grey() -> None:
    model = hand_set_conv()
    with evidence.recording(Collect()) as recorder:
        grid = filter_grid(model)  # the first Conv2d, found by itself
    # 2 tiles of 3x3 enlarged x10 (to >= 32 px), 2 px white gaps: 34 x 66
    assert grid.dtype == np.uint8 and grid.shape == (34, 66, 3)
    tile0, tile1 = grid[2:32, 2:32], grid[2:32, 34:64]
    assert tile0[10:20, 10:20].reshape(-1, 3).tolist() == [[255, 128, 128]] * 100  # 0.5 + 0.5 * 1 / 1
    assert tile0[0:10, 0:10].reshape(-1, 3).tolist() == [[128, 128, 128]] * 100  # zero weight
    assert tile1[0:10, 0:10].reshape(-1, 3).tolist() == [[128, 64, 128]] * 100  # 0.5 + 0.5 * -0.5 / 1
    assert len(recorder.seen) == 1 and isinstance(recorder.seen[0], View)
    assert recorder.seen[0].name == "filters 1" and recorder.seen[0].image is grid


def test_filter_grid_grey_for_deeper_layers_and_errors() -> None:
    conv = nn.Conv2d(4, 70, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 0, 0] = torch.tensor([1.0, 1.0, -1.0, -1.0])  # mean over inputs: 0 -> grey
        conv.weight[1, :, 0, 0] = torch.tensor([2.0, 2.0, 2.0, 2.0])  # mean 2 = the peak -> white
    model = nn.Sequential(conv, nn.ReLU())
    subject = Subject(model, device="cpu")
    grid = filter_grid(subject, "0")
    # 64 tiles (limit) of 1x1 enlarged x32, 8 columns: 8 * 34 + 2 square
    assert grid.shape == (274, 274, 3)
    assert grid[2, 2].tolist() == [128, 128, 128] and grid[2, 36].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="no 4-D conv weight"):
        filter_grid(subject, "1")
    with pytest.raises(KeyError, match="did you mean"):
        filter_grid(model, "01")


def test_feature_map_grid_shows_each_channel_min_to_max() -> None:
    conv = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))  # channel k = input colour k
    subject = Subject(nn.Sequential(conv), device="cpu")
    image = torch.zeros(3, 8, 8)
    image[0] = torch.linspace(0, 1, 64).view(8, 8)
    image[1] = 0.25  # constant: shown as the colormap's low end
    image[2, :4] = 0.5
    with evidence.recording(Collect()) as recorder:
        grid = feature_map_grid(subject, image, "0")
    factor = 4  # 8 px maps enlarged to 32 px
    tiles = [grid[2:34, 2 + k * 34 : 34 + k * 34][::factor, ::factor] for k in range(3)]
    viridis = colormaps["viridis"]
    expected0 = (viridis(image[0].numpy())[..., :3] * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(tiles[0], expected0)
    low = (np.array(viridis(0.0)[:3]) * 255 + 0.5).astype(np.uint8)
    assert (tiles[1] == low).all()
    assert (tiles[2][:4] == (np.array(viridis(1.0)[:3]) * 255 + 0.5).astype(np.uint8)).all()
    assert (tiles[2][4:] == low).all()
    assert [obj.name for obj in recorder.seen] == ["feature maps 0"]


def test_deepdream_amplifies_the_layer_and_leaves_the_model_alone(tiny_cnn, snapshot, same_state) -> None:
    photo = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float().div(255)[None]
    photo = F.interpolate(photo, size=(40, 60), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)[0]
    subject = Subject(tiny_cnn, device="cpu")
    before = snapshot(tiny_cnn)
    with evidence.recording(Collect()) as recorder:
        dreamed = deepdream(subject, photo, "features.2")
    again = deepdream(subject, photo, "features.2")
    same_state(before, snapshot(tiny_cnn))
    assert dreamed.dtype == np.uint8 and dreamed.shape == (40, 60, 3) and np.array_equal(dreamed, again)
    assert [obj.name for obj in recorder.seen] == ["deepdream features.2"]

    def energy(image: torch.Tensor) -> float:
        return tiny_cnn.features[:3](image[None]).pow(2).mean().item()

    with torch.no_grad():
        assert energy(torch.from_numpy(dreamed).permute(2, 0, 1).float() / 255) > 1.25 * energy(photo)  # 1.37 measured
