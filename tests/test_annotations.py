"""Annotation formats: COCO boxes / polygons / RLE, Pascal VOC XML and class-index mask PNGs.

The main test writes one scene (three small images, a box-shaped region "tools" and a
polygon-shaped region "face") in every format and checks that each loads the regions
``annotations.json`` gives. Boxes compare exactly. Polygons compare by one rasterisation rule, the
project's (``cnnaudit.regions``: pixel centres, ``skimage.draw.polygon``, top-left rule on edges):
the COCO polygons are the same vertices, and the RLE and PNG masks are that rule's rasterisation of
the polygon at the image's size, so all must give the same pixels.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from cnnaudit.annotations import _counts_string, _string_counts, decode_rle, encode_rle
from cnnaudit.data import ImageSet
from cnnaudit.regions import Regions

SCENE = [  # id, (H, W), tools boxes (x0, y0, x1, y1) half-open, face polygon (x, y) or None, label
    {"id": "a", "size": (12, 16), "tools": [(2, 3, 9, 8)],
     "face": [(10.2, 1.5), (15.0, 2.3), (13.1, 9.7), (10.6, 7.4)], "label": None},
    {"id": "b", "size": (10, 14), "tools": [(0, 0, 3, 4), (5, 6, 9, 10)], "face": None, "label": "tools"},
    {"id": "c", "size": (12, 16), "tools": [], "face": [(1.5, 1.0), (8.5, 2.0), (3.0, 10.5)], "label": "face"},
]
CATEGORIES = [{"id": 1, "name": "tools"}, {"id": 2, "name": "face"}]


def _expected(image: dict, name: str) -> np.ndarray:
    """The region's pixels at the image's size: boxes by numpy slicing, the polygon by the project's rule."""
    mask = np.zeros(image["size"], bool)
    if name == "tools":
        for x0, y0, x1, y1 in image["tools"]:
            mask[y0:y1, x0:x1] = True
    elif image["face"] is not None:
        mask = Regions([{"polygon": image["face"]}], image_size=image["size"]).mask(0)
    return mask


def _write_scene(root):
    """The scene in every format under ``root``; returns the paths."""
    images = root / "images"
    images.mkdir()
    for k, image in enumerate(SCENE):
        Image.fromarray(np.full((*image["size"], 3), 40 * (k + 1), np.uint8)).save(images / f"{image['id']}.png")
    # annotations.json (the reference)
    records = []
    for image in SCENE:
        regions = {}
        if image["tools"]:
            regions["tools"] = [list(box) for box in image["tools"]]
        if image["face"] is not None:
            regions["face"] = {"polygon": [list(v) for v in image["face"]]}
        records.append({"file": f"{image['id']}.png", "label": image["label"], "regions": regions})
    (images / "annotations.json").write_text(json.dumps({"images": records}))
    # COCO: boxes; polygons (tools as rectangle polygons); RLE compressed and uncompressed
    coco_images = [{"id": image["id"], "file_name": f"{image['id']}.png", "height": image["size"][0],
                    "width": image["size"][1]} for image in SCENE]
    files = {}
    for kind in ("boxes", "polygons", "rle", "rle_counts"):
        annotations = []
        for image in SCENE:
            for box in image["tools"]:
                x0, y0, x1, y1 = box
                if kind == "boxes":
                    shape = {"bbox": [x0, y0, x1 - x0, y1 - y0]}
                elif kind == "polygons":
                    shape = {"segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]}
                else:
                    alone = np.zeros(image["size"], bool)
                    alone[y0:y1, x0:x1] = True
                    shape = {"segmentation": encode_rle(alone, compressed=kind == "rle"), "iscrowd": 1}
                annotations.append({"image_id": image["id"], "category_id": 1, **shape})
            if image["face"] is not None and kind != "boxes":
                if kind == "polygons":
                    shape = {"segmentation": [[c for vertex in image["face"] for c in vertex]]}
                else:
                    shape = {"segmentation": encode_rle(_expected(image, "face"), compressed=kind == "rle"), "iscrowd": 1}
                annotations.append({"image_id": image["id"], "category_id": 2, **shape})
        for n, annotation in enumerate(annotations):
            annotation["id"] = n + 1
        files[kind] = root / f"coco_{kind}.json"
        files[kind].write_text(json.dumps({"images": coco_images, "categories": CATEGORIES, "annotations": annotations}))
    # Pascal VOC (boxes only): 1-based inclusive pixel indices
    voc = root / "voc"
    voc.mkdir()
    for image in SCENE:
        objects = "".join(
            f"<object><name>tools</name><difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>" for x0, y0, x1, y1 in image["tools"])
        (voc / f"{image['id']}.xml").write_text(
            f"<annotation><folder>images</folder><filename>{image['id']}.png</filename><size><width>{image['size'][1]}"
            f"</width><height>{image['size'][0]}</height><depth>3</depth></size><segmented>0</segmented>{objects}</annotation>")
    # class-index masks: 1 = tools, 2 = face
    masks = root / "masks"
    masks.mkdir()
    for image in SCENE:
        pixels = np.zeros(image["size"], np.uint8)
        pixels[_expected(image, "tools")] = 1
        pixels[_expected(image, "face")] = 2
        Image.fromarray(pixels).save(masks / f"{image['id']}.png")
    return images, files, voc, masks


def _assert_same_region(loaded: ImageSet, reference: ImageSet, name: str, what: str) -> None:
    got, want = loaded.region(name), reference.region(name)
    assert got.frames == want.frames, what
    assert got.defined.tolist() == want.defined.tolist(), what
    for i in range(len(want)):
        np.testing.assert_array_equal(got.mask(i), want.mask(i), err_msg=f"{what}: {name} of image {reference.ids[i]}")


def test_every_format_loads_the_same_regions_as_annotations_json(tmp_path):
    images, coco, voc, masks = _write_scene(tmp_path)
    reference = ImageSet.from_folder(images)
    for i, image in enumerate(SCENE):  # the reference is the scene
        for name in ("tools", "face"):
            np.testing.assert_array_equal(reference.region(name).mask(i), _expected(image, name))
    assert reference.region("face")[1] is None and reference.region("tools")[2] is None
    whole = {  # formats that carry both regions
        "COCO polygons": ImageSet.from_coco(coco["polygons"], images, shapes="segmentation"),
        "COCO RLE (compressed)": ImageSet.from_coco(coco["rle"], images, shapes="segmentation"),
        "COCO RLE (counts)": ImageSet.from_coco(coco["rle_counts"], images, shapes="segmentation"),
        "mask PNGs": ImageSet.from_masks(images, masks, classes={1: "tools", 2: "face"}),
    }
    boxes_only = {
        "COCO boxes": ImageSet.from_coco(coco["boxes"], images),
        "Pascal VOC": ImageSet.from_voc(voc, images),
    }
    for what, loaded in {**whole, **boxes_only}.items():
        assert loaded.ids == reference.ids, what
        _assert_same_region(loaded, reference, "tools", what)
    for what, loaded in whole.items():
        _assert_same_region(loaded, reference, "face", what)
        assert loaded.labels.tolist() == reference.labels.tolist() == [None, "tools", "face"], what
        assert loaded.region_names == ["face", "tools"], what
    assert boxes_only["Pascal VOC"].labels.tolist() == ["tools", "tools", None]
    # the images themselves load the same way, and geometric shapes rescale alike with size=
    for loaded in [*whole.values(), *boxes_only.values()]:
        assert np.allclose(loaded[1].numpy(), reference[1].numpy())
    resized = [ImageSet.from_folder(images, size=(6, 8)), ImageSet.from_coco(coco["boxes"], images, size=(6, 8)),
               ImageSet.from_voc(voc, images, size=(6, 8)),
               ImageSet.from_coco(coco["polygons"], images, size=(6, 8), shapes="segmentation")]
    for loaded in resized[1:]:
        assert loaded.region("tools").masks().equal(resized[0].region("tools").masks())


# ---- RLE -----------------------------------------------------------------------------------------
def test_compressed_rle_strings_follow_pycocotools():
    # hand-encoded by rleToString: 3 -> '3', 2 -> '2', 100 = 4 + 3*32 -> chr(48+4|0x20) 'T' then '3',
    # and from the fourth count on the difference to the count two before: 5 - 2 = 3 -> '3'
    assert _counts_string([3, 2, 100, 5]) == "32T33"
    assert _string_counts("32T33", "t").tolist() == [3, 2, 100, 5]
    # a negative difference: 2 - 10 = -8 -> 24 (bit 0x10 set: the sign) -> 'H'
    assert _counts_string([1, 10, 1, 2]) == "1:1H"
    assert _string_counts("1:1H", "t").tolist() == [1, 10, 1, 2]
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 5), (17, 9), (40, 64)]:
        for density in (0.0, 0.3, 1.0):
            mask = rng.random(shape) < density
            for compressed in (True, False):
                rle = encode_rle(mask, compressed=compressed)
                assert rle["size"] == list(shape)
                np.testing.assert_array_equal(decode_rle(rle), mask)
    # runs go down the columns and start with background
    mask = np.array([[1, 0, 0], [1, 1, 0]], bool)
    assert encode_rle(mask, compressed=False)["counts"] == [0, 2, 1, 1, 2]  # column by column: 1 1 | 0 1 | 0 0
    assert encode_rle(~mask, compressed=False)["counts"] == [2, 1, 1, 2]
    assert encode_rle(mask)["counts"] == "021O1"  # the fourth count as 1 - 2 = -1: 31 -> 'O'
    np.testing.assert_array_equal(decode_rle({"counts": b"021O1", "size": [2, 3]}), mask)  # pycocotools gives bytes


@pytest.mark.parametrize("rle, message", [
    ({"counts": [1, 2], "size": [2, 3]}, r"the RLE runs cover 3 pixels but \"size\" \[2, 3\] has 6"),
    ({"counts": [1, -1, 6], "size": [2, 3]}, r"negative run length"),
    ({"counts": "3~", "size": [2, 3]}, r"has '~' at position 1; .*'0' to 'o'"),
    ({"counts": "3T", "size": [2, 3]}, r"ends inside a count .*truncated"),
    ({"counts": "36", "size": [3]}, r"needs \"size\": \[height, width\]"),
    ({"counts": {"a": 1}, "size": [2, 3]}, r"a list of run lengths or COCO's compressed string"),
])
def test_bad_rle_is_explained(rle, message):
    with pytest.raises(ValueError, match=message):
        decode_rle(rle)


# ---- COCO ----------------------------------------------------------------------------------------
def _coco(tmp_path, annotations, images=None, categories=CATEGORIES, name="coco.json"):
    images = [{"id": 1, "file_name": "a.png", "height": 4, "width": 6}] if images is None else images
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "categories": categories, "annotations": annotations}))
    return path


def test_coco_segmentation_reads_polygons_and_rle_without_the_images(tmp_path):
    box = np.zeros((4, 6), bool)
    box[1:3, 2:5] = True
    path = _coco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2], [4, 0, 6, 0, 6, 1]]},
        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": encode_rle(box)},
    ])
    s = ImageSet.from_coco(path, shapes="segmentation")  # a.png does not exist: nothing is read
    tools = s.region("tools").mask(0)
    assert tools[:2, :2].all() and tools[0, 5] and tools.sum() == 4 + 1  # the square, and the triangle's one pixel centre
    np.testing.assert_array_equal(s.region("face").mask(0), box)
    assert s.labels is not None and s.labels.tolist() == [None]
    assert ImageSet.from_coco(path, shapes="segmentation", size=(8, 12)).region("face").masks().sum() == 4 * 6
    with pytest.raises(FileNotFoundError):
        s.tensor()


def test_an_rle_is_checked_against_the_image_file_when_the_record_has_no_size(tmp_path):
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "a.png")
    images = [{"id": 1, "file_name": "a.png"}]
    good = _coco(tmp_path, [{"image_id": 1, "category_id": 1, "segmentation": encode_rle(np.ones((4, 6), bool))}], images)
    assert ImageSet.from_coco(good, shapes="segmentation").region("tools").mask(0).all()
    bad = _coco(tmp_path, [{"image_id": 1, "category_id": 1, "segmentation": encode_rle(np.ones((6, 4), bool))}], images)
    with pytest.raises(ValueError, match=r"coco\.json: annotation 0: the RLE mask is 6x4 \(height x width, its \"size\"\) "
                                         r"but image id 1 is 4x6"):
        ImageSet.from_coco(bad, shapes="segmentation")
    missing = _coco(tmp_path, [{"image_id": 1, "category_id": 1, "segmentation": encode_rle(np.ones((4, 6), bool))}],
                    [{"id": 1, "file_name": "gone.png"}])
    with pytest.raises(FileNotFoundError, match=r"annotation 0: image id 1 has no \"height\"/\"width\", .*gone\.png"):
        ImageSet.from_coco(missing, shapes="segmentation")


def test_coco_polygons_with_fewer_than_three_vertices_are_left_out_with_a_warning(tmp_path):
    path = _coco(tmp_path, [{"image_id": 1, "category_id": 1, "segmentation": [[1, 1, 3, 3]]},
                            {"image_id": 1, "category_id": 2, "segmentation": [[0, 0, 2, 0, 2, 2], [5, 5]]}])
    with pytest.warns(UserWarning, match=r"coco\.json: 2 polygons with fewer than 3 vertices \(annotations 0, 1\) cover no pixel"):
        s = ImageSet.from_coco(path, shapes="segmentation")
    triangle = Regions([{"polygon": [[0, 0], [2, 0], [2, 2]]}], image_size=(4, 6)).mask(0)
    assert s.region("tools")[0] is None and s.labels.tolist() == ["face"]
    np.testing.assert_array_equal(s.region("face").mask(0), triangle)


def test_malformed_coco_names_the_file_and_the_entry(tmp_path):
    image = {"id": 1, "file_name": "a.png", "height": 4, "width": 6}
    box = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}
    rle = encode_rle(np.ones((4, 6), bool))
    cases = [
        ({"images": [image, {**image, "file_name": "b.png"}]}, [], "boxes",
         r"coco\.json: image 1 \('b\.png'\) repeats id 1 of image 0; image ids must be unique"),
        ({"images": [{**image, "height": 0}]}, [], "boxes", r"image id 1 has height 0 and width 6; give both as positive"),
        ({"categories": [{"id": 1, "name": "x"}, {"id": 1, "name": "y"}]}, [], "boxes", r"category 1 repeats id 1 \(of 'x'\)"),
        ({"categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "x"}]}, [], "boxes",
         r"category 1 \(id 2\) repeats the name 'x' of category id 1; .*names must be unique"),
        ({"categories": [{"id": 1}]}, [], "boxes", r"category 0 needs \"id\" \(an integer\) and \"name\""),
        ({}, [{**box, "category_id": 7}], "boxes",
         r"annotation 0 has category_id 7, which is not in 'categories' \(ids: 1 \(tools\), 2 \(face\)\); add the category"),
        ({}, [box, {**box, "bbox": [0, 0, -2, 1]}], "boxes", r"annotation 1 has \"bbox\" \[0, 0, -2, 1\]: width and height must be"),
        ({}, [{**box, "id": 5}, {**box, "id": 5}], "boxes", r"annotation 1 repeats id 5 of annotation 0"),
        ({}, [{"image_id": 1, "category_id": 1, "segmentation": [[0, 0, 1, 1, 2, 2]]}], "boxes",
         r"annotation 0 needs \"bbox\": .*got None; or pass shapes='segmentation'"),
        ({}, [box], "segmentation", r"annotation 0 needs \"segmentation\": polygons .*; or pass shapes='boxes'"),
        ({}, [{**box, "segmentation": [0, 0, 1, 1, 2, 2]}], "segmentation", r"annotation 0: \"segmentation\" is a flat list"),
        ({}, [{**box, "segmentation": [[0, 0, 1, 1, 2]]}], "segmentation", r"annotation 0: polygon 0 of \"segmentation\" needs an even"),
        ({}, [{**box, "segmentation": {**rle, "counts": rle["counts"][:-1]}}], "segmentation", r"annotation 0: the RLE string ends"),
        ({}, [{**box, "segmentation": {"counts": [0, 20], "size": [4, 6]}}], "segmentation",
         r"annotation 0: the RLE runs cover 20 pixels but \"size\" \[4, 6\] has 24; the counts are truncated"),
        ({}, [{**box, "segmentation": {"counts": [24], "size": [6, 4]}}], "segmentation",
         r"annotation 0: the RLE mask is 6x4 .* but image id 1 is 4x6"),
        ({}, [{**box, "image_id": 9}], "boxes", r"annotation 0 refers to image id 9, which is not in 'images'"),
    ]
    for extra, annotations, shapes, message in cases:
        document = {"images": [image], "categories": CATEGORIES, "annotations": annotations, **extra}
        (tmp_path / "coco.json").write_text(json.dumps(document))
        with pytest.raises(ValueError, match=message):
            ImageSet.from_coco(tmp_path / "coco.json", shapes=shapes)
    with pytest.raises(ValueError, match=r"from_coco\(shapes='masks'\): expected 'boxes' .* or 'segmentation'"):
        ImageSet.from_coco(tmp_path / "coco.json", shapes="masks")
    (tmp_path / "coco.json").write_text(json.dumps({"images": [{**image, "site": "A"}], "annotations": []}))
    assert ImageSet.from_coco(tmp_path / "coco.json", groups=["site"]).group("site").tolist() == ["A"]
    with pytest.raises(ValueError, match=r"coco\.json: groups: no image record has a field 'stie'; fields: .*'site'"):
        ImageSet.from_coco(tmp_path / "coco.json", groups=["stie"])


# ---- Pascal VOC ----------------------------------------------------------------------------------
def _voc_file(folder, name, objects="", filename=None, size="<size><width>6</width><height>4</height></size>", extra=""):
    filename = f"{name}.jpg" if filename is None else filename
    (folder / f"{name}.xml").write_text(f"<annotation><filename>{filename}</filename>{size}{extra}{objects}</annotation>")


def _object(name, xmin, ymin, xmax, ymax):
    return f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"


def test_voc_boxes_are_one_based_and_inclusive(tmp_path):
    annotations, images = tmp_path / "VOC" / "Annotations", tmp_path / "VOC" / "JPEGImages"
    annotations.mkdir(parents=True), images.mkdir()
    _voc_file(annotations, "2007_000001", _object("cat", 1, 1, 1, 1) + _object("cat", 6, 4, 6, 4) + _object("dog", 2, 2, 4, 3),
              extra="<segmented>1</segmented><source><database>VOC2007</database></source>")
    _voc_file(annotations, "2007_000002", _object("dog", 1, 1, 6, 4), size="")
    s = ImageSet.from_voc(annotations, groups=["segmented", "source/database"])  # images: the sibling JPEGImages
    assert s.ids == ["2007_000001", "2007_000002"] and s.region_names == ["cat", "dog"]
    assert s.labels.tolist() == [None, "dog"]
    assert s.group("segmented").tolist() == ["1", None] and s.group("source/database").tolist() == ["VOC2007", None]
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(images / "2007_000002.jpg")  # its file gives the frame: no <size>
    cat = s.region("cat").mask(0)  # the first and the last pixel, each alone
    assert cat.sum() == 2 and cat[0, 0] and cat[3, 5]
    assert s.region("dog").mask(0)[1:3, 1:4].all() and s.region("dog").mask(0).sum() == 6  # rows 2-3, columns 2-4 (1-based)
    assert s.region("cat")[1] is None and s.region("cat").clipped == 0
    assert s._sources[0].endswith("JPEGImages/2007_000001.jpg")
    assert s.region("dog").mask(1).all()  # (1, 1, 6, 4) covers the 4x6 image
    with pytest.raises(FileNotFoundError):
        s.tensor()  # the first image is missing: images are read only now
    assert ImageSet.from_voc(annotations, classes=["cat", "dog", "bird"]).region("bird").defined.tolist() == [False, False]


def test_voc_refuses_dtds_and_entities(tmp_path):
    body = '<annotation><filename>a.jpg</filename>&x;</annotation>'
    for text, encoding in [(f'<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY x "xx">]>{body}', "utf-8"),
                           (f'<?xml version="1.0" encoding="utf-16"?><!doctype annotation [<!ENTITY x "xx">]>{body}', "utf-16"),
                           ('<!ENTITY x "xx">', "utf-8")]:
        (tmp_path / "a.xml").write_bytes(text.encode(encoding))
        with pytest.raises(ValueError, match=r"a\.xml: the document declares a DTD or entities .*; remove the declaration"):
            ImageSet.from_voc(tmp_path)


def test_malformed_voc_names_the_file_and_the_object(tmp_path):
    cases = [
        ("<annotation><filename>a.jpg</filename>", r"a\.xml is not valid XML: .*line 1, column"),
        ("<voc><filename>a.jpg</filename></voc>", r"a\.xml: the root element is <voc>; a Pascal VOC file is an <annotation>"),
        ("<annotation></annotation>", r"a\.xml: <filename> is missing or empty"),
        ("<annotation><filename>a.jpg</filename><size><width>0</width><height>4</height></size></annotation>",
         r"a\.xml: <size> has <width> '0' and <height> '4'; expected positive integers"),
        ("<annotation><filename>a.jpg</filename><object><bndbox/></object></annotation>", r"a\.xml: <object> 0 has no <name>"),
        ("<annotation><filename>a.jpg</filename><object><name>cat</name></object></annotation>",
         r"a\.xml: <object> 0 \('cat'\) has no <bndbox>"),
        (f"<annotation><filename>a.jpg</filename>{_object('cat', 1, 1, 2, 2)}{_object('cat', 1, 'x', 2, 2)}</annotation>",
         r"a\.xml: <object> 1 \('cat'\): <bndbox><ymin> is 'x'; expected a number \(a 1-based pixel index\)"),
        (f"<annotation><filename>a.jpg</filename>{_object('cat', 5, 1, 2, 2)}</annotation>",
         r"a\.xml: <object> 0 \('cat'\): <bndbox> has xmin 5, xmax 2, .*xmin <= xmax"),
        ("<annotation><filename>../secret.jpg</filename></annotation>", r"a\.xml: <filename> points outside .*allow_outside=True"),
    ]
    for text, message in cases:
        (tmp_path / "a.xml").write_text(text)
        with pytest.raises(ValueError, match=message):
            ImageSet.from_voc(tmp_path)
    (tmp_path / "a.xml").write_text("<annotation><filename>../secret.jpg</filename></annotation>")
    assert len(ImageSet.from_voc(tmp_path, allow_outside=True)) == 1
    _voc_file(tmp_path, "a", _object("dgo", 1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"a\.xml: <object> 0: unknown class 'dgo' \(did you mean 'dog'\?\); .*add it to classes="):
        ImageSet.from_voc(tmp_path, classes=["cat", "dog"])
    _voc_file(tmp_path, "b", filename="a.jpg")
    with pytest.raises(ValueError, match=r"b\.xml: <filename> 'a\.jpg' is described by a\.xml too"):
        ImageSet.from_voc(tmp_path)
    (tmp_path / "b.xml").unlink()
    with pytest.raises(ValueError, match=r"groups: no file has an element <pose> under <annotation>"):
        ImageSet.from_voc(tmp_path, groups=["pose"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty has no \.xml files"):
        ImageSet.from_voc(tmp_path / "empty")


# ---- class-index masks ---------------------------------------------------------------------------
def test_masks_map_pixel_values_to_regions(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for stem, suffix in [("a", ".jpg"), ("b", ".png"), ("unmasked", ".png")]:
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(images / f"{stem}{suffix}")
    palette = Image.fromarray(np.array([[0, 1, 1, 0, 0, 255], [0, 3, 3, 0, 0, 255], [0] * 6, [0] * 6], np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [224, 224, 192] * 252)  # colours are not classes
    palette.save(masks / "a.png")
    Image.fromarray(np.full((4, 6), 2, np.uint16)).save(masks / "b.png")  # 16-bit grey
    s = ImageSet.from_masks(images, masks, classes={1: "tools", 3: "tools", 2: "face", 255: None})
    assert s.ids == ["a", "b"] and s.region_names == ["face", "tools"]  # the unmasked image is not in the set
    assert s.labels.tolist() == ["tools", "face"]
    assert s.region("tools").mask(0).sum() == 4 and s.region("tools")[1] is None
    assert s.region("face")[0] is None and s.region("face").mask(1).all()
    assert s.region("tools").masks(size=(2, 3)).sum() == 1  # lower resolutions sample pixel centres, as for any mask
    with pytest.raises(ValueError, match=r"a\.png: pixel values 255 are not in classes \(\{0: None, 1: 'tools', 3: 'tools'\}\); "
                                         r"add them to classes, mapping a value to None .*\{255: None\}"):
        ImageSet.from_masks(images, masks, classes={1: "tools", 3: "tools"})


def test_malformed_masks_name_the_file(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(images / "a.png")
    Image.fromarray(np.zeros((6, 4), np.uint8)).save(masks / "a.png")
    with pytest.raises(ValueError, match=r"masks/a\.png: the mask is 6x4 \(H x W\) but its image .*images/a\.png is 4x6; a class "
                                         r"mask has its image's size"):
        ImageSet.from_masks(images, masks, classes={1: "x"})
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(masks / "a.png")
    with pytest.raises(ValueError, match=r"masks/a\.png: the mask has mode RGB; a class mask has one channel"):
        ImageSet.from_masks(images, masks, classes={1: "x"})
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(masks / "a.png")
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(masks / "z.png")
    with pytest.raises(ValueError, match=r"masks/z\.png: no image z\.\* .* every mask needs its image"):
        ImageSet.from_masks(images, masks, classes={1: "x"})
    (masks / "z.png").unlink()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(images / "a.jpg")
    with pytest.raises(ValueError, match=r"masks/a\.png: several images have the stem 'a' \(a\.jpg, a\.png\)"):
        ImageSet.from_masks(images, masks, classes={1: "x"})
    (images / "a.jpg").unlink()
    assert ImageSet.from_masks(images, masks, classes={1: "x"}).region("x").defined.tolist() == [False]
    for classes, message in [({"1": "x"}, r"key '1' is not a pixel value"), ({1: ""}, r"value 1 maps to ''"),
                             ({}, r"classes maps the masks' pixel values to region names")]:
        with pytest.raises(ValueError, match=message):
            ImageSet.from_masks(images, masks, classes=classes)
    with pytest.raises(ValueError, match=r"a\.png: is its own image .*mask_suffix='_mask\.png'"):
        ImageSet.from_masks(images, images, classes={1: "x"})
    Image.fromarray(np.ones((4, 6), np.uint8)).save(images / "a_mask.png")
    assert ImageSet.from_masks(images, images, classes={1: "x"}, mask_suffix="_mask.png").region("x").mask(0).all()
    with pytest.raises(FileNotFoundError, match=r"has no files ending in '\.bmp'"):
        ImageSet.from_masks(images, masks, classes={1: "x"}, mask_suffix=".bmp")
    (images / "link.png").symlink_to(tmp_path / "elsewhere.png")
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "elsewhere.png")
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(masks / "link.png")
    with pytest.raises(ValueError, match=r"image 'link\.png' points outside .*allow_outside=True"):
        ImageSet.from_masks(images, masks, classes={1: "x"})
    assert len(ImageSet.from_masks(images, masks, classes={1: "x"}, allow_outside=True)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImageSet.from_masks(images, masks, classes={1: "x"}, allow_outside=True).region("x").masks()
