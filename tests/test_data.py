"""ImageSet: construction, laziness, selection, resizing with regions, folder and COCO loaders."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cnnaudit.data import ImageSet
from cnnaudit.images import as_batch


class CountingLoader:
    """A zero-argument loader of a constant uint8 image that counts its calls."""

    calls = 0

    def __init__(self, value: int, shape: tuple[int, int] = (8, 12)) -> None:
        self.value, self.shape = value, shape

    def __call__(self) -> np.ndarray:
        CountingLoader.calls += 1
        return np.full((*self.shape, 3), self.value, np.uint8)


@pytest.fixture
def loaders():
    CountingLoader.calls = 0
    return [CountingLoader(i % 256) for i in range(10_000)]


def test_ten_thousand_loaders_load_nothing_until_asked(loaders):
    people = ImageSet(
        loaders,
        labels=["doctor", "nurse"] * 5_000,
        regions={"tools": [(0, 0, 6, 4)] * 10_000},
        groups={"site": np.arange(10_000) % 3},
        size=(4, 6),
    )
    docs = people.where(label="doctor", site=1)
    subset = docs[10:20][np.array([0, 2, 4])]
    assert (len(people), len(docs), len(subset)) == (10_000, 1666, 3)
    assert people.image_size == (4, 6) and subset.ids == ["64", "76", "88"]
    assert (people.group("site") == 2).sum() == 3333
    assert CountingLoader.calls == 0
    starts = [(start, batch.shape) for start, batch in subset.batches(2)]
    assert starts == [(0, (2, 3, 4, 6)), (2, (1, 3, 4, 6))]
    assert CountingLoader.calls == 3
    assert torch.allclose(subset[1], torch.full((3, 4, 6), 76 / 255))
    assert CountingLoader.calls == 4


def test_arrays_tensors_and_lists():
    tensor = torch.rand(3, 3, 5, 7)
    from_tensor = ImageSet(tensor, labels=["a", "b", "a"], ids=["x", "y", "z"])
    assert torch.equal(from_tensor.tensor(), tensor)
    assert from_tensor.image_size == (5, 7) and from_tensor.ids == ["x", "y", "z"]
    assert from_tensor.labels.dtype == object and from_tensor.labels.tolist() == ["a", "b", "a"]
    uint8 = (np.arange(5 * 7 * 3).reshape(5, 7, 3) % 256).astype(np.uint8)
    mixed = ImageSet([uint8, tensor[0], lambda: uint8])
    assert torch.equal(mixed.tensor(), as_batch([uint8, tensor[0], uint8]))
    assert torch.equal(mixed[-1], as_batch(uint8)[0])
    assert torch.equal(as_batch(from_tensor[[2, 0]]), tensor[[2, 0]])


def test_where_group_and_region_selection():
    images = torch.rand(6, 3, 4, 4)
    gender = ["f", "m", "f", "m", "f", None]
    people = ImageSet(
        images,
        labels=["nurse", "nurse", "doctor", "doctor", "doctor", "nurse"],
        regions={"face": [(0, 0, 2, 2), None, (1, 1, 3, 3), (0, 0, 4, 4), None, (2, 2, 4, 4)]},
        groups={"gender": gender, "age": [30, 40, 50, 60, 70, 80]},
    )
    female = people.group("gender") == "f"
    assert female.tolist() == [True, False, True, False, True, False]
    assert people.where(female).ids == ["0", "2", "4"]
    assert people.where(label="doctor", gender="f").ids == ["2", "4"]
    assert people.where(people.group("age") > 45, label="doctor").ids == ["2", "3", "4"]
    docs = people.where(label="doctor")
    face = docs.region("face")
    assert face.name == "face" and len(face) == 3
    assert face.masks().sum(dim=(1, 2)).tolist() == [4, 16, 0]
    assert torch.equal(docs.tensor(), images[2:5])
    with pytest.raises(KeyError, match=r"unknown group 'gendre' \(did you mean 'gender'\?\); available: "):
        people.group("gendre")
    with pytest.raises(KeyError, match=r"unknown region 'fcae' \(did you mean 'face'\?\); available: "):
        people.region("fcae")
    with pytest.raises(ValueError, match=r"boolean mask with one value per image \(6,\)"):
        people.where([1, 0, 1, 0, 1, 0])


def test_a_selection_from_a_group_names_the_scores_it_selects():
    """``scores.where(group == value)`` is named after the comparison; anything else falls back to counts."""
    import pickle

    from cnnaudit.scores import Scores, compare

    people = ImageSet(torch.rand(4, 3, 4, 4), groups={"gender": ["f", "m", "f", "m"], "age": [30, 50, 41, 20]})
    face = Scores(np.array([0.1, 0.2, 0.3, 0.4]), "mass_in(face)")
    gender, age = people.group("gender"), people.group("age")
    assert face.where(gender == "f").name == "mass_in(face)[gender=f]"
    assert face.where("m" == gender).name == "mass_in(face)[gender=m]"
    assert face.where(age > 40).name == "mass_in(face)[age>40]" and face.where(age <= 40).name == "mass_in(face)[age<=40]"
    assert face.where(gender != "f", name="men").name == "men"  # an explicit name wins
    # combining, negating, slicing or copying through numpy drops the label: it described one comparison
    combined = (gender == "f") & (age > 40)
    assert combined.tolist() == [False, False, True, False] and face.where(combined).name == "mass_in(face)[1/4]"
    assert face.where(~(gender == "f")).name == "mass_in(face)[2/4]"
    assert type((gender == "f")[:2]) is np.ndarray and type(np.logical_not(gender == "f")) is np.ndarray
    # a comparison with an array is element-wise and unlabelled; a pickled selection is a plain mask
    assert type(age > np.array([0, 60, 0, 60])) is np.ndarray
    assert type(pickle.loads(pickle.dumps(gender == "f"))) is np.ndarray
    assert gender.tolist() == ["f", "m", "f", "m"] and list(gender) == ["f", "m", "f", "m"] and gender[1] == "m"
    gap = compare(face.where(gender == "f"), face.where(gender == "m"))
    assert gap.name == "mass_in(face)[gender=f] \u2212 mass_in(face)[gender=m]" and gap.mean == pytest.approx(-0.1)


def test_size_resizes_images_and_scales_regions_the_same_way():
    image = np.zeros((8, 12, 3), np.uint8)
    image[2:6, 2:8] = 255  # a bright block exactly where the box is
    mask = np.zeros((8, 12), bool)
    mask[2:6, 2:8] = True
    for source in (image, lambda: image):
        resized = ImageSet([source], regions={"box": [(2, 2, 8, 6)], "mask": [mask]}, size=(4, 6))
        x = resized.tensor()
        assert x.shape == (1, 3, 4, 6)
        box = resized.region("box")
        assert box.frames == [(4, 6)]
        expected = np.zeros((4, 6), bool)
        expected[1:3, 1:4] = True  # the box scaled by 1/2: (1, 1, 4, 3)
        np.testing.assert_array_equal(box.masks()[0].numpy(), expected)
        np.testing.assert_array_equal(resized.region("mask").masks()[0].numpy(), expected)
        # the resized image is brightest inside the scaled box
        assert x[0, 0][torch.from_numpy(expected)].min() > x[0, 0][torch.from_numpy(~expected)].max()


def test_different_sizes_need_size():
    images = [np.zeros((4, 4, 3), np.uint8), lambda: np.zeros((6, 6, 3), np.uint8)]
    mixed = ImageSet(images, regions={"r": [(0, 0, 2, 2), (0, 0, 3, 3)]})
    assert len(mixed) == 2  # building is fine; batching is not
    with pytest.raises(ValueError, match=r"pass ImageSet\(\.\.\., size=\(H, W\)\)"):
        mixed.tensor()
    with pytest.raises(ValueError, match="size="):
        list(mixed.batches(1))
    resized = ImageSet(images, regions={"r": [(0, 0, 2, 2), (0, 0, 3, 3)]}, size=(2, 2))
    assert resized.tensor().shape == (2, 3, 2, 2)
    assert resized.region("r").masks().sum(dim=(1, 2)).tolist() == [1, 1]


def test_bad_construction_is_explained():
    with pytest.raises(ValueError, match="labels has 1 values for 2 images"):
        ImageSet(torch.rand(2, 3, 4, 4), labels=["a"])
    with pytest.raises(ValueError, match="region 'r' has 1 entries for 2 images"):
        ImageSet(torch.rand(2, 3, 4, 4), regions={"r": [None]})
    with pytest.raises(ValueError, match="unique"):
        ImageSet(torch.rand(2, 3, 4, 4), ids=["a", "a"])
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        ImageSet(torch.full((1, 3, 4, 4), 2.0))
    with pytest.raises(ValueError, match="region 'tools' of image 1: box .* is inverted"):
        ImageSet([lambda: None] * 2, regions={"tools": [None, (4, 0, 2, 2)]})
    bad = ImageSet([lambda: np.zeros((4, 4), np.int32)], ids=["broken"])
    with pytest.raises(ValueError, match="loader of image 'broken'"):
        bad.tensor()


def _write_png(path, height, width, value):
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


def test_from_folder(tmp_path):
    _write_png(tmp_path / "a.png", 8, 8, 10)
    _write_png(tmp_path / "b.png", 16, 16, 200)
    (tmp_path / "masks").mkdir()
    hair = np.zeros((8, 8), np.uint8)
    hair[0:2, :] = 255
    Image.fromarray(hair).save(tmp_path / "masks" / "a_hair.png")
    records = {
        "images": [
            {"file": "a.png", "label": "doctor", "regions": {"tools": [0, 0, 4, 4], "hair": {"mask": "masks/a_hair.png"}},
             "groups": {"gender": "m"}},
            {"file": "b.png", "id": "bee", "label": "nurse", "size": [16, 16],
             "regions": {"tools": [[0, 0, 4, 4], [12, 12, 16, 16]], "face": {"polygon": [[0, 0], [16, 0], [0, 16]]}},
             "groups": {"gender": "f"}},
        ]
    }
    (tmp_path / "annotations.json").write_text(json.dumps(records))
    people = ImageSet.from_folder(tmp_path, size=(4, 4))
    assert people.ids == ["a", "bee"] and people.labels.tolist() == ["doctor", "nurse"]
    assert people.group("gender").tolist() == ["m", "f"] and people.region_names == ["face", "hair", "tools"]
    tools = people.region("tools")  # a: 8 px frame (read from the header), b: 16 px (from "size")
    assert tools.masks().sum(dim=(1, 2)).tolist() == [4, 2]
    assert people.region("hair").masks()[0].sum() == 4 and people.region("hair")[1] is None
    assert people.region("face").masks()[1].sum() == 6  # the triangle c + r + 1 < 4 at 4x4
    x = people.tensor()
    assert x.shape == (2, 3, 4, 4)
    assert torch.allclose(x[:, 0, 0, 0], torch.tensor([10 / 255, 200 / 255]))
    with pytest.raises(FileNotFoundError, match="annotation file"):
        ImageSet.from_folder(tmp_path / "masks")


def test_a_declared_size_that_contradicts_the_image_is_refused_when_it_is_read(tmp_path):
    """The regions of a record are in its declared frame; a wrong "size" rescaled them silently
    (a mass of 0.056 instead of 0.498)."""
    _write_png(tmp_path / "a.png", 8, 12, 10)
    records = [{"file": "a.png", "size": [16, 24], "regions": {"tools": [0, 0, 6, 4]}}]
    (tmp_path / "annotations.json").write_text(json.dumps(records))
    people = ImageSet.from_folder(tmp_path)
    with pytest.raises(ValueError, match=r"a\.png is 8x12 \(H x W\) but its record declares size \[16, 24\]; .*fix or remove \"size\""):
        people.tensor()
    records[0]["size"] = [8, 12]
    (tmp_path / "annotations.json").write_text(json.dumps(records))
    assert ImageSet.from_folder(tmp_path).tensor().shape == (1, 3, 8, 12)


def test_a_16_bit_png_is_scaled_by_its_bit_depth(tmp_path):
    grey = (np.arange(8 * 8).reshape(8, 8) * 1000).astype(np.uint16)  # up to 63000 of 65535
    Image.fromarray(grey).save(tmp_path / "deep.png")
    x = ImageSet([str(tmp_path / "deep.png")]).tensor()
    assert x.shape == (1, 3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.from_numpy(grey / 65535.0).float().expand(3, 8, 8))
    assert (x < 1).all()  # convert("RGB") clipped every pixel above 255 to 1.0


def test_paths_that_leave_the_data_folder_are_refused_unless_allowed(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir(), elsewhere.mkdir()
    _write_png(elsewhere / "secret.png", 4, 4, 1)
    _write_png(data / "a.png", 4, 4, 2)
    (data / "link.png").symlink_to(elsewhere / "secret.png")
    escapes = {"../elsewhere/secret.png": "image record 0", str(elsewhere / "secret.png"): "image record 0",
               "link.png": "image record 0"}
    for path, what in escapes.items():
        (data / "annotations.json").write_text(json.dumps([{"file": path}]))
        with pytest.raises(ValueError, match=rf"annotations\.json: {what} points outside .*data: .* resolves to .*secret\.png; .*allow_outside=True"):
            ImageSet.from_folder(data)
        assert ImageSet.from_folder(data, allow_outside=True).tensor()[0, 0, 0, 0] == pytest.approx(1 / 255)
    (data / "annotations.json").write_text(json.dumps([{"file": "a.png", "regions": {"hair": {"mask": "../elsewhere/secret.png"}}}]))
    with pytest.raises(ValueError, match="a mask of image record 0 points outside"):
        ImageSet.from_folder(data)
    coco = {"images": [{"id": 3, "file_name": "../elsewhere/secret.png"}], "annotations": []}
    (data / "coco.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"coco\.json: image id 3 points outside"):
        ImageSet.from_coco(data / "coco.json", data)
    assert len(ImageSet.from_coco(data / "coco.json", data, allow_outside=True)) == 1


def test_malformed_annotation_files_name_the_file_and_the_entry(tmp_path):
    bad_folders = {
        '{"images": [{"file": "a.png",}]}': r"annotations\.json is not valid JSON: .* at line 1, column",
        '{"images": {"file": "a.png"}}': r"annotations\.json: expected a list of image records",
        '[{"file": "a.png"}, {"label": "cat"}]': r"annotations\.json: image record 1 needs a \"file\"",
        '[{"file": "a.png", "size": 64}]': r"annotations\.json: image record 0 has size 64; expected \[height, width\]",
    }
    for text, message in bad_folders.items():
        (tmp_path / "annotations.json").write_text(text)
        with pytest.raises(ValueError, match=message):
            ImageSet.from_folder(tmp_path)
    image = {"id": 1, "file_name": "a.png"}
    bad_coco = {
        "{": r"coco\.json is not valid JSON",
        json.dumps({"images": [{"id": 1}]}): r"coco\.json: a COCO file needs \"images\"",
        json.dumps({"images": [image], "annotations": [{"image_id": 1, "category_id": 1}]}): r"annotation 0 needs \"bbox\"",
        json.dumps({"images": [image], "annotations": [{"image_id": 1, "bbox": 5}]}): r"annotation 0 needs \"bbox\": .*got 5",
        json.dumps({"images": [image], "annotations": [{"image_id": 2, "bbox": [0, 0, 1, 1]}]}): r"annotation 0 refers to image id 2",
    }
    for text, message in bad_coco.items():
        (tmp_path / "coco.json").write_text(text)
        with pytest.raises(ValueError, match=message):
            ImageSet.from_coco(tmp_path / "coco.json", tmp_path)


def test_from_coco_uses_declared_sizes_without_reading_images(tmp_path):
    coco = {
        "images": [
            {"id": 7, "file_name": "missing1.jpg", "width": 20, "height": 10, "site": "A"},
            {"id": 9, "file_name": "missing2.jpg", "width": 40, "height": 20, "site": "B"},
        ],
        "categories": [{"id": 1, "name": "stethoscope"}, {"id": 2, "name": "face"}],
        "annotations": [
            {"image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 5]},
            {"image_id": 7, "category_id": 1, "bbox": [10, 5, 10, 5]},
            {"image_id": 9, "category_id": 2, "bbox": [20, 10, 25, 10]},
        ],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    people = ImageSet.from_coco(path, tmp_path, size=(2, 4), groups=["site"])
    assert people.ids == ["7", "9"] and people.group("site").tolist() == ["A", "B"]
    steth = people.region("stethoscope")
    assert steth[1] is None
    assert steth.masks()[0].int().tolist() == [[1, 1, 0, 0], [0, 0, 1, 1]]
    face = people.region("face")  # (20, 10, 45, 20) in a 40x20 frame: clipped to x1 = 40
    assert face.clipped == 1 and face.masks()[1].int().tolist() == [[0, 0, 0, 0], [0, 0, 1, 1]]
    with pytest.raises(FileNotFoundError):
        people.tensor()


def test_imageset_size_must_be_two_positive_integers():
    for size in [(32,), (0, 4), "ab", (8.5, 8)]:
        with pytest.raises(ValueError, match=r"ImageSet\(size=.*\): size is the \(H, W\) to resize every image to"):
            ImageSet(torch.rand(2, 3, 8, 8), size=size)
    assert ImageSet(torch.rand(2, 3, 8, 8), size=[4, 6]).tensor().shape == (2, 3, 4, 6)


def test_a_where_that_matches_nothing_warns_with_the_values_that_exist():
    people = ImageSet(torch.zeros(4, 3, 2, 2), labels=["doctor", "nurse", "doctor", "nurse"],
                      groups={"gender": ["f", "f", "m", "m"], "age": [30, 40, 50, 60]})
    with pytest.warns(UserWarning, match=r"ImageSet\.where\(label='docter'\) matched none of the 4 images: label='docter' "
                                         r"matches 0 \(labels: 'doctor', 'nurse'\); check the spelling and the type"):
        empty = people.where(label="docter")
    assert len(empty) == 0 and empty.ids == []
    with pytest.warns(UserWarning, match=r"age='40' matches 0 \(values of group 'age': 30, 40, 50, 60\); .*1 is not '1'"):
        assert len(people.where(age="40")) == 0
    with pytest.warns(UserWarning, match=r"where\(mask age>55, label='doctor'\) matched none of the 4 images: the mask "
                                         r"age>55 selects 1; label='doctor' matches 2 .*no image matches them all"):
        assert len(people.where(people.group("age") > 55, label="doctor")) == 0
    with pytest.warns(UserWarning, match=r"where\(mask gender=x\) matched none of the 4 images: the mask gender=x selects 0; "
                                         r"the mask is False for every image"):
        assert len(people.where(people.group("gender") == "x")) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert people.where(label="nurse", gender="m").ids == ["3"]
        assert len(empty.where(label="doctor")) == 0  # an already empty set has nothing to match: no second warning


def test_from_coco_labels_single_category_images_and_reads_images_next_to_the_json(tmp_path):
    folder = tmp_path / "annotated"
    folder.mkdir()
    for name, value in [("a", 10), ("b", 20), ("c", 30), ("d", 40)]:
        _write_png(folder / f"{name}.png", 4, 6, value)
    coco = {
        "images": [{"id": i + 1, "file_name": f"{name}.png"} for i, name in enumerate("abcd")],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]},
            {"image_id": 1, "category_id": 1, "bbox": [2, 2, 2, 2]},  # two boxes, one category: label "cat"
            {"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]},
            {"image_id": 2, "category_id": 2, "bbox": [1, 1, 1, 1]},  # two categories: no label
            {"image_id": 4, "category_id": 2, "bbox": [0, 0, 6, 4]},  # image 3 has no annotation: no label
        ],
    }
    (folder / "coco.json").write_text(json.dumps(coco))
    pets = ImageSet.from_coco(folder / "coco.json")  # image_dir: the JSON file's folder
    assert pets.labels.tolist() == ["cat", None, None, "dog"]
    assert pets.where(label="dog").ids == ["4"] and pets.where(label="cat").ids == ["1"]
    assert pets.tensor()[:, 0, 0, 0].mul(255).round().tolist() == [10, 20, 30, 40]
    assert ImageSet.from_coco(folder / "coco.json", folder).labels.tolist() == ["cat", None, None, "dog"]
    (folder / "bare.json").write_text(json.dumps({"images": coco["images"], "annotations": []}))
    assert ImageSet.from_coco(folder / "bare.json").labels is None


def test_regions_of_images_of_different_sizes_are_in_each_images_own_frame(tmp_path):
    """Without declared sizes each image's frame comes from its file header, not from the first image."""
    _write_png(tmp_path / "a.png", 8, 8, 10)
    _write_png(tmp_path / "b.png", 4, 6, 20)
    records = [{"file": "a.png", "regions": {"r": [0, 0, 2, 2]}}, {"file": "b.png", "regions": {"r": [4, 2, 6, 4]}}]
    (tmp_path / "annotations.json").write_text(json.dumps(records))
    region = ImageSet.from_folder(tmp_path).region("r")
    assert region.frames == [(8, 8), (4, 6)] and region.clipped == 0
    assert region.mask(1).shape == (4, 6) and region.mask(1)[2:, 4:].all() and region.mask(1).sum() == 4
