"""Subject: state restoration, output selectors, devices, batching with OOM halving, clear errors."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import cnnaudit as ca
from cnnaudit import evidence

CAM_METHODS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "scorecam"]
SALIENCY_METHODS = ["guided_backprop", "deconvnet", "guided_gradcam"]


def untidy(model: nn.Module) -> nn.Module:
    """Put the model in a state an audit must not disturb: mixed training flags, some frozen
    parameters, some existing .grad values, a user's own hook."""
    model.train()
    model.features[1].eval()
    model.fc.weight.requires_grad_(False)
    model.features[0].weight.grad = torch.full_like(model.features[0].weight, 0.25)
    model.features[2].register_forward_hook(lambda m, i, o: None)
    return model


def test_every_method_leaves_the_model_as_found(tiny_cnn, images16, snapshot, same_state):
    model = untidy(tiny_cnn)
    before = snapshot(model)
    subject = ca.Subject(model, layer="features.2", device="cpu", batch_size=3)
    for method in CAM_METHODS:
        subject.gradcam(images16, method=method)
    for method in SALIENCY_METHODS:
        subject.saliency(images16, method=method)
    subject.layers()
    assert subject.identity()["parameters"] == sum(p.numel() for p in model.parameters())
    same_state(before, snapshot(model))


class FailsOnSecondBatch(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom in forward")
        return self.inner(x)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "guided_backprop"])
def test_state_restored_after_an_exception_mid_run(tiny_cnn, images16, snapshot, same_state, method):
    model = FailsOnSecondBatch(untidy(tiny_cnn))
    before = snapshot(model)
    subject = ca.Subject(model, layer="inner.features.2", device="cpu", batch_size=2)
    run = subject.saliency if method == "guided_backprop" else subject.gradcam
    with pytest.raises(RuntimeError, match="boom in forward"):
        run(images16, method=method)
    assert model.calls == 2  # the first batch completed, the second raised
    same_state(before, snapshot(model))


def test_outer_no_grad_inference_mode_and_frozen_parameters_give_the_same_maps(tiny_cnn, images16):
    subject = ca.Subject(tiny_cnn, layer="features.2", device="cpu")
    reference = subject.gradcam(images16, target=1).raw
    guided = subject.saliency(images16, target=1).raw
    assert reference.abs().max() > 0 and guided.abs().max() > 0
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            torch.testing.assert_close(subject.gradcam(images16, target=1).raw, reference)
            torch.testing.assert_close(subject.saliency(images16, target=1).raw, guided)
    for p in tiny_cnn.parameters():
        p.requires_grad_(False)
    torch.testing.assert_close(subject.gradcam(images16, target=1).raw, reference)
    assert not any(p.requires_grad for p in tiny_cnn.parameters())


class MultiOutput(nn.Module):
    def __init__(self, inner: nn.Module, kind: str) -> None:
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x):
        logits = self.inner(x)
        return (logits, logits * 0) if self.kind == "tuple" else {"aux": logits * 0, "out": logits}


def test_tuple_and_dict_outputs_need_a_selector(tiny_cnn, images16):
    reference = ca.Subject(tiny_cnn, layer="features.2", device="cpu").gradcam(images16, target=3).raw
    as_tuple = MultiOutput(tiny_cnn, "tuple")
    with pytest.raises(TypeError, match=r"a tuple of 2 .*Subject\(\.\.\., output=0\)"):
        ca.Subject(as_tuple, layer="inner.features.2", device="cpu").gradcam(images16, target=3)
    for output in (0, lambda out: out[0]):
        selected = ca.Subject(as_tuple, layer="inner.features.2", device="cpu", output=output)
        torch.testing.assert_close(selected.gradcam(images16, target=3).raw, reference)
    as_dict = MultiOutput(tiny_cnn, "dict")
    with pytest.raises(TypeError, match=r"a dict with keys \['aux', 'out'\]"):
        ca.Subject(as_dict, layer="inner.features.2", device="cpu").gradcam(images16)
    selected = ca.Subject(as_dict, layer="inner.features.2", device="cpu", output="out")
    torch.testing.assert_close(selected.gradcam(images16, target=3).raw, reference)
    with pytest.raises(ValueError, match="output='logits' does not select"):
        ca.Subject(as_dict, layer="inner.features.2", device="cpu", output="logits").gradcam(images16)


class OOMAbove(nn.Module):
    """Raises CUDA's out-of-memory error for batches larger than ``k`` (runs on the CPU)."""

    def __init__(self, inner: nn.Module, k: int) -> None:
        super().__init__()
        self.inner, self.k, self.sizes = inner, k, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.k:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_out_of_memory_halves_the_batch_and_retries(tiny_cnn, method):
    images = torch.rand(7, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    reference = ca.Subject(tiny_cnn, layer="features.2", device="cpu").gradcam(images, target=2, method=method).raw
    model = OOMAbove(tiny_cnn, k=2)
    heatmaps = ca.Subject(model, layer="inner.features.2", device="cpu", batch_size=5).gradcam(images, target=2, method=method)
    torch.testing.assert_close(heatmaps.raw, reference)
    assert max(model.sizes) == 5 and model.sizes[:3] == [5, 2, 2]  # 5 fails -> halved to 2, kept
    assert all(size <= 2 for size in model.sizes[1:])


def test_out_of_memory_with_a_single_image_is_raised(tiny_cnn, images16):
    with pytest.raises(torch.cuda.OutOfMemoryError):
        ca.Subject(OOMAbove(tiny_cnn, k=0), layer="inner.features.2", device="cpu").gradcam(images16)


class _Discard:
    def observe(self, obj):
        pass


def test_memory_is_flat_over_100_calls(tiny_cnn, images16):
    # cache=False: every call runs the passes (the cache would answer the repeats)
    subject = ca.Subject(tiny_cnn, layer="features.2", device="cpu", batch_size=3, cache=False)

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))

    with evidence.recording(_Discard()):  # independent of any recorder the pytest plugin installs
        for _ in range(10):
            subject.gradcam(images16)
        baseline = live_tensors()
        for call in range(100):
            subject.gradcam(images16) if call % 2 else subject.saliency(images16)
        assert live_tensors() == baseline
    assert all(len(m._forward_hooks) == 0 for m in tiny_cnn.modules())


def test_clear_errors_for_bad_input(tiny_cnn, images16):
    with pytest.raises(ValueError, match=r"class names must be unique, but 'N/A' is repeated .*rename the repeats"):
        ca.Subject(tiny_cnn, classes=["__background__", "person", "N/A", "car", "N/A"], device="cpu")
    subject = ca.Subject(tiny_cnn, layer="features.2", classes=["cat", "dog", "bird", "fish", "frog"], device="cpu")
    with pytest.raises(KeyError, match=r"no layer named 'features.3x' in the model \(did you mean 'features.3', "):
        subject.gradcam(images16, layer="features.3x")
    with pytest.raises(ValueError, match="got 3 targets for 4 images"):
        subject.gradcam(images16, target=[0, 1, 2])
    with pytest.raises(ValueError, match=r"unknown class 'dgo' \(did you mean 'dog'\?\); classes are \['cat', "):
        subject.gradcam(images16, target="dgo")
    with pytest.raises(ValueError, match="class index 7 is out of range"):
        subject.gradcam(images16, target=7)
    with pytest.raises(ValueError, match=r"the model takes 3-channel input, but got 1 channel \(model input of shape \(4, 1, 16, 16\)"):
        subject.gradcam(images16[:, :1])
    with pytest.raises(ValueError, match="channels-last"):
        subject.gradcam(images16.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"uint8 array of shape \(4, 3, 16, 16\) \(channels-first\? permute it to \(\.\.\., H, W, C\)"):
        subject.gradcam((images16 * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="dtype torch.int64"):
        subject.gradcam((images16 * 255).long())
    with pytest.raises(ValueError, match=r"in \[0,1\].*normalize"):
        subject.gradcam(images16 * 255)
    with pytest.raises(ValueError, match="CAM methods need a 4-D"):
        subject.gradcam(images16, layer="fc")
    with pytest.raises(ValueError, match=r"unknown CAM method 'gradcam\+'; choose one of gradcam, gradcam\+\+, xgradcam"):
        subject.gradcam(images16, method="gradcam+")
    with pytest.raises(ValueError, match="one score per row, computed from that row alone"):
        subject.gradcam(images16, target=lambda out: out)
    with pytest.raises(ValueError, match="not a differentiable function of the model output"):
        subject.gradcam(images16, target=lambda out: out.argmax(1).float())
    with pytest.raises(ValueError, match="got no images; pass at least one image"):
        subject.gradcam(images16[:0])
    people = ca.ImageSet(images16, labels=["a", "b", "a", "b"])
    with pytest.warns(UserWarning, match=r"where\(label='c'\) matched none"):
        nobody = people.where(label="c")
    with pytest.raises(ValueError, match=r"got no images \(an empty ImageSet: did a where\(\) match nothing\?\)"):
        subject.gradcam(nobody)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ca.Subject(tiny_cnn, batch_size=0)
    with pytest.raises(TypeError, match="needs a torch.nn.Module"):
        ca.Subject(lambda x: x)


def test_unnamed_classes_and_callable_outputs_for_segmentation(images16):
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.Conv2d(2, 3, 1)).eval()
    subject = ca.Subject(model, device="cpu")
    with pytest.raises(ValueError, match="no names; pass Subject"):
        subject.gradcam(images16, target="cat")
    with pytest.raises(ValueError, match=r"for a segmentation model pass target=cnnaudit.targets.segmentation\(cls, mask=...\)"):
        subject.gradcam(images16, target=0)


def test_devices():
    model = nn.Conv2d(3, 1, 1)
    assert ca.Subject(model, device="auto").device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert ca.Subject(model, device="cpu").device == torch.device("cpu")
    assert ca.Subject(model, device=torch.device("cpu")).device == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device='gpu0' is not a device; use auto, cpu, cuda or cuda:N"):
        ca.Subject(model, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device='cuda:0' but CUDA is not available to torch here; use device='auto'"):
            ca.Subject(model, device="cuda:0")
    else:
        assert ca.Subject(model, device="cuda").device == torch.device("cuda", torch.cuda.current_device())
        count = torch.cuda.device_count()
        with pytest.raises(ValueError, match=rf"device='cuda:{count}' but torch sees {count} GPU\(s\)"):
            ca.Subject(model, device=f"cuda:{count}")


def test_subject_and_plugin_share_one_device_resolver(monkeypatch):
    """Subject(device=...) goes through environment.device_name: 'cuda' is the current GPU outside xdist."""
    from cnnaudit import environment

    assert environment.device_name("cuda", cuda_available=True, device_count=4, current=2) == "cuda:2"
    assert environment.device_name("auto", cuda_available=True, device_count=4, current=2, worker=1) == "cuda:1"
    seen = []
    monkeypatch.setattr(environment, "device_name", lambda spec, **kwargs: seen.append((spec, kwargs["option"])) or "cpu")
    assert ca.Subject(nn.Conv2d(3, 1, 1), device=torch.device("cuda", 1)).device == torch.device("cpu")
    assert seen == [("cuda:1", "device")]


def test_identity_is_stable_and_follows_the_weights(tiny_cnn):
    subject = ca.Subject(tiny_cnn, device="cpu")
    first = subject.identity()
    assert first["class"] == "TinyCNN" and first["parameters"] == 3 * 4 * 9 + 4 + 4 * 6 * 9 + 6 + 2 * 6 + 6 * 5 + 5
    assert len(first["sha256"]) == 64 and subject.identity() == first
    with torch.no_grad():
        tiny_cnn.fc.bias[0] += 1e-3
    assert subject.identity()["sha256"] != first["sha256"]


def test_normalize():
    preprocess = ca.normalize(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    assert repr(preprocess) == "normalize(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))"
    x = torch.ones(1, 3, 2, 2)
    torch.testing.assert_close(preprocess(x)[0, :, 0, 0], torch.tensor([1.0, 3.0, 0.5]))
    with pytest.raises(ValueError, match="std must be positive"):
        ca.normalize((0, 0, 0), (1, 0, 1))
    with pytest.raises(ValueError, match="mean has 2 values and std 3; give one value per image channel"):
        ca.normalize((0, 0), (1, 1, 1))


@dataclass
class Pickled:
    value: int


def test_load_weights(tmp_path, tiny_cnn):
    path = tmp_path / "w.pt"
    torch.save(tiny_cnn.state_dict(), path)
    loaded = ca.load_weights(path)
    assert all(torch.equal(loaded[k], v) for k, v in tiny_cnn.state_dict().items())

    torch.save({"state_dict": tiny_cnn.state_dict(), "epoch": 3}, path)
    with pytest.raises(ValueError, match=r"load_weights\(path, key='state_dict'\)"):
        ca.load_weights(path)
    assert set(ca.load_weights(path, key="state_dict")) == set(tiny_cnn.state_dict())

    torch.save({"w": Pickled(1)}, path)
    with pytest.raises(ValueError, match="holds pickled Python objects.*never runs code") as refused:
        ca.load_weights(path)
    message = str(refused.value)
    assert message.endswith(f"torch said: Unsupported global: GLOBAL {__name__}.Pickled"), message
    assert "\x1b" not in message and "weights_only=False" not in message
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        ca.load_weights(path)


def test_imageset_ids_and_streaming(tiny_cnn, images16):
    images = ca.ImageSet(images16, ids=["a", "b", "c", "d"])
    subject = ca.Subject(tiny_cnn, layer="features.2", device="cpu", batch_size=3)
    heatmaps = subject.gradcam(images, target=1)
    assert heatmaps.ids == ["a", "b", "c", "d"] and heatmaps.images is images
    torch.testing.assert_close(heatmaps.raw, subject.gradcam(images16, target=1).raw)
    assert subject.gradcam(images16).ids == ["0", "1", "2", "3"]
    assert heatmaps.overlay(2).shape == (16, 16, 3)


def test_maximize_delegates_every_keyword_to_the_function(monkeypatch, tiny_cnn):
    import cnnaudit.maximize as maximize_package

    calls = []
    monkeypatch.setattr(maximize_package, "maximize", lambda *args, **kwargs: calls.append((args, kwargs)) or "vis", raising=False)
    subject = ca.Subject(tiny_cnn, device="cpu")
    assert subject.maximize("features.0", steps=3, param="fourier") == "vis"
    assert subject.maximize("features.0", [1, 2]) == "vis"
    assert calls == [((subject, "features.0", "all"), {"steps": 3, "param": "fourier"}),
                     ((subject, "features.0", [1, 2]), {})]  # the defaults are the function's own


def test_predict_is_batched_in_eval_mode_and_leaves_training_mode_alone(images16):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Dropout(0.9), nn.AdaptiveAvgPool2d(1), nn.Flatten()).train()
    subject = ca.Subject(model, device="cpu", batch_size=3)  # 4 images: two batches
    predicted = subject.predict(images16)
    assert model.training and model[1].training  # restored to how it was found
    with torch.no_grad():
        expected = model.eval()(images16)
    model.train()
    torch.testing.assert_close(predicted, expected)  # dropout off: the eval-mode answer
    assert not predicted.requires_grad
    torch.testing.assert_close(subject.predict(ca.ImageSet(images16)), expected)


def test_identity_is_rehashed_only_when_the_model_changes(monkeypatch, tiny_cnn):
    hashed = []
    hash_state = ca.Subject._hash_state
    monkeypatch.setattr(ca.Subject, "_hash_state", lambda self: hashed.append(1) or hash_state(self))
    subject = ca.Subject(tiny_cnn, device="cpu")
    first = subject.identity()
    assert subject.identity() == first and len(hashed) == 1
    with torch.no_grad():
        tiny_cnn.fc.weight.add_(1.0)  # in place: the version counter moves
    second = subject.identity()
    assert second["sha256"] != first["sha256"] and len(hashed) == 2
    tiny_cnn.fc.bias = torch.nn.Parameter(tiny_cnn.fc.bias.detach().clone())  # a new tensor object, same values
    assert subject.identity() == second and len(hashed) == 3
    with torch.no_grad():
        tiny_cnn.fc.weight.sub_(1.0)  # restore the session's model


# ---- issue 16, item 5: clear errors on the rest ------------------------------------------


def test_a_model_built_under_inference_mode_is_refused_and_left_as_found(images16, snapshot, same_state):
    import copy

    from conftest import TinyCNN

    torch.manual_seed(0)
    with torch.inference_mode():
        model = TinyCNN().eval()
        model.fc.weight.requires_grad_(False)  # a mixed state the refusal must not disturb
    before = snapshot(model)
    subject = ca.Subject(model, layer="features.2", device="cpu")
    for run in (subject.gradcam, subject.saliency, subject.predict):
        with pytest.raises(ValueError, match=r"inference tensors .*torch\.inference_mode\(\).*copy\.deepcopy\(model\)"):
            run(images16)
    with pytest.raises(ValueError, match="inference tensors"):
        subject.layers()
    same_state(before, snapshot(model))
    assert [p.requires_grad for p in model.parameters()] == [True] * 4 + [True, True, False, True]
    # the advice works: a deep copy made outside inference_mode audits, with the same maps as a fresh build
    fixed = ca.Subject(copy.deepcopy(model), layer="features.2", device="cpu", cache=False)
    torch.manual_seed(0)
    fresh = ca.Subject(TinyCNN().eval(), layer="features.2", device="cpu", cache=False)
    assert torch.allclose(fixed.gradcam(images16, target=1).raw, fresh.gradcam(images16, target=1).raw)


def test_uninitialised_lazy_modules_are_refused_until_one_forward_pass(images16):
    model = nn.Sequential(nn.LazyConv2d(4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(2))
    subject = ca.Subject(model, device="cpu")
    with pytest.raises(ValueError, match=r"lazy modules that are not initialised yet \('0', '4'\).*run the model once on a real input"):
        subject.gradcam(images16)
    with pytest.raises(ValueError, match="lazy modules"):
        subject.layers()
    with torch.no_grad():
        model(images16)
    assert subject.gradcam(images16, target=1).raw.shape == (4, 16, 16)
    assert subject.layer == "1"


class FixedSize(nn.Module):
    """Flattens a 16x16 feature map into a linear head: any other input size fails in the head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.head = nn.Linear(2 * 16 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def test_a_fixed_size_model_failing_the_224_px_probe_says_to_pass_a_size(images16):
    subject = ca.Subject(FixedSize(), device="cpu")
    with pytest.raises(ValueError, match=r"probe image, which is 224x224 .*mat1 and mat2 .*subject\.layers\(size=\(H, W\)\)"):
        subject.layers()
    with pytest.raises(ValueError, match=r"224x224 .*Subject\(layer=NAME\)"):
        subject.layer
    assert subject.layers(size=(16, 16))["head"].output_shape == (3,)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):  # a size the caller chose: the model's own error
        subject.layers(size=(32, 32))
    assert subject.gradcam(images16).layer == "conv"  # images give the probe their size
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        subject.layers(size=(8, 8))


@pytest.mark.parametrize("target", [np.array(3), np.int64(3), torch.tensor(3), np.array("doctor")])
def test_a_0d_array_or_numpy_scalar_is_one_class_target(tiny_cnn, images16, target):
    subject = ca.Subject(tiny_cnn, layer="features.2", device="cpu", classes=["a", "b", "c", "doctor", "e"])
    assert subject.gradcam(images16, target=target).targets.tolist() == [3, 3, 3, 3]


def test_an_unknown_class_name_among_many_lists_close_matches_and_the_count(images16):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1000))
    classes = [f"class{i}" for i in range(999)] + ["tabby cat"]
    subject = ca.Subject(model, device="cpu", classes=classes)
    with pytest.raises(ValueError) as error:
        subject.gradcam(images16, target="taby cat")
    assert str(error.value) == (
        "unknown class 'taby cat' (did you mean 'tabby cat'?); the subject has 1000 classes (Subject(classes=...)), "
        "see subject.classes"
    )
