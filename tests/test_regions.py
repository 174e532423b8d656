"""Regions: shapes, the resolution rule, validation and clipping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnaudit.regions import Box, Regions, as_regions, mask_box


def as_int(t: torch.Tensor) -> list:
    return t.int().tolist()


def test_integer_boxes_are_numpy_slices():
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(50):
        x0, x1 = sorted(rng.integers(0, 13, size=2))
        y0, y1 = sorted(rng.integers(0, 9, size=2))
        boxes.append((int(x0), int(y0), int(x1), int(y1)))
    masks = Regions(boxes, image_size=(9, 13)).masks()
    for (x0, y0, x1, y1), mask in zip(boxes, masks.numpy()):
        expected = np.zeros((9, 13), bool)
        expected[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(mask, expected)


def test_box_is_half_open_and_scales_by_pixel_centres():
    regions = Regions([(1, 0, 3, 2)], image_size=(4, 4))
    assert as_int(regions.masks()[0]) == [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # 2x2 grid: centres at frame x = 1 and 3; 1 is in [1, 3), 3 is not.
    assert as_int(regions.masks(size=(2, 2))[0]) == [[1, 0], [0, 0]]
    # 8x8 grid: every frame pixel splits into 2x2.
    expected = np.zeros((8, 8), int)
    expected[0:4, 2:6] = 1
    assert as_int(regions.masks(size=(8, 8))[0]) == expected.tolist()
    # fractional box (0.4, 0, 1.6, 1): centres 0.5 and 1.5 are inside
    assert as_int(Regions([(0.4, 0, 1.6, 1)], image_size=(1, 3)).masks()[0]) == [[1, 1, 0]]
    # a 6x4 grid of a 3x2 frame: centres x=(c+.5)/2 in [1, 2) for c=2,3; y=(r+.5)/2 in [0, 1) for r=0,1
    assert as_int(Regions([(1, 0, 2, 1)], image_size=(2, 3)).masks(size=(4, 6))[0]) == [
        [0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0],
    ]


def test_masks_resample_by_pixel_centres():
    mask = np.zeros((4, 4), bool)
    mask[0, 1] = mask[2, 2] = mask[3, 3] = True
    regions = Regions([mask])
    assert regions.frames == [(4, 4)]
    # 2x2 centres map to frame pixels (1, 1), (1, 3), (3, 1), (3, 3)
    assert as_int(regions.masks(size=(2, 2))[0]) == [[0, 0], [0, 1]]
    # 8x8: nearest source pixel of each centre = each pixel doubled
    np.testing.assert_array_equal(regions.masks(size=(8, 8))[0].numpy(), mask.repeat(2, 0).repeat(2, 1))
    # a mask at another resolution than image_size covers the whole frame
    small = Regions([np.array([[True, False], [False, False]])], image_size=(4, 4))
    assert as_int(small.masks()[0]) == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("size", [(6, 8), (3, 4), (12, 16), (5, 7)])
def test_rectangle_polygon_equals_box_at_every_resolution(size):
    box = Regions([(2, 1, 6, 5)], image_size=(6, 8))
    polygon = Regions([{"polygon": [[2, 1], [6, 1], [6, 5], [2, 5]]}], image_size=(6, 8))
    np.testing.assert_array_equal(box.masks(size=size).numpy(), polygon.masks(size=size).numpy())


def test_triangle_polygon_hand_computed():
    # right triangle (0,0),(4,0),(0,4): centre (c+.5, r+.5) inside iff c + r + 1 < 4; centres on the
    # hypotenuse (c + r + 1 == 4) are out by the top-left rule (the point below-right of them is out)
    regions = Regions([{"polygon": [[0, 0], [4, 0], [0, 4]]}], image_size=(4, 4))
    expected = [[int(c + r + 1 < 4) for c in range(4)] for r in range(4)]
    assert as_int(regions.masks()[0]) == expected


def test_several_shapes_are_a_union_and_none_is_no_region():
    mask = np.zeros((4, 4), bool)
    mask[3, 0] = True
    regions = Regions([[(0, 0, 1, 1), {"box": (3, 3, 4, 4)}, mask], None, []], image_size=(4, 4), name="tools")
    masks = regions.masks()
    assert as_int(masks[0]) == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1]]
    assert masks[1].sum() == 0 and masks[2].sum() == 0
    assert regions.defined.tolist() == [True, False, True]
    assert regions[1] is None and regions.name == "tools"
    assert regions.boxes() == [(0, 0, 4, 4), None, None]


def test_boolean_stack_of_masks():
    masks = torch.zeros(3, 5, 6, dtype=torch.bool)
    masks[1, 2:4, 1:3] = True
    regions = Regions(masks)
    assert len(regions) == 3 and regions.frames == [(5, 6)] * 3
    assert torch.equal(regions.masks(), masks)
    assert regions.boxes() == [None, (1, 2, 3, 4), None]


@pytest.mark.parametrize(
    "entry, message",
    [
        ((3, 0, 1, 2), "inverted"),
        ((0, 2, 1, 1), "inverted"),
        ((0, 0, float("nan"), 1), "not finite"),
        ((0, 0, float("inf"), 1), "not finite"),
        ({"polygon": [[0, 0], [1, 1]]}, "at least 3 vertices"),
        ({"circle": 3}, "exactly one key"),
        (np.zeros((5, 5), np.float32), "boolean"),
        ("face.png", "cannot read"),
    ],
)
def test_bad_regions_are_errors(entry, message):
    with pytest.raises(ValueError, match=message) as info:
        Regions([None, entry], image_size=(4, 4), name="tools")
    assert "'tools' of image 1" in str(info.value)


def test_boxes_outside_the_image_are_clipped_and_counted():
    regions = Regions(
        [(-2, -2, 2, 2), (1, 1, 3, 3), [(3, 0, 9, 1), (0, 0, 1, 1)], (10, 10, 12, 12), {"polygon": [[-1, 0], [3, 0], [3, 3]]}],
        image_size=(4, 4),
    )
    assert regions.clipped == 4
    assert regions.clipped_per_image.tolist() == [1, 0, 1, 1, 1]
    assert regions[0] == (Box(0, 0, 2, 2),)
    assert as_int(regions.masks()[0]) == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert regions.masks()[3].sum() == 0  # entirely outside: clipped to an empty box
    assert regions[1:3].clipped == 1 and regions[[0, 3]].clipped == 2


def test_per_image_frames_and_rescaling():
    regions = Regions([(0, 0, 4, 2), (0, 0, 4, 2)], image_size=[(4, 4), (8, 8)])
    with pytest.raises(ValueError, match="pass size"):
        regions.masks()
    masks = regions.masks(size=(4, 4))
    assert masks[0].sum() == 8 and masks[1].sum() == 2 * 1
    rescaled = regions.rescaled((2, 2))
    assert rescaled.frames == [(2, 2), (2, 2)]
    assert as_int(rescaled.masks()[0]) == [[1, 1], [0, 0]]
    assert torch.equal(rescaled.masks(size=(4, 4)), masks)


def test_indexing_and_close_errors():
    regions = Regions([(0, 0, 1, 1), None, (1, 1, 2, 2)], image_size=(2, 2), name="face")
    assert len(regions[np.array([True, False, True])]) == 2
    assert regions[::-1][0] == (Box(1, 1, 2, 2),)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        regions[np.array([True, False])]
    with pytest.raises(ValueError, match="2 images but there are 3 maps"):
        as_regions(regions[:2], (2, 2), 3)
    with pytest.raises(ValueError, match="image_size"):
        Regions([(0, 0, 1, 1)])


def test_mask_files_are_read_when_rasterised(tmp_path):
    path = tmp_path / "m.png"
    pixels = np.zeros((4, 4), np.uint8)
    pixels[1:3, 0:2] = 255
    regions = Regions([{"mask": str(tmp_path / "later.png")}, {"mask": str(path)}], image_size=(4, 4))
    Image.fromarray(pixels).save(path)  # created after the Regions: nothing was read yet
    np.testing.assert_array_equal(regions.mask(1), pixels > 0)
    np.testing.assert_array_equal(regions.mask(1, size=(2, 2)), [[True, False], [False, False]])  # samples pixel (1, 1)
    with pytest.raises(FileNotFoundError):
        regions.mask(0)


def test_a_mask_of_another_aspect_ratio_is_refused_unless_stretching_is_asked_for(tmp_path):
    wide = np.zeros((4, 8), bool)
    wide[:, :4] = True  # the left half of a 4x8 picture
    with pytest.raises(ValueError, match=r"'hair' of image 1: the mask is 4x8 \(HxW\) but its image is 8x8.*stretch_masks=True"):
        Regions([None, wide], image_size=(8, 8), name="hair")
    stretched = Regions([wide], image_size=(8, 8), stretch_masks=True)
    assert stretched.mask(0)[:, :4].all() and not stretched.mask(0)[:, 4:].any()  # the caller asked: stretched
    # the same aspect at another resolution (a coarser segmentation) is fine, within a pixel of rounding
    assert Regions([np.ones((94, 125), bool)], image_size=(375, 500)).mask(0).all()
    path = tmp_path / "m.png"
    Image.fromarray(wide.astype(np.uint8) * 255).save(path)
    from_file = Regions([{"mask": str(path)}], image_size=(8, 8), name="hair")  # files are read when rasterised
    with pytest.raises(ValueError, match=r"mask file .*m\.png: the mask is 4x8"):
        from_file.mask(0)
    # resizing the images later keeps the check against the frame the mask was drawn for
    assert Regions([{"mask": str(path)}], image_size=(16, 32)).rescaled((8, 8)).mask(0)[:, :4].all()


def test_mask_box():
    mask = np.zeros((5, 6), bool)
    mask[1:4, 2] = mask[3, 4] = True
    assert mask_box(mask) == (2, 1, 5, 4)
    assert mask_box(np.zeros((2, 2), bool)) is None


def test_class_value_masks_read_stored_values_and_callables_are_read_when_rasterised(tmp_path):
    from cnnaudit.regions import Mask, class_pixels

    indices = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([0, 0, 0, 200, 200, 200, 90, 90, 90] + [0, 0, 0] * 253)  # grey levels that are not the indices
    palette.save(tmp_path / "p.png")
    regions = Regions([Mask(str(tmp_path / "p.png"), value=2), Mask(str(tmp_path / "p.png"))], image_size=(2, 3))
    np.testing.assert_array_equal(regions.mask(0), indices == 2)  # the palette index, not the colour
    np.testing.assert_array_equal(regions.mask(1), indices > 0)  # without a value: non-zero grey, as before
    assert regions.rescaled((4, 6)).mask(0).sum() == 8  # the value survives rescaling
    with Image.open(tmp_path / "p.png") as image:
        assert class_pixels(image).tolist() == indices.tolist()
    with pytest.raises(ValueError, match=r"rgb\.png: the mask has mode RGB; a class mask has one channel"):
        class_pixels(Image.new("RGB", (2, 2)), "rgb.png")
    calls = []

    def decode():
        calls.append(1)
        return indices == 1

    lazy = Regions([{"mask": decode}], image_size=(2, 3))
    assert calls == []
    np.testing.assert_array_equal(lazy.mask(0), indices == 1)
    assert calls == [1]
    with pytest.raises(ValueError, match=r"decode.*: the mask is 2x3 \(HxW\) but its image is 6x3"):
        Regions([{"mask": decode}], image_size=(6, 3)).mask(0)
