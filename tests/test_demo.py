"""cnnaudit.demo: the people benchmark (data), its deterministic training and cache, the shipped
models, and that the biased model really takes the shortcut while the clean one does not."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnaudit as ca
from cnnaudit import demo
from cnnaudit.demo import models as demo_models

TINY = demo.TrainSpec(n_train=48, epochs=1, batch_size=16, widths=(4, 4, 4, 4))


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cnnaudit-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, cache_root: Path) -> None:
    monkeypatch.setenv("CNNAUDIT_CACHE", str(cache_root))


@pytest.fixture(scope="session")
def test_people() -> demo.People:
    return demo.synthesize(400, "test", seed=1)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- data --------------------------------------------------------------------------------


def test_same_seed_gives_identical_data_and_another_seed_does_not() -> None:
    a, b = demo.synthesize(12, "biased", seed=3), demo.synthesize(12, "biased", seed=3)
    assert torch.equal(a.images, b.images)
    assert list(a.labels) == list(b.labels) and list(a.genders) == list(b.genders)
    assert all(np.array_equal(x, y) for x, y in zip(a.tools, b.tools)) and len(a.tools) == len(b.tools) == 12
    assert np.array_equal(a.faces, b.faces) and a.ids == b.ids
    assert not torch.equal(a.images, demo.synthesize(12, "biased", seed=4).images)
    assert not torch.equal(a.images, demo.synthesize(12, "balanced", seed=3).images)


@pytest.mark.parametrize("split", demo.SPLITS)
def test_images_are_float_rgb_in_unit_range(split: str) -> None:
    spec = demo.SceneSpec()
    images = demo.synthesize(8, split).images
    assert images.dtype == torch.float32 and images.shape == (8, 3, spec.size, spec.size)
    assert images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize(("split", "share", "curated"), [("biased", demo.SceneSpec().bias, 0), ("balanced", 0.5, 24), ("test", 0.5, 0)])
def test_each_split_pairs_gender_with_class_at_its_share(split: str, share: float, curated: int) -> None:
    n = 80
    people = demo.synthesize(n, split)
    for cls in demo.CLASSES:
        in_class = people.labels == cls
        assert in_class.sum() == (n - curated) // 2
        stereotyped = (people.genders[in_class] == demo.STEREOTYPE[cls]).sum()
        assert stereotyped == round(share * ((n - curated) // 2))
    for scene in ("both", "none"):
        in_scene = people.labels == scene
        assert in_scene.sum() == curated // 2
        assert (people.genders[in_scene] == "female").sum() == curated // 4  # genders balanced there too
    assert np.array_equal(people.stereotyped, [demo.STEREOTYPE.get(c) == g for c, g in zip(people.labels, people.genders)])


def test_curated_scenes_show_both_tools_or_none_with_multi_hot_targets() -> None:
    people = demo.synthesize(80, "balanced", seed=4)
    expected = {"doctor": [1.0, 0.0], "nurse": [0.0, 1.0], "both": [1.0, 1.0], "none": [0.0, 0.0]}
    assert people.targets.tolist() == [expected[label] for label in people.labels]
    images = people.images.numpy()
    for image, label, tools, face in zip(images, people.labels, people.tools, people.faces):
        assert len(tools) == {"doctor": 1, "nurse": 1, "both": 2, "none": 0}[label]
        outside = np.ones(image.shape[1:], bool)
        for x0, y0, x1, y1 in [*tools, face]:
            outside[y0:y1, x0:x1] = False
        assert _is_grey(image)[outside].all()  # nothing coloured outside the tools and the head
        for x0, y0, x1, y1 in tools:
            assert _single_hue(image[:, y0:y1, x0:x1])
    made = demo.make_people(80, "balanced", seed=4)
    assert [made.region("tools").masks((64, 64))[i].sum() for i in range(80)] == [24 * 24 * len(t) for t in people.tools]


def test_boxes_lie_inside_the_image_do_not_overlap_and_have_the_object_size() -> None:
    spec = demo.SceneSpec()
    people = demo.synthesize(200, "test")
    for tools, face in zip(people.tools, people.faces):
        assert tools.shape == (1, 4)
        for x0, y0, x1, y1 in (tools[0], face):
            assert 0 <= x0 and x1 <= spec.size and 0 <= y0 and y1 <= spec.size
            assert x1 - x0 == y1 - y0 == spec.object_size
        tool = tools[0]
        apart_x = tool[2] <= face[0] or face[2] <= tool[0]
        apart_y = tool[3] <= face[1] or face[3] <= tool[1]
        assert apart_x or apart_y


def _is_grey(image: np.ndarray) -> np.ndarray:
    """(H,W) bool: R == G == B (the background is grey; tools, skin and hair are not, except white tools)."""
    return (image[0] == image[1]) & (image[1] == image[2])


def _single_hue(pixels: np.ndarray) -> bool:
    """All (3,) colour vectors are multiples of one tint: the (pixels x 3) matrix has rank one."""
    s = np.linalg.svd(pixels.reshape(3, -1).T, compute_uv=False)
    return bool(s[1] <= 1e-5 * s[0])


def test_boxes_hold_their_content() -> None:
    people = demo.synthesize(200, "test")
    images = people.images.numpy()
    for image, (tool,), face, gender in zip(images, people.tools, people.faces, people.genders):
        outside = np.ones(image.shape[1:], bool)
        for x0, y0, x1, y1 in (tool, face):
            outside[y0:y1, x0:x1] = False
        assert _is_grey(image)[outside].all()  # everything coloured lies in a box
        x0, y0, x1, y1 = tool
        assert _single_hue(image[:, y0:y1, x0:x1])  # one tinted texture plate ...
        if not _is_grey(image[:, y0:y1, x0:x1]).all():  # ... which the box fits exactly (non-white tint)
            ring = image[:, max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1]
            assert not _single_hue(ring)
        x0, y0, x1, y1 = face
        coloured = 1.0 - _is_grey(image[:, y0:y1, x0:x1]).mean()
        if gender == "female":
            assert coloured == 1.0  # long hair fills the head box around the face
        else:
            assert 0.3 < coloured < 0.5  # face plus a thin crop of hair, background beside it


def test_make_people_is_an_imageset_with_labels_regions_and_groups() -> None:
    people = demo.make_people(16, "biased", seed=2)
    arrays = demo.synthesize(16, "biased", seed=2)
    assert isinstance(people, ca.ImageSet) and len(people) == 16
    assert torch.equal(people.tensor(), arrays.images)
    assert list(people.labels) == list(arrays.labels) and people.ids == arrays.ids
    assert [tuple(b) for b in people.region("tools").boxes()] == [tuple(b[0]) for b in arrays.tools]
    assert [tuple(b) for b in people.region("face").boxes()] == [tuple(b) for b in arrays.faces.tolist()]
    masks = people.region("tools").masks((64, 64))
    x0, y0, x1, y1 = arrays.tools[0][0]
    assert masks[0].sum() == (x1 - x0) * (y1 - y0) and masks[0, y0:y1, x0:x1].all()
    assert list(people.group("gender")) == list(arrays.genders)
    assert list(people.group("pairing") == "stereotyped") == list(arrays.stereotyped)
    assert set(people.where(label="nurse").labels) == {"nurse"}


def test_test_split_uses_held_out_faces_and_texture_rows() -> None:
    from cnnaudit.demo import data

    train_faces, test_faces = data._faces(False), data._faces(True)
    assert len(train_faces) + len(test_faces) == 100
    assert not any(np.array_equal(a, b) for a in test_faces for b in train_faces)
    assert data._rows(True)[0] == data._rows(False)[1]  # test rows start where training rows end


def test_bad_arguments_say_what_is_expected() -> None:
    with pytest.raises(ValueError, match="unknown split 'train'.*biased"):
        demo.synthesize(8, "train")
    with pytest.raises(ValueError, match="at least 4"):
        demo.synthesize(2)
    with pytest.raises(ValueError, match="object_size"):
        demo.SceneSpec(size=32, object_size=24)
    with pytest.raises(ValueError, match="bias"):
        demo.SceneSpec(bias=0.2)
    with pytest.raises(ValueError, match="curated"):
        demo.SceneSpec(curated=1.0)
    with pytest.raises(ValueError, match="unknown shipped model 'fair'.*biased.*candidate.*clean"):
        demo.shipped_model("fair")
    with pytest.raises(ValueError, match="unknown model variant 'fair'.*biased.*clean"):
        demo.trained_model("fair")


# ---- training and cache ------------------------------------------------------------------


def test_training_is_deterministic_and_leaves_global_state_alone() -> None:
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    first = _state(demo.train_model("biased", train=TINY))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert not torch.are_deterministic_algorithms_enabled()
    second = _state(demo.train_model("biased", train=TINY))
    assert _same_weights(first, second)
    assert not _same_weights(first, _state(demo.train_model("biased", train=replace(TINY, seed=1))))
    assert not _same_weights(first, _state(demo.train_model("clean", train=TINY)))


def test_model_layers_are_named_and_end_in_an_8x8_map() -> None:
    model = demo.PeopleCNN()
    names = dict(model.named_modules())
    assert {"features", "features.conv1", "features.relu4", "pool", "classifier"} <= names.keys()
    x = demo.synthesize(4).images
    assert model.features((x - 0.5) / 0.25).shape == (4, demo.TrainSpec().widths[-1], 8, 8)
    assert model(x).shape == (4, len(demo.CLASSES))


def test_config_hash_covers_every_setting() -> None:
    base = demo_models.config_hash("clean", demo.SceneSpec(), TINY)
    assert base == demo_models.config_hash("clean", demo.SceneSpec(), replace(TINY))
    assert base != demo_models.config_hash("biased", demo.SceneSpec(), TINY)
    scene_changes = {"size": 96, "object_size": 20, "tool_contrast": 0.05, "bias": 0.9, "curated": 0.2}
    train_changes = {"n_train": 50, "epochs": 2, "batch_size": 8, "max_lr": 1e-3, "widths": (4, 4, 4), "seed": 1}
    assert scene_changes.keys() == asdict(demo.SceneSpec()).keys() and train_changes.keys() == asdict(TINY).keys()
    for field, value in scene_changes.items():
        assert demo_models.config_hash("clean", replace(demo.SceneSpec(), **{field: value}), TINY) != base, field
    for field, value in train_changes.items():
        assert demo_models.config_hash("clean", demo.SceneSpec(), replace(TINY, **{field: value})) != base, field


def test_cache_hit_loads_identical_weights_without_training(monkeypatch: pytest.MonkeyPatch, cache_root: Path) -> None:
    tiny = replace(TINY, seed=7)
    path = demo.cache_path("clean", train=tiny)
    assert path.parent == cache_root and not path.exists()
    trained = _state(demo.trained_model("clean", train=tiny))
    assert path.is_file()
    assert _same_weights(trained, torch.load(path, weights_only=True))

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained again despite a cached file")

    monkeypatch.setattr(demo_models, "train_model", no_training)
    loaded = demo.trained_model("clean", train=tiny)
    assert _same_weights(trained, _state(loaded)) and not loaded.training
    with pytest.raises(AssertionError, match="trained again"):
        demo.trained_model("clean", train=tiny, cache=False)


def test_a_failed_cache_write_leaves_no_file(monkeypatch: pytest.MonkeyPatch, cache_root: Path) -> None:
    tiny = replace(TINY, seed=8)

    def broken_save(obj: object, handle: object) -> None:
        handle.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(demo_models.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        demo.trained_model("biased", train=tiny)
    assert not demo.cache_path("biased", train=tiny).exists()
    assert not [p for p in os.listdir(cache_root) if p.endswith(".tmp")]


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CNNAUDIT_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("CNNAUDIT_CACHE")
    assert demo.cache_dir() == tmp_path / "xdg" / "cnnaudit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert demo.cache_dir() == tmp_path / "home" / ".cache" / "cnnaudit"


# ---- the shipped models ------------------------------------------------------------------


def test_shipped_weights_are_small_match_the_manifest_and_the_current_recipe() -> None:
    manifest = json.loads((demo_models.WEIGHTS_DIR / "manifest.json").read_text())
    assert sorted(manifest) == sorted(demo.SHIPPED)
    for name, shipped in demo.SHIPPED.items():
        path = demo_models.WEIGHTS_DIR / f"{name}.pt"
        assert path.stat().st_size < 100_000
        assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest[name]["sha256"], name
        # a changed recipe (data, architecture, training) must come with regenerated weights
        assert manifest[name]["recipe"] == json.loads(json.dumps(demo_models.recipe(shipped.variant, demo.SceneSpec(), shipped.train))), (
            f"the shipped {name!r} model was trained with another recipe; run `python -m cnnaudit.demo train`"
        )
        model = demo.shipped_model(name)
        assert not model.training and isinstance(model, demo.PeopleCNN)
    assert demo.SHIPPED["candidate"].train.seed != demo.SHIPPED["clean"].train.seed  # a real retraining


def test_write_shipped_trains_every_model_and_writes_a_manifest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tiny = {name: replace(shipped, train=replace(TINY, seed=k)) for k, (name, shipped) in enumerate(demo.SHIPPED.items())}
    monkeypatch.setattr(demo_models, "SHIPPED", tiny)
    manifest = demo_models.write_shipped(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*(f"{n}.pt" for n in tiny), "manifest.json"])
    assert json.loads((tmp_path / "manifest.json").read_text()) == json.loads(json.dumps(manifest))
    for name, shipped in tiny.items():
        retrained = _state(demo.train_model(shipped.variant, train=shipped.train))
        assert _same_weights(retrained, torch.load(tmp_path / f"{name}.pt", weights_only=True)), name
        assert manifest[name]["threads"] == torch.get_num_threads() and manifest[name]["torch"] == torch.__version__


@pytest.fixture(scope="session")
def models() -> dict[str, torch.nn.Module]:
    return {name: demo.shipped_model(name) for name in demo.SHIPPED}


def _accuracy(model: torch.nn.Module, people: demo.People) -> tuple[float, float]:
    """Test accuracy on images whose gender matches the class's biased pairing, and on the others."""
    with torch.no_grad():
        correct = (model(people.images).argmax(1) == people.targets.argmax(1)).numpy()
    return correct[people.stereotyped].mean(), correct[~people.stereotyped].mean()


def test_biased_model_fails_where_gender_and_class_disagree(models, test_people) -> None:
    stereotyped, counter = _accuracy(models["biased"], test_people)
    assert stereotyped >= 0.95 and counter <= 0.3


@pytest.mark.parametrize("name", ["clean", "candidate"])
def test_clean_models_are_accurate_whatever_the_pairing(models, test_people, name: str) -> None:
    stereotyped, counter = _accuracy(models[name], test_people)
    assert min(stereotyped, counter) >= 0.95 and abs(stereotyped - counter) <= 0.03


def test_gradcam_shows_the_clean_model_on_tools_and_the_biased_one_on_faces(models) -> None:
    people = demo.make_people(200, "test", seed=1)
    nurses = people.where(label="nurse")

    def mass(variant: str, region: str) -> float:
        subject = ca.Subject(models[variant], layer="features", classes=demo.CLASSES, device="cpu")
        return subject.gradcam(nurses, target="nurse").mass_in(nurses.region(region)).mean()

    assert mass("clean", "tools") >= 0.5 and mass("clean", "face") <= 0.1
    assert mass("biased", "face") >= 0.4 and mass("biased", "tools") <= 0.3


def test_the_command_line_helps_without_training() -> None:
    run = subprocess.run([sys.executable, "-m", "cnnaudit.demo", "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "seeds" in run.stdout and "train" in run.stdout, run.stderr
    bad = subprocess.run([sys.executable, "-m", "cnnaudit.demo", "seeds", "--seeds", "a-b"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--seeds takes a range like 0-7" in bad.stderr


def test_the_command_line_help_describes_each_command_and_runs_none(monkeypatch, capsys) -> None:
    from cnnaudit.demo import __main__ as command_line

    def refuse(*args, **kwargs):
        raise AssertionError("--help must not evaluate or train a model")

    for name in ("seed_table", "shipped_table", "write_shipped"):
        monkeypatch.setattr(command_line, name, refuse)
    for argv in (["--help"], ["-h"], ["seeds", "--help"], ["train", "--help"]):
        with pytest.raises(SystemExit) as done:
            command_line.main(argv)
        assert done.value.code == 0, argv
    shown = capsys.readouterr().out
    assert "python -m cnnaudit.demo seeds --seeds 0-7 --threads 1" in shown and "trains nothing" in shown
    assert "python -m cnnaudit.demo train [--out DIR]" in shown and "--seeds SEEDS" in shown
    for argv, message in ([["--bogus"], "unrecognized arguments: --bogus"], [["tabel"], "invalid choice: 'tabel'"],
                          [["table", "--seeds", "3"], "unrecognized arguments: --seeds 3"]):
        with pytest.raises(SystemExit) as done:
            command_line.main(argv)
        assert done.value.code == 2 and message in capsys.readouterr().err, argv


def test_the_demo_is_an_attribute_of_the_package_without_importing_torch_early():
    """``import cnnaudit`` stays cheap (no torch) and ``ca.demo`` works without ``from cnnaudit import demo``."""
    script = (
        "import sys, cnnaudit as ca\n"
        "assert 'torch' not in sys.modules and 'cnnaudit.demo' not in sys.modules\n"
        "assert callable(ca.demo.make_people) and 'demo' in dir(ca)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
