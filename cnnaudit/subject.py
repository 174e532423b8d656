"""``Subject``: the audited model with its preprocessing, device, classes and output selector.

``Subject(model, ...)`` moves ``model`` to the subject's device at construction (``model.to``
works in place: the caller's module object is the one moved). Everything else is left as
found: every attribution runs inside :meth:`Subject.audit`, which switches to eval mode and
freezes parameters for the duration and afterwards restores every module's training flag and
every parameter's ``requires_grad``; parameter values, buffers, ``.grad`` and registered hooks
are never changed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import pickle
import re
import weakref
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from cnnaudit import environment
from cnnaudit import layers as layers_module
from cnnaudit.attribution import cam, guided
from cnnaudit.attribution.targets import Target, parse_target
from cnnaudit.cache import Cached, HeatmapCache, request_key
from cnnaudit.heatmaps import Heatmaps
from cnnaudit.images import ImageSource, TensorImages, as_source, check_value_range, value_range
from cnnaudit.layouts import Reshape

if TYPE_CHECKING:
    from cnnaudit.maximize import Visualizations
    from cnnaudit.regions import Regions

logger = logging.getLogger("cnnaudit")

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_HOOK_EXTRAS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")
_DEFAULT_PROBE_SIZE = (224, 224)
_CLASSES_LISTED = 10
"""An unknown class name lists all class names only up to this many (else close matches and the count)."""
_UNPICKLER_REASON = re.compile(r"WeightsUnpickler error: ([^\n]*?)(?: was not an allowed global|\.?\s*(?:\n|$))")
_ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")
_CONV_CHANNELS = re.compile(r"expected input\[[^\]]*\] to have (\d+) channels, but got (\d+) channels")

BatchWork = Callable[[torch.Tensor, int, int], "tuple[torch.Tensor, torch.Tensor, torch.Tensor, str | None]"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (a GPU when available, else CPU), ``cpu``, ``cuda`` (the current CUDA device) or ``cuda:N``, checked to exist.

    The same resolver as ``--cnnaudit-device`` (:func:`cnnaudit.environment.device_name`); a
    ``torch.device`` is taken by its string (``torch.device("cuda", 1)`` is ``"cuda:1"``).
    """
    return environment.torch_device(str(device) if isinstance(device, torch.device) else device, option="device")


class Normalize:
    """``(x - mean_c) / std_c`` per channel ``c``, on ``x``'s device (constants cached per device and dtype).

    One value per image channel (3 for RGB, 1 for grey, C for C-channel images), or a single value
    applied to every channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean has {len(self.mean)} values and std {len(self.std)}; give one value per image "
                             "channel in both (e.g. 3 for RGB, 1 for grey)")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        self._constants: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.mean) > 1 and (x.ndim != 4 or x.shape[1] != len(self.mean)):
            channels = _count(x.shape[1], "channel") if x.ndim == 4 else f"shape {tuple(x.shape)}"
            raise ValueError(f"normalize has {len(self.mean)} values (mean and std) but the images have {channels}; "
                             "give one mean and one std per image channel")
        key = (x.device, x.dtype)
        if key not in self._constants:
            self._constants[key] = tuple(
                torch.tensor(values, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for values in (self.mean, self.std)
            )
        mean, std = self._constants[key]
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"normalize(mean={self.mean}, std={self.std})"


def normalize(mean: Sequence[float], std: Sequence[float]) -> Normalize:
    """A ``preprocess`` callable mapping ``[0,1]`` images to ``(x - mean) / std`` per channel."""
    return Normalize(mean, std)


def load_weights(path: str | PathLike[str], key: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` loaded with ``torch.load(weights_only=True)``: never unpickles code.

    ``key`` picks a nested entry of a training checkpoint: ``key="state_dict"``, or a dotted path
    such as ``key="model.state_dict"``. An empty, truncated or foreign file is a ``ValueError`` that
    says so, as is a file holding pickled objects besides tensors.
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):
            detail = str(error).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
            raise ValueError(f"{path} is not a torch checkpoint: its bytes do not unpickle "
                             f"({detail[0] if detail else 'unreadable'}); pass a file written by torch.save") from None
        raise ValueError(
            f"{path} holds pickled Python objects, not only tensors, so it was not loaded (weights_only=True never "
            "runs code from a file). Save the weights alone: torch.save(model.state_dict(), path). "
            f"torch said: {_unpickling_reason(str(error))}"
        ) from error
    except (EOFError, RuntimeError, OSError) as error:
        if isinstance(error, OSError) and error.errno != errno.EINVAL:
            raise  # a missing or unreadable file says so itself
        what = "it is empty" if Path(path).stat().st_size == 0 else "it is truncated or was not written by torch.save"
        reason = _ANSI_CODE.sub("", str(error)).strip().splitlines()
        raise ValueError(f"{path} cannot be loaded: {what} ({reason[0].split('. ')[0] if reason else type(error).__name__}); "
                         "save the weights again with torch.save(model.state_dict(), path)") from None
    if key is not None:
        loaded = _entry(loaded, key, path)
    if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()):
        found = _state_dict_path(loaded)
        hint = f"; it looks like a checkpoint, pick the weights with load_weights(path, key={found!r})" if found else ""
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict of name -> tensor{hint}")
    return loaded


def _entry(loaded: Any, key: str, path: str | PathLike[str]) -> Any:
    """``loaded[key]``, else the entry at the dotted path ``key``; ``ValueError`` listing the keys where it stops."""
    if isinstance(loaded, dict) and key in loaded:
        return loaded[key]
    here: Any = loaded
    for depth, part in enumerate(key.split(".")):
        if not isinstance(here, dict) or part not in here:
            where = "at the top level" if depth == 0 else f"under {'.'.join(key.split('.')[:depth])!r}"
            keys = sorted(map(str, here)) if isinstance(here, dict) else []
            raise ValueError(f"{path} has no entry {key!r}: no {part!r} {where}, whose keys are {keys}")
        here = here[part]
    return here


def _state_dict_path(value: Any, prefix: str = "", depth: int = 3) -> str | None:
    """The dotted path of the first nested name -> tensor dict inside ``value`` (up to ``depth`` levels), if any."""
    if not isinstance(value, dict) or depth == 0:
        return None
    for name, inner in value.items():
        path = f"{prefix}{name}"
        if isinstance(inner, dict) and inner and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in inner.items()):
            return path
        found = _state_dict_path(inner, f"{path}.", depth - 1)
        if found:
            return found
    return None


def _unpickling_reason(message: str) -> str:
    """What the weights-only unpickler refused (``Unsupported global: GLOBAL module.Class``), without
    torch's advice to load unsafely; else torch's first line with terminal colour codes removed."""
    found = _UNPICKLER_REASON.search(message)
    if found:
        return found.group(1)
    lines = _ANSI_CODE.sub("", message).strip().splitlines()
    return lines[0].strip() if lines else ""


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a dict with keys {list(value)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(_describe(v) for v in value)})"
    return f"a {type(value).__name__}"


def _hook_keys(modules: list[nn.Module]) -> list[dict[str, set[int]]]:
    return [{name: set(getattr(m, name, {})) for name in _HOOK_DICTS} for m in modules]


def _remove_new_hooks(modules: list[nn.Module], before: list[dict[str, set[int]]]) -> int:
    """Remove hooks registered since ``before``; return how many there were."""
    removed = 0
    for module, known in zip(modules, before):
        for name in _HOOK_DICTS:
            hooks = getattr(module, name, {})
            for key in set(hooks) - known[name]:
                del hooks[key]
                for extra in _HOOK_EXTRAS:
                    getattr(module, extra, {}).pop(key, None)
                removed += 1
    return removed


class Subject:
    """An audited model: ``model`` + ``preprocess`` + ``device`` + ``classes`` + output selector.

    ``layer``: the default CAM layer, a ``named_modules()`` name or ``"auto"`` (resolved on first
    use by :func:`cnnaudit.layers.auto_layer` from a probe pass at the size of the first images
    (224x224 if read before any); the choice is logged on the ``cnnaudit`` logger and kept in
    ``subject.layer``). ``output``: for models returning a tuple / dict, the index, key or
    callable choosing the tensor that targets read (the targets of :mod:`cnnaudit.targets` read a dict or
    list output as it is, without it). ``batch_size`` caps the images in one pass;
    on CUDA out-of-memory the pass is retried with half as many. ``cache``: keep recent maps so
    a repeated request (same model state, layer, method, target and images) costs no pass;
    requests with a callable or :mod:`cnnaudit.targets` target are always computed (see :mod:`cnnaudit.cache`). ``False``
    turns it off, a :class:`~cnnaudit.cache.HeatmapCache` sets its bounds. ``subject.cache`` is
    the cache (``None`` when off). ``image_channels``: how many channels the images have (before
    ``preprocess``), for maximisation and the layer probe; needed only when ``preprocess`` changes
    the channel count (see :attr:`image_channels`). Model input is cast to the model's floating
    dtype after ``preprocess`` (:func:`model_dtype`); maps are float32 whatever that dtype.
    ``reshape``: how CAM layers' outputs become ``(N, C, h, w)``, a function ``(output, (H, W) of the model
    input) -> (N, C, h, w)`` used for every layer, or a dict ``{layer name: function}`` (other layers
    inferred); it may only select and rearrange elements (checked). Without it, token grids ``(N, T, C)``
    and channels-last ``(N, h, w, C)`` outputs are recognised where unambiguous (:mod:`cnnaudit.layouts`).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module = "auto",
        classes: Sequence[str] | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: str | torch.device = "auto",
        batch_size: int = 32,
        output: int | str | Callable[[Any], torch.Tensor] | None = None,
        cache: bool | HeatmapCache = True,
        image_channels: int | None = None,
        reshape: Reshape | Mapping[str, Reshape] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Subject needs a torch.nn.Module, got {type(model).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if image_channels is not None and (isinstance(image_channels, bool) or not isinstance(image_channels, int)
                                           or image_channels < 1):
            raise ValueError(f"image_channels must be a positive int (3 for RGB, 1 for grey), got {image_channels!r}")
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.classes = [str(c) for c in classes] if classes is not None else None
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            repeated = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise ValueError(
                f"class names must be unique, but {', '.join(map(repr, repeated[:5]))} "
                f"{'is' if len(repeated) == 1 else 'are'} repeated (e.g. COCO's unused 'N/A' slots); rename the "
                "repeats, e.g. classes=[c if c != 'N/A' else f'N/A {i}' for i, c in enumerate(classes)]"
            )
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.output = output
        self._layer = None if isinstance(layer, str) and layer == "auto" else self._layer_name(layer)
        self._probe_size: tuple[int, int] | None = None
        self._channels_given = image_channels
        self._channels_seen: int | None = None
        self.cache: HeatmapCache | None = cache if isinstance(cache, HeatmapCache) else HeatmapCache() if cache else None
        self.reshape = self._checked_reshape(reshape)

    def __repr__(self) -> str:
        layer = self._layer if self._layer is not None else "auto"
        return (
            f"Subject({type(self.model).__name__}, layer={layer!r}, device={str(self.device)!r}, "
            f"classes={None if self.classes is None else len(self.classes)}, batch_size={self.batch_size})"
        )

    # ---- state --------------------------------------------------------------------------
    @contextlib.contextmanager
    def audit(self) -> Iterator["Subject"]:
        """Eval mode, frozen parameters and gradients enabled (even under ``no_grad`` / ``inference_mode``).

        Afterwards every module's training flag and every parameter's ``requires_grad`` are
        restored, also when the block raises. Hooks registered inside and not removed are removed
        and reported as a ``RuntimeError`` (a bug in the code that registered them).
        """
        _check_usable(self.model)  # before anything is changed: a refused model is left exactly as found
        modules = list(self.model.modules())
        training = [m.training for m in modules]
        parameters = list(self.model.parameters())
        requires_grad = [p.requires_grad for p in parameters]
        hooks_before = _hook_keys(modules)
        try:
            if any(training):
                self.model.eval()
            for parameter in parameters:
                parameter.requires_grad_(False)
            with torch.inference_mode(False), torch.enable_grad():
                yield self
        finally:
            for module, flag in zip(modules, training):
                if module.training != flag:  # setting through nn.Module.__setattr__ is slow; most flags never changed
                    module.training = flag
            for parameter, flag in zip(parameters, requires_grad):
                parameter.requires_grad_(flag)
            leaked = _remove_new_hooks(modules, hooks_before)
        if leaked:
            raise RuntimeError(f"{leaked} hook(s) registered during the audit were not removed; they have been removed now")

    def identity(self) -> dict[str, Any]:
        """``{"class", "parameters", "sha256"}``: the model class, its parameter count and a hash of its state dict.

        Hashing a large model's state takes a while, so the result is reused while the state tensors are
        the same objects with the same version counters (``Tensor._version`` counts in-place changes:
        optimiser steps, ``load_state_dict``).
        """
        tensors = list(self.model.state_dict(keep_vars=True).values())
        versions = [t._version for t in tensors]
        known = getattr(self, "_identity", None)
        if known is not None:
            refs, known_versions, described = known
            if known_versions == versions and len(refs) == len(tensors) and all(r() is t for r, t in zip(refs, tensors)):
                return dict(described)
        described = self._hash_state()
        self._identity = ([weakref.ref(t) for t in tensors], versions, described)
        return dict(described)

    def _hash_state(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for name, tensor in self.model.state_dict().items():
            tensor = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
        return {
            "class": type(self.model).__name__,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "sha256": digest.hexdigest(),
        }

    # ---- forward ------------------------------------------------------------------------
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """``preprocess(x)`` for ``[0,1]`` images ``x`` on the device (identity without a preprocess), cast to the
        model's floating dtype (:func:`model_dtype`) when it is floating point. Gradients flow through the cast,
        so the images (and their gradients) stay float32 whatever the model's precision."""
        model_input = self.preprocess(x) if self.preprocess is not None else x
        dtype = model_dtype(self.model)
        return model_input.to(dtype) if model_input.is_floating_point() and model_input.dtype != dtype else model_input

    def forward(self, model_input: torch.Tensor, *, any_output: bool = False) -> Any:
        """The model on an already preprocessed input, through the output selector (``any_output``: see
        :meth:`select_output`). Input whose channel count the model's first convolution does not take is a
        ``ValueError`` naming both counts."""
        try:
            output = self.model(model_input)
        except RuntimeError as error:
            mismatch = _channel_mismatch(error, model_input)
            if mismatch is None:
                raise
            raise ValueError(mismatch) from error
        return self.select_output(output, any_output=any_output)

    def logits(self, x: torch.Tensor, *, any_output: bool = False) -> Any:
        """preprocess + forward + output selector for ``[0,1]`` images ``(N,C,H,W)`` on the device."""
        return self.forward(self.prepare(x), any_output=any_output)

    def predict(self, images: Any) -> torch.Tensor:
        """The selected model output (e.g. logits ``(N, K)``) for ``images``, on the device.

        Batched by ``batch_size``, in eval mode and without gradients inside :meth:`audit`, so a
        model left in training mode still gives its eval-mode answer and is restored afterwards. The
        output is in the model's dtype (float64 for a float64 model).
        """
        source = as_source(images, keep_device=False, check_range=True)
        if len(source) == 0:
            raise ValueError("predict() got no images (an empty batch or selection); pass at least one image")
        with self.audit(), torch.no_grad():
            return torch.cat([self.logits(batch.to(self.device)) for _, batch in source.batches(self.batch_size)])

    def select_output(self, output: Any, *, any_output: bool = False) -> Any:
        """The tensor targets read from the raw model output (see ``Subject(output=...)``).

        ``any_output=True`` (for the targets of :mod:`cnnaudit.targets`, which read segmentation dicts and
        detection lists): without ``Subject(output=...)`` a non-tensor output is returned as it is.
        """
        if self.output is None:
            if isinstance(output, torch.Tensor) or any_output:
                return output
            raise TypeError(
                f"the model returned {_describe(output)}; say which entry holds the scores with "
                "Subject(..., output=0), output='logits' (a key) or output=lambda out: ... (a callable); to explain a "
                "segmentation or detection model, give gradcam() / saliency() a target of cnnaudit.targets instead, "
                "which reads the output as it is"
            )
        if callable(self.output):
            selected = self.output(output)
        else:
            try:
                selected = output[self.output]
            except (KeyError, IndexError, TypeError) as error:
                raise ValueError(f"output={self.output!r} does not select from {_describe(output)}") from error
        if not isinstance(selected, torch.Tensor):
            raise TypeError(f"output={self.output!r} selected {_describe(selected)}, not a tensor")
        return selected

    # ---- layers and classes -------------------------------------------------------------
    def reshape_for(self, layer: str) -> Reshape | None:
        """The ``reshape`` function for ``layer`` (``Subject(reshape=...)``), or ``None``: its layout is inferred."""
        if isinstance(self.reshape, Mapping):
            return self.reshape.get(layer)
        return self.reshape

    def _checked_reshape(self, reshape: Reshape | Mapping[str, Reshape] | None) -> Reshape | Mapping[str, Reshape] | None:
        """``reshape`` checked: ``None``, a callable, or a mapping of known layer names to callables (kept as a
        copy: changing the caller's dict afterwards changes nothing)."""
        if reshape is None or callable(reshape):
            return reshape
        if not isinstance(reshape, Mapping):
            raise TypeError(f"reshape must be a function (output, input_size) -> (N, C, h, w) or a dict {{layer name: "
                            f"function}}, got {type(reshape).__name__}")
        for name, function in reshape.items():
            self.module(name)  # KeyError with close matches for an unknown layer
            if not callable(function):
                raise TypeError(f"reshape[{name!r}] must be a function (output, input_size) -> (N, C, h, w), "
                                f"got {type(function).__name__}")
        return dict(reshape)

    def module(self, name: str) -> nn.Module:
        """The submodule ``name`` (as in ``named_modules()``); ``KeyError`` listing close matches otherwise."""
        return layers_module.resolve_layer(self.model, name)

    def _layer_name(self, layer: str | nn.Module) -> str:
        if isinstance(layer, nn.Module):
            return layers_module.layer_name(self.model, layer)
        self.module(layer)
        return layer

    @property
    def image_channels(self) -> int:
        """How many channels this subject's images have (before ``preprocess``): ``Subject(image_channels=...)``,
        else those of the last images audited, else the first ``nn.Conv2d``'s ``in_channels``, else 3.

        Maximisation makes images with this many channels and the layer probe is such an image; a
        ``preprocess`` that changes the channel count (grey to RGB) needs ``image_channels`` before any
        images were audited.
        """
        if self._channels_given is not None:
            return self._channels_given
        if self._channels_seen is not None:
            return self._channels_seen
        first = next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
        return 3 if first is None else first.in_channels

    def _probe(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        height, width = size or self._probe_size or _DEFAULT_PROBE_SIZE
        return self.prepare(torch.full((1, self.image_channels, height, width), 0.5, device=self.device))

    def _probe_events(self, probe_input: torch.Tensor, size: tuple[int, int] | None, hint: str) -> list:
        """``layers.probe`` (call inside :meth:`audit`); a model failing on the default 224x224 probe says so."""
        try:
            return layers_module.probe(self.model, probe_input)
        except (RuntimeError, ValueError) as error:
            mismatch = _channel_mismatch(error, probe_input)
            if mismatch is not None:
                raise ValueError(f"{mismatch}; the layer probe is a uniform image of subject.image_channels = "
                                 f"{self.image_channels}") from error
            if size is not None or self._probe_size is not None:
                raise
            first = str(error).strip().splitlines()
            height, width = _DEFAULT_PROBE_SIZE
            raise ValueError(
                f"the model failed on the probe image, which is {height}x{width} because no images were seen yet "
                f"({type(error).__name__}: {first[0] if first else ''}); if the model needs another input size, {hint}"
            ) from error

    @property
    def layer(self) -> str:
        """The default CAM layer's name (``"auto"`` resolved on first use, see the class docstring)."""
        if self._layer is None:
            with self.audit():
                probe_input = self._probe()
                events = self._probe_events(
                    probe_input, None, "pass Subject(layer=NAME) (names from subject.layers(size=(H, W))), or read "
                    "subject.layer after a first gradcam() call, which probes at the size of its images")
                picked = layers_module.auto_layer(self.model, probe_input, events)
                self._layer = layers_module.token_layer(self.model, probe_input, events, picked) or picked
            why = ("the first norm of the last transformer block, whose patch tokens reach the head"
                   if self._layer != picked else "the last module with a 4-D output before global pooling")
            logger.info("layer='auto' picked %r: %s (%s)", self._layer, why, type(self.module(self._layer)).__name__)
        return self._layer

    def layers(self, size: tuple[int, int] | None = None) -> layers_module.LayerInventory:
        """Inventory of every submodule (name, type, parameters, channels, output shape, layout) from one probe pass.

        ``size`` is the probe image's ``(H, W)``; default: the size of the last images seen, else 224x224.
        The inventory's ``input_size`` (its first line when printed) is the model input the output
        shapes are for, e.g. ``(3, 224, 224)``. Layers a CAM reads other than as ``(N, C, h, w)`` are
        marked (``LayerInfo.layout``: ``"tokens 14x14 +1"``, ``"channels-last 7x7"``, ``"reshape"``).
        """
        with self.audit():
            probe_input = self._probe(size)
            events = self._probe_events(probe_input, size, "pass it: subject.layers(size=(H, W))")
            return layers_module.layer_inventory(
                self.model, probe_input, events, reshaped=lambda name: self.reshape_for(name) is not None)

    def class_index(self, target: int | str) -> int:
        """Class index of a class name (``Subject(classes=...)``) or a checked class index."""
        if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
            index = int(target)
            if index < 0 or (self.classes is not None and index >= len(self.classes)):
                bound = f" 0..{len(self.classes) - 1}" if self.classes is not None else " non-negative"
                raise ValueError(f"class index {index} is out of range; expected{bound}")
            return index
        if isinstance(target, str):
            if self.classes is None:
                raise ValueError(f"target {target!r} is a class name, but the subject has no names; pass Subject(classes=[...])")
            if target not in self.classes:
                close = layers_module.close_matches(target, self.classes)
                if len(self.classes) <= _CLASSES_LISTED:
                    known = f"classes are {self.classes}"
                else:
                    known = f"the subject has {len(self.classes)} classes (Subject(classes=...)), see subject.classes"
                raise ValueError(f"unknown class {target!r}{close}; {known}")
            return self.classes.index(target)
        raise TypeError(f"a class target must be an int index or a str name, got {type(target).__name__}")

    # ---- attribution --------------------------------------------------------------------
    def gradcam(
        self, images: Any, target: Any = None, layer: str | nn.Module | None = None, method: str = "gradcam"
    ) -> Heatmaps:
        """Grad-CAM-family heatmaps (``method`` in gradcam, gradcam++, xgradcam, layercam, hirescam, eigencam, scorecam).

        ``target``: ``None`` (the predicted class), a class index or name, one of those per image,
        or a callable. A callable target receives the model output for some rows and must return
        one score per row, computed from that row alone: it sees one batch at a time without its
        offset in the set, and for Score-CAM masked copies of the images, so it must not index
        per-image data of the whole set. Its result is checked to be a 1-D tensor with one value
        per row; its scores must be differentiable in the output (gradient methods). For per-image data
        use a target of :mod:`cnnaudit.targets` (segmentation masks, detection boxes); an image whose
        target is undefined there (no matching detection) gets an all-zero map, so its metrics are NaN.
        """
        cam.check_method(method)
        with self.audit():
            source = self._source(images)
            spec = parse_target(target, len(source), self.class_index, _region_lookup(source))
            layer_name = self._layer_for(layer, source)
            raw, targets, size, predictions, layout = self._cached(
                ("gradcam", method, layer_name), spec, source,
                lambda: self._run(source, lambda x, start, limit: cam.cam_batch(self, x, spec, start, layer_name, method, limit)),
            )
        _log_layout(layer_name, layout)
        return Heatmaps(
            raw, image_size=size, method=method, layer=layer_name, targets=targets, images=_shown(source),
            ids=list(source.ids), subject=self, predictions=predictions, layout=layout,
        )

    def saliency(
        self, images: Any, target: Any = None, method: str = "guided_backprop", layer: str | nn.Module | None = None
    ) -> Heatmaps:
        """Input-gradient maps (``method`` in guided_backprop, deconvnet, guided_gradcam; ``layer`` for the latter).

        ``target`` as for :meth:`gradcam` (the same contract for a callable target).
        """
        if method not in guided.METHODS:
            raise ValueError(f"unknown saliency method {method!r}; choose one of {', '.join(guided.METHODS)}")
        with self.audit():
            source = self._source(images)
            spec = parse_target(target, len(source), self.class_index, _region_lookup(source))
            layer_name = self._layer_for(layer, source) if method == "guided_gradcam" else None
            raw, targets, size, predictions, layout = self._cached(
                ("saliency", method, layer_name), spec, source,
                lambda: self._run(source, lambda x, start, limit: self._saliency_batch(x, spec, start, method, layer_name)),
            )
        if layer_name is not None:
            _log_layout(layer_name, layout)
        return Heatmaps(
            raw, image_size=size, method=method, layer=layer_name or "input", targets=targets, images=_shown(source),
            ids=list(source.ids), subject=self, predictions=predictions, layout=layout,
        )

    def _saliency_batch(
        self, x: torch.Tensor, spec: Target, start: int, method: str, layer_name: str | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str | None]:
        """``guided.saliency_batch``; a failure caused by a forward that cuts the graph (``no_grad`` inside) says so."""
        try:
            return guided.saliency_batch(self, x, spec, start, method, layer_name)
        except ValueError as error:
            if cam.forward_cuts_graph(self, x, spec.reads_any_output):
                raise ValueError(cam.graph_cut_message("the input image")) from error
            raise

    def maximize(self, layer: str | nn.Module | None, channels: Any = "all", **settings: Any) -> Visualizations:
        """Activation maximisation of this subject's units: ``cnnaudit.maximize.maximize(self, layer, channels,
        **settings)``; every keyword (``objective``, ``steps``, ``size``, ``seed``, ``param``, ...) and its
        default is that function's, declared there once."""
        from cnnaudit import maximize

        return maximize.maximize(self, layer, channels, **settings)

    # ---- batching -----------------------------------------------------------------------
    def _cached(self, what: tuple[str, str, str | None], target: Target, source: ImageSource,
                compute: Callable[[], Cached]) -> Cached:
        """``compute()``, or its result for the same request from the cache (keyed by the images as passed)."""
        if self.cache is None:
            return compute()
        reshape = self.reshape_for(what[2]) if what[2] is not None else None
        key = request_key(self.model, self.preprocess, self.output, what, target, source, reshape)
        result = self.cache.get(key)
        if result is None:
            result = compute()
            self.cache.put(key, result)
        return result

    @staticmethod
    def _source(images: Any) -> ImageSource:
        """The images with one face (:func:`cnnaudit.images.as_source`): an ImageSet as is (it streams),
        anything else converted once, left on its device; its values are checked batch by batch on the
        device by :meth:`_run`."""
        source = as_source(images)
        if len(source) == 0:
            if isinstance(source, TensorImages):
                raise ValueError("got no images; pass at least one image")
            raise ValueError("got no images (an empty ImageSet: did a where() match nothing?); pass at least one image")
        return source

    def _layer_for(self, layer: str | nn.Module | None, source: ImageSource) -> str:
        if layer is not None:
            return self._layer_name(layer)
        if self._layer is None:
            height, width = source.image_size  # type: ignore[attr-defined]  # both forms have it; not in the runtime protocol
            self._probe_size = (int(height), int(width))
            self._channels_seen = int(next(source.batches(1))[1].shape[1])  # the probe is such an image (one loaded)
        return self.layer

    def _run(self, source: ImageSource, work: BatchWork) -> Cached:
        """Run ``work(x, start, limit)`` over ``images`` (call inside :meth:`audit`); concatenate maps, targets and
        predictions (the layer's layout is the same for every batch of one image size: the last is kept).

        At most ``limit`` (initially ``batch_size``) images go through the model at once; on CUDA
        out-of-memory the chunk is retried with half as many, and the smaller limit is kept.
        Nothing is read back to the host per batch: the value ranges of tensor inputs are kept on
        the device and checked once at the end, with the explained classes.
        """
        maps: list[torch.Tensor] = []
        classes: list[torch.Tensor] = []  # per batch (2, B): explained and predicted classes
        ranges: list[torch.Tensor] = []
        check = isinstance(source, TensorImages)  # ImageSet images were checked when loaded
        size, channels = (0, 0), 0
        layout: str | None = None
        limit = self.batch_size
        for start, batch in source.batches(self.batch_size):
            size, channels = (batch.shape[-2], batch.shape[-1]), batch.shape[1]
            offset = 0
            while offset < batch.shape[0]:
                chunk = batch[offset : offset + limit].to(self.device, non_blocking=True)
                if chunk.is_inference():  # made under the caller's torch.inference_mode()
                    chunk = chunk.clone()
                if check:
                    ranges.append(value_range(chunk))
                try:
                    result = work(chunk, start + offset, limit)
                except torch.cuda.OutOfMemoryError:
                    if chunk.shape[0] == 1:
                        raise
                    result = None
                if result is None:  # retried outside the except block, so the failed pass's tensors are freed
                    limit = chunk.shape[0] // 2
                    logger.warning("CUDA out of memory with %d images per pass; retrying with %d", chunk.shape[0], limit)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                maps.append(result[0])
                classes.append(torch.stack(result[1:3]))
                layout = result[3]
                offset += chunk.shape[0]
        if ranges:
            check_value_range(torch.stack(ranges))
        self._probe_size, self._channels_seen = size, channels
        targets, predictions = torch.cat(classes, dim=1).cpu()  # one host read for both
        return Cached(torch.cat(maps), targets, size, predictions, layout)


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype model input is cast to: that of the model's first floating-point parameter or buffer, else float32."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _count(n: int, noun: str) -> str:
    """``"1 channel"``, ``"3 channels"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _channel_mismatch(error: BaseException, model_input: torch.Tensor) -> str | None:
    """The explanation of a convolution's channel-count error caused by ``model_input`` itself, else ``None``
    (an error inside the model, between two of its layers, is the model's own)."""
    found = _CONV_CHANNELS.search(str(error))
    if found is None or model_input.ndim != 4 or int(found.group(2)) != model_input.shape[1]:
        return None
    want, got = int(found.group(1)), int(found.group(2))
    layouts = {1: "grey: float (N,1,H,W), uint8 (H,W), ImageSet(..., channels=1)", 3: "RGB: float (N,3,H,W), uint8 (H,W,3)"}
    return (
        f"the model takes {want}-channel input, but got {_count(got, 'channel')} (model input of shape "
        f"{tuple(model_input.shape)}, after preprocess); pass {want}-channel images "
        f"({layouts.get(want, f'float (N,{want},H,W)')}), or a preprocess that makes {want}-channel input of yours "
        "(then say how many your images have: Subject(..., image_channels=C))"
    )


def _check_usable(model: nn.Module) -> None:
    """``ValueError`` for a model no gradient can pass through: lazy modules not yet initialised, or
    parameters / buffers that are inference tensors (the model was built under ``torch.inference_mode()``)."""
    lazy = [name for name, p in model.named_parameters() if nn.parameter.is_lazy(p)]
    lazy += [name for name, b in model.named_buffers() if nn.parameter.is_lazy(b)]
    if lazy:
        modules = sorted({name.rsplit(".", 1)[0] if "." in name else "(the model)" for name in lazy})
        raise ValueError(
            f"the model has lazy modules that are not initialised yet ({', '.join(map(repr, modules[:3]))}"
            f"{f' and {len(modules) - 3} more' if len(modules) > 3 else ''}): nn.LazyConv2d / nn.LazyLinear create "
            "their parameters in the first forward pass; run the model once on a real input first "
            "(with torch.no_grad(): model(x), x a batch of the size you audit)"
        )
    tensors = [*model.named_parameters(), *model.named_buffers()]
    inference = [name for name, t in tensors if t.is_inference()]
    if inference:
        raise ValueError(
            f"the model holds inference tensors ({len(inference)} of its {len(tensors)} parameters and buffers, e.g. "
            f"{inference[0]!r}): it was built or loaded under torch.inference_mode(), and no gradient can pass through "
            "them; build the model outside inference_mode, or audit model = copy.deepcopy(model) (a copy made outside "
            "inference_mode holds ordinary tensors). The model was left unchanged"
        )


def _region_lookup(source: ImageSource) -> Callable[[str], Regions] | None:
    """``source.region`` for an ImageSet (region names in ``cnnaudit.targets`` targets), else ``None``."""
    region = getattr(source, "region", None)
    return region if callable(region) else None


def _log_layout(layer: str, layout: str | None) -> None:
    """Say on the ``cnnaudit`` logger how a CAM layer's output was read when it was not ``(N, C, h, w)`` as is."""
    if layout is not None:
        logger.info("layer %r: output read as (N, C, h, w) from %s%s (Heatmaps.layout)", layer, layout,
                    ", the leading tokens dropped" if layout.startswith("tokens") and not layout.endswith("+0") else "")


def _shown(source: ImageSource) -> Any:
    """What ``Heatmaps.images`` holds: an ImageSet as is, converted images as their tensor."""
    return source.tensor() if isinstance(source, TensorImages) else source
