"""The demo benchmark: deterministic data and training, a working cache, and a bias that is real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cnnaudit import demo
from cnnaudit.demo import models

TINY = demo.TrainSpec(n_train=64, epochs=1, batch_size=16, widths=(4, 8, 8, 8))


def test_the_same_arguments_give_identical_images_and_boxes() -> None:
    a, b, other = demo.synthesize(8, "test", seed=3), demo.synthesize(8, "test", seed=3), demo.synthesize(8, "test", seed=4)
    assert torch.equal(a.images, b.images) and np.array_equal(a.tools, b.tools) and np.array_equal(a.faces, b.faces)
    assert not torch.equal(a.images, other.images)
    assert a.images.dtype == torch.float32 and a.images.min() >= 0 and a.images.max() <= 1


def test_boxes_lie_inside_the_image_and_do_not_overlap() -> None:
    spec = demo.SceneSpec()
    people = demo.synthesize(40, "biased", seed=0, spec=spec)
    for boxes in (people.tools, people.faces):
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= spec.size).all()
        assert ((boxes[:, 2] - boxes[:, 0]) == spec.object_size).all() and ((boxes[:, 3] - boxes[:, 1]) == spec.object_size).all()
    apart = (
        (people.tools[:, 2] <= people.faces[:, 0]) | (people.faces[:, 2] <= people.tools[:, 0])
        | (people.tools[:, 3] <= people.faces[:, 1]) | (people.faces[:, 3] <= people.tools[:, 1])
    )
    assert apart.all()


@pytest.mark.parametrize(("split", "share"), [("biased", 0.95), ("balanced", 0.5), ("test", 0.5)])
def test_gender_goes_with_the_class_only_in_the_biased_split(split: str, share: float) -> None:
    people = demo.synthesize(200, split, seed=0)
    assert people.stereotyped.mean() == pytest.approx(share, abs=0.01)
    assert (people.labels == "doctor").mean() == 0.5


def test_make_people_wraps_the_arrays_in_an_image_set() -> None:
    people = demo.make_people(8, "test", seed=1)
    arrays = demo.synthesize(8, "test", seed=1)
    assert torch.equal(people.tensor(), arrays.images)
    assert list(people.labels) == list(arrays.labels) and list(people.group("gender")) == list(arrays.genders)
    masks = people.region("tools").masks((64, 64))
    x0, y0, x1, y1 = arrays.tools[0]
    assert masks[0].sum() == (x1 - x0) * (y1 - y0) and masks[0, y0:y1, x0:x1].all()


def test_training_is_deterministic() -> None:
    first, second = models.train_model("biased", train=TINY), models.train_model("biased", train=TINY)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_cached_model_is_loaded_not_trained_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNAUDIT_CACHE", str(tmp_path))
    trained = models.trained_model("clean", train=TINY)
    assert len(list(tmp_path.glob("people-clean-*.pt"))) == 1

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached model should have been loaded")

    monkeypatch.setattr(models, "train_model", no_training)
    loaded = models.trained_model("clean", train=TINY)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()))
    assert models.config_hash("clean", demo.SceneSpec(), TINY) != models.config_hash("biased", demo.SceneSpec(), TINY)


def test_the_biased_model_takes_the_shortcut_and_the_clean_one_does_not() -> None:
    people = demo.synthesize(200, "test", seed=0)

    def accuracy(variant: str, where: np.ndarray) -> float:
        with torch.no_grad():
            predicted = models.trained_model(variant)(people.images).argmax(dim=1)
        return float((predicted == people.targets).numpy()[where].mean())

    stereotyped, counter = people.stereotyped, ~people.stereotyped
    assert accuracy("clean", stereotyped) >= 0.9 and accuracy("clean", counter) >= 0.9
    assert accuracy("biased", stereotyped) >= 0.9 and accuracy("biased", counter) <= 0.3
