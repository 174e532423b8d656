"""The session heatmap cache: repeats cost no pass; any change to what the maps depend on is a miss."""

from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import pytest
import torch

import cnnaudit as ca
from cnnaudit.cache import HeatmapCache

CLASSES = ["cat", "dog", "bird", "fish", "frog"]


class Passes:
    """Counts forward passes of a model (a pre-hook registered before the subject exists)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.count = 0
        model.register_forward_pre_hook(self._count)

    def _count(self, module, inputs) -> None:
        self.count += 1


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def subject_for(model: torch.nn.Module, **kwargs: Any) -> ca.Subject:
    return ca.Subject(model, layer="features.2", classes=CLASSES, device="cpu", batch_size=4, **kwargs)


def fresh(model: torch.nn.Module, images: Any, **request: Any) -> torch.Tensor:
    """The maps computed without a cache."""
    return subject_for(model, cache=False).gradcam(images, **request).raw


def test_a_repeated_request_is_answered_without_a_pass(tiny_cnn, images) -> None:
    passes = Passes(tiny_cnn)
    subject = subject_for(tiny_cnn)
    first = subject.gradcam(images, target="dog")
    computed = passes.count
    again = subject.gradcam(images, target=1)  # the same class, named differently
    assert passes.count == computed == 2  # two batches of 4, once
    assert torch.equal(again.raw, first.raw) and torch.equal(again.targets, first.targets)
    assert again is not first and again.raw.data_ptr() != first.raw.data_ptr()  # each call its own Heatmaps
    assert (subject.cache.stats.hits, subject.cache.stats.misses, subject.cache.stats.entries) == (1, 1, 1)
    assert subject.cache.stats.bytes == 6 * 8 * 8 * 4 + 6 * 8  # raw float32 (6,8,8) + targets int64 (6,)


def test_handed_out_maps_do_not_alias_the_cache(tiny_cnn, images) -> None:
    subject = subject_for(tiny_cnn)
    expected = subject.gradcam(images).raw.clone()
    subject.gradcam(images).raw.zero_()
    torch.testing.assert_close(subject.gradcam(images).raw, expected, rtol=0, atol=0)


def test_subsets_of_an_image_set_are_named_by_their_sources(tiny_cnn) -> None:
    loads = []

    def loader(i: int) -> Callable[[], torch.Tensor]:
        def load() -> torch.Tensor:
            loads.append(i)
            return torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(i))
        return load

    people = ca.ImageSet([loader(i) for i in range(6)], labels=["a", "b"] * 3)
    subject = subject_for(tiny_cnn)
    first = subject.gradcam(people.where(label="a"))  # a new ImageSet object each time
    loaded = len(loads)
    again = subject.gradcam(people.where(label="a"))
    assert len(loads) == loaded and torch.equal(again.raw, first.raw) and again.ids == ["0", "2", "4"]
    other = subject.gradcam(people.where(label="b"))
    assert len(loads) > loaded and subject.cache.stats.misses == 2
    torch.testing.assert_close(other.raw, fresh(tiny_cnn, people.where(label="b")))


VARIATIONS: dict[str, Callable[[ca.Subject, torch.Tensor], dict[str, Any]]] = {
    "target": lambda s, x: {"images": x, "target": 3},
    "method": lambda s, x: {"images": x, "target": 1, "method": "gradcam++"},
    "layer": lambda s, x: {"images": x, "target": 1, "layer": "features.1"},
    "images": lambda s, x: {"images": x[:5], "target": 1},
    "per-image targets": lambda s, x: {"images": x, "target": [1, 1, 1, 1, 1, 2]},
}


@pytest.mark.parametrize("variation", VARIATIONS)
def test_every_part_of_the_request_is_in_the_key(tiny_cnn, images, variation) -> None:
    subject = subject_for(tiny_cnn)
    subject.gradcam(images, target=1)
    request = VARIATIONS[variation](subject, images)
    changed = subject.gradcam(**request)
    assert subject.cache.stats.hits == 0
    torch.testing.assert_close(changed.raw, subject_for(tiny_cnn, cache=False).gradcam(**request).raw)


@pytest.mark.parametrize("kind", ["gradcam", "saliency"])
def test_callable_targets_are_never_cached(tiny_cnn, images, kind) -> None:
    """A closure is the same object after its captured data changed: its maps must be recomputed."""
    passes = Passes(tiny_cnn)
    weights = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])

    def weighted(out: torch.Tensor) -> torch.Tensor:
        return out @ weights

    subject = subject_for(tiny_cnn)
    explain = subject.gradcam if kind == "gradcam" else subject.saliency
    first = explain(images, target=weighted).raw
    torch.testing.assert_close(first, explain(images, target=0).raw)
    weights[:] = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0])  # the same callable now scores class 3
    calls = passes.count
    changed = explain(images, target=weighted).raw
    assert passes.count > calls and subject.cache.stats.entries == 1  # only the class-0 request was stored
    torch.testing.assert_close(changed, explain(images, target=3).raw)
    assert not torch.allclose(changed, first)


def test_saliency_and_gradcam_are_kept_apart(tiny_cnn, images) -> None:
    subject = subject_for(tiny_cnn)
    cam = subject.gradcam(images, target=1)
    guided = subject.saliency(images, target=1, method="guided_gradcam", layer="features.2")
    assert subject.cache.stats.hits == 0 and not torch.allclose(guided.raw, cam.raw)
    assert torch.equal(subject.saliency(images, target=1, method="guided_gradcam", layer="features.2").raw, guided.raw)
    assert subject.cache.stats.hits == 1


def _scale_in_place(model):
    with torch.no_grad():
        model.fc.weight.mul_(2.0)
        model.fc.bias.add_(1.0)


def _load_state_dict(model):
    state = {k: v * 1.5 if k.startswith("features.0") else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)


def _optimizer_step(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5)))[:, 0].sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _replace_parameter(model):
    model.features[2].weight = torch.nn.Parameter(torch.randn_like(model.features[2].weight))


def _change_buffer(model):
    model.features[4].running_var.mul_(4.0)


@pytest.mark.parametrize("change", [_scale_in_place, _load_state_dict, _optimizer_step, _replace_parameter, _change_buffer])
def test_changed_weights_invalidate(tiny_cnn, images, change) -> None:
    subject = subject_for(tiny_cnn)
    before = subject.gradcam(images, target=1).raw
    change(tiny_cnn)
    after = subject.gradcam(images, target=1).raw
    assert subject.cache.stats.hits == 0
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, fresh(tiny_cnn, images, target=1))


def test_images_changed_in_place_are_a_miss(tiny_cnn, images) -> None:
    subject = subject_for(tiny_cnn)
    before = subject.gradcam(images, target=1).raw
    images.mul_(0.5)
    after = subject.gradcam(images, target=1).raw
    assert subject.cache.stats.hits == 0 and not torch.allclose(after, before)
    torch.testing.assert_close(after, fresh(tiny_cnn, images, target=1))


def test_numpy_images_are_named_by_content(tiny_cnn) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    subject = subject_for(tiny_cnn)
    subject.gradcam(pixels)
    subject.gradcam(pixels.copy())  # another array, same content
    assert subject.cache.stats.hits == 1
    pixels[0, 0, 0, 0] ^= 1
    subject.gradcam(pixels)
    assert subject.cache.stats.hits == 1 and subject.cache.stats.misses == 2


def test_preprocess_and_output_selector_are_in_the_key(tiny_cnn, images) -> None:
    subject = subject_for(tiny_cnn)
    subject.gradcam(images, target=1)
    subject.preprocess = ca.normalize(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    normalised = subject.gradcam(images, target=1).raw
    assert subject.cache.stats.hits == 0
    torch.testing.assert_close(normalised, subject_for(tiny_cnn, cache=False, preprocess=subject.preprocess).gradcam(images, target=1).raw)
    subject.output = lambda out: out
    subject.gradcam(images, target=1)
    assert subject.cache.stats.hits == 0


def test_least_recently_used_entries_go_first(tiny_cnn, images) -> None:
    subject = subject_for(tiny_cnn, cache=HeatmapCache(max_entries=2))
    for target in (0, 1, 0, 2):  # 0 is used again before 2 arrives, so 1 is dropped
        subject.gradcam(images, target=target)
    assert subject.cache.stats.entries == 2 and subject.cache.stats.hits == 1
    subject.gradcam(images, target=0)
    assert subject.cache.stats.hits == 2
    subject.gradcam(images, target=1)
    assert subject.cache.stats.hits == 2 and subject.cache.stats.misses == 4


def test_the_byte_bound_holds(tiny_cnn, images) -> None:
    entry = 6 * 8 * 8 * 4 + 6 * 8
    subject = subject_for(tiny_cnn, cache=HeatmapCache(max_bytes=2 * entry))
    for target in range(3):
        subject.gradcam(images, target=target)
    assert subject.cache.stats.entries == 2 and subject.cache.stats.bytes == 2 * entry
    subject.saliency(images)  # (6,8,8) maps too; a request larger than the bound is never stored
    tiny = subject_for(tiny_cnn, cache=HeatmapCache(max_bytes=entry - 1))
    tiny.gradcam(images)
    assert tiny.cache.stats.entries == 0


def test_cache_off_and_clear(tiny_cnn, images) -> None:
    passes = Passes(tiny_cnn)
    off = subject_for(tiny_cnn, cache=False)
    off.gradcam(images)
    off.gradcam(images)
    assert off.cache is None and passes.count == 4
    subject = subject_for(tiny_cnn)
    subject.gradcam(images, target=1)
    # writes through .data bypass version counters: the key cannot see them (documented), clear() can
    tiny_cnn.fc.weight.data.mul_(3.0)
    subject.gradcam(images, target=1)
    assert subject.cache.stats.hits == 1
    subject.cache.clear()
    torch.testing.assert_close(subject.gradcam(images, target=1).raw, fresh(tiny_cnn, images, target=1))
    assert subject.cache.stats.entries == 1


def test_inference_tensors_are_computed_every_time(tiny_cnn) -> None:
    with torch.inference_mode():
        images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    subject = subject_for(tiny_cnn)
    subject.gradcam(images)
    subject.gradcam(images)
    assert subject.cache.stats.hits == 0 and subject.cache.stats.entries == 0


def test_a_copied_subject_starts_empty(tiny_cnn, images) -> None:
    subject = subject_for(tiny_cnn)
    subject.gradcam(images)
    twin = copy.deepcopy(subject)
    assert twin.cache is not subject.cache and twin.cache.stats.entries == 0
    assert twin.cache.max_entries == subject.cache.max_entries


def test_hits_leave_no_tensors_behind(tiny_cnn, images) -> None:
    import gc

    subject = subject_for(tiny_cnn)
    subject.gradcam(images)

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))

    baseline = live_tensors()
    for _ in range(20):
        subject.gradcam(images).maps
    assert live_tensors() == baseline and subject.cache.stats.hits == 20


def test_bad_bounds() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        HeatmapCache(max_entries=0)


class ScaledInput(torch.nn.Module):
    """A forward that reads plain tensor attributes (neither parameters nor buffers)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.scale = torch.tensor(2.0)
        self.shifts = [torch.tensor(-0.3)]  # one container level deep
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU()
        )
        self.fc = torch.nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x * self.scale + self.shifts[0]).mean(dim=(2, 3)))


def _scale_attribute_in_place(model):
    model.scale.mul_(3)


def _reassign_scale_attribute(model):
    model.scale = torch.tensor(5.0)


def _shift_in_list_in_place(model):
    model.shifts[0].add_(0.8)


@pytest.mark.parametrize("change", [_scale_attribute_in_place, _reassign_scale_attribute, _shift_in_list_in_place])
def test_plain_tensor_attributes_are_in_the_key(images, change) -> None:
    model = ScaledInput().eval()
    passes = Passes(model)
    subject = subject_for(model)
    before = subject.gradcam(images, target=1).raw
    computed = passes.count
    torch.testing.assert_close(subject.gradcam(images, target=1).raw, before, rtol=0, atol=0)
    assert subject.cache.stats.hits == 1 and passes.count == computed  # unchanged: a hit, no pass
    change(model)
    after = subject.gradcam(images, target=1).raw
    assert subject.cache.stats.hits == 1 and passes.count > computed
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, fresh(model, images, target=1))
    subject.gradcam(images, target=1)
    assert subject.cache.stats.hits == 2  # the changed model hits again


def test_attribute_tensors_are_found_once_in_order() -> None:
    from cnnaudit.cache import attribute_tensors

    model = ScaledInput()
    shared = torch.ones(1)
    model.fc.table = {"a": shared, "b": torch.zeros(1)}
    model.fc.again = shared
    model.fc.nested = [[torch.zeros(1)]]  # two levels deep: not looked at (documented)
    found = attribute_tensors(model, {id(t) for t in model.parameters()})
    assert [id(t) for t in found] == [id(model.scale), id(model.shifts[0]), id(shared), id(model.fc.table["b"])]
    assert not any(isinstance(t, torch.nn.Parameter) for t in found)
