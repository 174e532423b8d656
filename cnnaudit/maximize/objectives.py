"""What is maximised: one scalar per (image, unit), computed from a captured layer output.

Every objective has two readings of the same formula:

* ``paired(out)``  — image ``k`` scored on unit ``k`` (the optimisation batch), shape ``(K,)``;
* ``matrix(out)``  — every image scored on every unit, ``(M, K)``;
* ``reference(out)`` — what a real image offers each unit (``relative_to``, ``liveness``): ``matrix``,
  but a neuron at the strongest position of its channel (the best real patch).

Formulas, with ``a`` the layer output of one image (``(C,h,w)`` or ``(C,)``; a token grid or channels-last
output is first read as ``(C,h,w)`` by ``Objective.read``, see :mod:`cnnaudit.layouts`, so a channel is a
feature dimension ``C`` over the grid):

* ``channel``   — ``mean_{y,x} a[c, y, x]`` (``a[c]`` for a ``(C,)`` output);
* ``neuron``    — ``a[c, h//2 + dy, w//2 + dx]`` (``offset=(dy, dx)`` from the map's centre, so the
  same unit is meant whatever the input size or padding);
* ``logit``     — the model output ``z[c]`` before softmax (softmax could be raised by lowering
  the other classes);
* ``direction`` — ``mean_{y,x} sum_c d[c] a[c, y, x]`` for a vector ``d`` in channel space.
"""

from __future__ import annotations

import dataclasses
import operator
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

KINDS = ("channel", "neuron", "logit", "direction")


@dataclass(frozen=True, eq=False)
class Objective:
    """One unit per optimised image; ``keys[k]`` seeds image ``k``'s random stream."""

    kind: str
    units: tuple[int, ...]
    labels: tuple[str, ...]
    keys: tuple[int, ...]
    offset: tuple[int, int] = (0, 0)
    directions: torch.Tensor | None = None  # (K, C) for kind == "direction"
    read: Callable[[torch.Tensor], torch.Tensor] | None = None  # the layer output as (N, C, h, w); None: as it is

    def layer_map(self, out: torch.Tensor) -> torch.Tensor:
        """The layer output ``out`` as ``(N, C, h, w)`` (or ``(N, C)``): ``read(out)``, else ``out`` as it is."""
        return self.read(out) if self.read is not None else out

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, positions: Sequence[int]) -> Objective:
        """The same objective for units ``positions`` (indices into ``units``), keys unchanged."""
        positions = list(positions)
        directions = self.directions[positions] if self.directions is not None else None
        return dataclasses.replace(self, units=tuple(self.units[k] for k in positions),
                                   labels=tuple(self.labels[k] for k in positions),
                                   keys=tuple(self.keys[k] for k in positions), directions=directions)

    def paired(self, out: torch.Tensor) -> torch.Tensor:
        """Objective of image ``k`` on unit ``k``: ``(K,)`` from a ``(K, ...)`` output."""
        out = self.layer_map(out)
        if self.kind == "direction":
            d = self.directions.to(out.device, out.dtype)
            return _spatial_mean(torch.einsum("kc...,kc->k...", out, d), 1)
        rows = torch.arange(out.shape[0], device=out.device)
        return self._reduce(out[rows, list(self.units)], 1)

    def matrix(self, out: torch.Tensor) -> torch.Tensor:
        """Objective of every image on every unit: ``(M, K)`` from an ``(M, ...)`` output."""
        out = self.layer_map(out)
        if self.kind == "direction":
            d = self.directions.to(out.device, out.dtype)
            return _spatial_mean(torch.einsum("mc...,kc->mk...", out, d), 2)
        return self._reduce(out[:, list(self.units)], 2)

    def reference(self, out: torch.Tensor) -> torch.Tensor:
        """What a real image offers each unit, ``(M, K)``: :meth:`matrix`, except that a neuron is
        measured at the strongest position of its channel (the best real patch: a neuron sees a patch,
        and the same filter at another position is the same unit on a shifted image)."""
        if self.kind != "neuron":
            return self.matrix(out)
        selected = self.layer_map(out)[:, list(self.units)]
        if selected.ndim != 4:
            raise ValueError("the neuron objective needs a layer with a spatial (N,C,h,w) output; "
                             "use objective='channel' for a (N,C) output")
        return selected.flatten(start_dim=2).amax(dim=2)

    def _reduce(self, selected: torch.Tensor, batch_dims: int) -> torch.Tensor:
        if self.kind == "neuron":
            if selected.ndim != batch_dims + 2:
                raise ValueError("the neuron objective needs a layer with a spatial (N,C,h,w) output; "
                                 "use objective='channel' for a (N,C) output")
            h, w = selected.shape[-2:]
            y, x = h // 2 + self.offset[0], w // 2 + self.offset[1]
            if not (0 <= y < h and 0 <= x < w):
                raise ValueError(f"neuron offset {self.offset} falls outside the {h}x{w} feature map")
            return selected[..., y, x]
        return _spatial_mean(selected, batch_dims)


def _spatial_mean(t: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """Mean over the axes after the first ``batch_dims`` (a ``(N,C)`` output has none left)."""
    return t.flatten(start_dim=batch_dims).mean(dim=batch_dims) if t.ndim > batch_dims else t


def build(kind: str, channels: Any, n_outputs: int, *, classes: Sequence[str] | None, class_index: Any,
          offset: tuple[int, int] = (0, 0), read: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Objective:
    """Validate ``channels`` for ``kind`` against a layer with ``n_outputs`` channels (or classes); ``read``: how
    the layer output becomes ``(N, C, h, w)`` (``None``: it is that, or ``(N, C)``, already)."""
    if kind not in KINDS:
        raise ValueError(f"unknown objective {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "direction":
        return dataclasses.replace(_directions(channels, n_outputs), read=read)
    if isinstance(channels, str) and channels == "all":
        units = list(range(n_outputs))
    elif isinstance(channels, (int, np.integer, str)):
        units = [channels]
    else:
        units = list(channels)
    if not units:
        raise ValueError("channels is empty; pass 'all', an index, or a list of indices")
    if kind == "logit":
        units = [class_index(u) if isinstance(u, str) else u for u in units]
    indices = [_index(u, n_outputs, kind) for u in units]
    if kind == "logit" and classes:
        labels = tuple(classes[i] if i < len(classes) else f"class {i}" for i in indices)
    else:
        labels = tuple(f"{'class' if kind == 'logit' else 'channel'} {i}" for i in indices)
    return Objective(kind, tuple(indices), labels, tuple(indices), offset=tuple(offset), read=read)


def _index(unit: Any, n_outputs: int, kind: str) -> int:
    try:
        index = operator.index(unit)
    except TypeError:
        names = " or class names" if kind == "logit" else ""
        raise ValueError(f"channel {unit!r} is not an index; channels are integers in [0, {n_outputs}){names}") from None
    if not 0 <= index < n_outputs:
        raise ValueError(f"channel {index} is out of range: the target has {n_outputs} channels [0, {n_outputs})")
    return index


def _directions(channels: Any, n_outputs: int) -> Objective:
    d = torch.as_tensor(np.asarray(channels, dtype=np.float32))
    if d.ndim == 1:
        d = d[None]
    if d.ndim != 2 or d.shape[1] != n_outputs:
        raise ValueError(f"directions must be shaped (K, {n_outputs}) or ({n_outputs},) for this layer, "
                         f"got {tuple(d.shape)}")
    keys = tuple(zlib.crc32(row.numpy().tobytes()) for row in d)
    labels = tuple(f"direction {i}" for i in range(d.shape[0]))
    return Objective("direction", tuple(range(d.shape[0])), labels, keys, directions=d)
