"""Session cache of heatmaps: an audit suite that asks again for the same maps gets them without a pass.

``Subject(..., cache=True)`` (the default) keeps the raw maps of recent ``gradcam`` / ``saliency``
calls. The key names everything the maps depend on:

* the model: for each parameter and buffer, and each plain tensor attribute of any of its modules
  (``self.scale = torch.tensor(2.0)``, or a tensor in a list / tuple / dict attribute, one level
  deep), ``(data_ptr, _version)``. Every change made through torch bumps the version counter
  (optimiser steps, ``load_state_dict``, ``reset_parameters``, ``p.mul_(2)`` under ``no_grad``); a
  replaced tensor has another storage. An entry keeps the tensors its key names alive, so no new
  tensor can reuse their addresses while it exists.
* the subject's ``preprocess``, ``output`` selector and the layer's ``reshape`` (by identity);
* what was asked: ``gradcam`` / ``saliency``, the method and the layer;
* the target: the predicted class or the class indices (by value). Requests with a callable
  target are never cached: a callable is only known by identity, and a closure whose captured
  data changed (a mask, a threshold) is the same object, so its old maps would come back stale;
  nor are requests with a ``cnnaudit.targets`` target (their masks and boxes may be tensors changed
  in place, or an ImageSet's regions);
* the images: a tensor by identity, version counter, address, shape, strides, dtype and device; a
  numpy array by content (SHA-1 of its bytes); a list by its items; an ``ImageSet`` by its
  ``size`` and its sources (file paths by value, loaders and in-memory images by identity and
  version), so ``people.where(label="doctor")`` asked for in two tests is the same key.

Hashing tensor contents instead would cost more than the maps: SHA-1 of 64 images of 224x224
takes ~20 ms on a CPU core, several times a GPU's Grad-CAM pass for them.

The key does not see writes that bypass version counters (``tensor.data.<op>_()``, a numpy array
sharing memory with a tensor), image files changed on disk, loaders that return different
images on each call, non-tensor attributes the forward reads (a Python float, a numpy array),
tensors nested deeper than one container level or held outside the model's modules, or hooks and
methods patched onto the model: call ``subject.cache.clear()``
after those, or use ``Subject(cache=False)``. Tensors made under ``torch.inference_mode()`` have
no version counter; requests involving them are not cached.

Entries hold the raw maps (on the device) and the explained classes; the least recently used
are dropped past ``max_entries`` entries or ``max_bytes`` bytes of maps.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable, Hashable, NamedTuple

import torch
from torch import nn

from cnnaudit.attribution.targets import Target
from cnnaudit.images import source_key


class Cached(NamedTuple):
    """What a request computed: signed raw maps ``(N,h,w)``, explained class indices ``(N,)``, the input size, the
    predicted classes ``(N,)`` (``-1`` where the output is not ``(N, classes)``) and how the CAM layer's output was
    read (``"tokens 14x14 +1"``; ``None``: as ``(N,C,h,w)``, or no layer)."""

    raw: torch.Tensor
    targets: torch.Tensor
    size: tuple[int, int]
    predictions: torch.Tensor
    layout: str | None = None


@dataclass(frozen=True)
class Key:
    """A request's hashable ``value`` and the objects whose identities it uses (kept alive with the entry)."""

    value: Hashable
    pins: tuple[Any, ...]


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    bytes: int


class HeatmapCache:
    """Least-recently-used store of :class:`Cached` results by :class:`Key` (see the module docstring)."""

    def __init__(self, max_entries: int = 64, max_bytes: int = 256 * 2**20) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(f"max_entries and max_bytes must be positive, got {max_entries} and {max_bytes}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Cached, tuple[Any, ...], int]] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0

    def __repr__(self) -> str:
        s = self.stats
        return f"HeatmapCache(entries={s.entries}/{self.max_entries}, bytes={s.bytes}/{self.max_bytes}, hits={s.hits}, misses={s.misses})"

    def __deepcopy__(self, memo: dict) -> HeatmapCache:
        """A copy of a subject (``sanity_check`` makes one) starts with an empty cache of the same bounds."""
        return HeatmapCache(self.max_entries, self.max_bytes)

    @property
    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, len(self._entries), self._bytes)

    def get(self, key: Key | None) -> Cached | None:
        """A copy of the result stored under ``key`` (``None`` on a miss; ``key=None``: an uncacheable request)."""
        found = self._entries.get(key.value) if key is not None else None
        if found is None:
            self._misses += 1
            return None
        self._hits += 1
        self._entries.move_to_end(key.value)
        return _copy(found[0])

    def put(self, key: Key | None, result: Cached) -> None:
        """Store a copy of ``result`` (the caller may hand its tensors out), evicting the least recently used."""
        if key is None:
            return
        size = result.raw.numel() * result.raw.element_size() + result.targets.numel() * result.targets.element_size()
        if size > self.max_bytes:
            return
        if key.value in self._entries:
            self._bytes -= self._entries.pop(key.value)[2]
        self._entries[key.value] = (_copy(result), key.pins, size)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._bytes -= self._entries.popitem(last=False)[1][2]

    def clear(self) -> None:
        """Drop every entry (after changes the key cannot see; see the module docstring)."""
        self._entries.clear()
        self._bytes = 0


def _copy(result: Cached) -> Cached:
    return Cached(result.raw.clone(), result.targets.clone(), result.size, result.predictions.clone(), result.layout)


def request_key(model: nn.Module, preprocess: Callable | None, output: Any, what: tuple[str, str, str | None],
                target: Target, images: Any, reshape: Callable | None = None) -> Key | None:
    """The key of ``what`` = (kind, method, layer) for ``target`` and ``images`` as the caller passed them, with
    ``model`` (its state), ``preprocess``, the ``output`` selector and the layer's ``reshape`` as the subject holds
    them; ``None`` if uncacheable."""
    tensors = list(chain(model.parameters(), model.buffers()))
    tensors += attribute_tensors(model, {id(t) for t in tensors})
    image_key, target_value = source_key(images), _target_key(target)
    if image_key is None or target_value is None or any(t.is_inference() for t in tensors):
        return None
    image_value, image_pins = image_key
    model_value = tuple((t.data_ptr(), t._version) for t in tensors)
    value = (what, id(model), model_value, id(preprocess), id(output), id(reshape), target_value, image_value)
    return Key(value, (model, *tensors, preprocess, output, reshape, *image_pins))


_MODULE_STATE = frozenset({"_parameters", "_buffers", "_modules"})


def attribute_tensors(model: nn.Module, known: set[int] | None = None) -> list[torch.Tensor]:
    """The tensors a forward can read that are neither parameters nor buffers: plain tensor attributes of
    every module of ``model`` (``vars(module)``), and tensors in list / tuple / dict attributes one level deep.
    In a fixed order, each once; ``known``: ids of tensors to leave out (the parameters and buffers)."""
    seen = set(known or ())
    found: list[torch.Tensor] = []

    def add(value: Any) -> None:
        if isinstance(value, torch.Tensor) and id(value) not in seen:
            seen.add(id(value))
            found.append(value)

    for module in model.modules():
        for name, value in vars(module).items():
            if name in _MODULE_STATE:
                continue
            if isinstance(value, dict):
                for item in value.values():
                    add(item)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    add(item)
            else:
                add(value)
    return found


def _target_key(target: Target) -> Hashable | None:
    """How the target is named in a key; ``None`` for a callable (see the module docstring)."""
    if target.function is not None or target.per_image is not None:
        return None
    if target.indices is None:
        return ("predicted",)
    return ("indices", target.indices.numpy().tobytes())
