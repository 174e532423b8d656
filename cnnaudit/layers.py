"""Layer inventory, layer-name resolution and the automatic target layer.

Layer names are exactly those of ``model.named_modules()`` (``"layer4"``, ``"layer1.0.conv1"``,
``"features.denseblock1.denselayer1.norm1"``). The inventory comes from ONE probe forward pass
with a forward hook on every module, so it works for any architecture: nested ``Sequential``,
residual blocks with a ``downsample`` branch, dense blocks, functional code between modules.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

from cnnaudit import hooks

_ADAPTIVE_POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOLING = (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._LPPoolNd)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_DOWNSAMPLE_NAMES = ("downsample", "shortcut")


@dataclass(frozen=True)
class LayerInfo:
    """One module of the model as seen in the probe pass.

    ``parameters`` counts the module's parameters including its submodules; ``channels`` is
    dimension 1 of the output (``None`` when it is not a tensor of rank >= 2); ``output_shape``
    excludes the batch dimension (``None`` when the module did not run or returned a non-tensor);
    ``calls`` is how often the module ran in the probe pass (shared modules run more than once).
    """

    name: str
    type: str
    parameters: int
    channels: int | None
    output_shape: tuple[int, ...] | None
    calls: int = 1


class LayerInventory(Sequence[LayerInfo]):
    """The model's layers in definition order (``named_modules()``), with counts by kind.

    ``input_size`` is the model input (no batch dimension) the probe pass used, so the output
    shapes are for it. Index by position or by name; ``str()`` gives a line naming ``input_size``,
    an aligned table, then the counts:
    ``conv`` (all convolutions), ``linear``, ``sequential`` (``nn.Sequential`` containers other
    than downsample branches), ``blocks`` (non-container modules that contain a convolution,
    e.g. BasicBlock, Bottleneck, DenseLayer, InvertedResidual) and ``downsample`` (modules
    named ``downsample`` or ``shortcut``: the projection branch of residual blocks).
    """

    def __init__(self, layers: list[LayerInfo], counts: dict[str, int], input_size: tuple[int, ...] | None = None) -> None:
        self._layers = layers
        self._by_name = {layer.name: layer for layer in layers}
        self.counts = counts
        self.input_size = input_size
        """The model input (without the batch dimension, e.g. ``(3, 224, 224)``) the output shapes are for."""

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            if key not in self._by_name:
                raise KeyError(_unknown_layer_message(key, list(self._by_name)))
            return self._by_name[key]
        return self._layers[key]

    def __iter__(self) -> Iterator[LayerInfo]:
        return iter(self._layers)

    def names(self) -> list[str]:
        return [layer.name for layer in self._layers]

    def __repr__(self) -> str:
        return f"LayerInventory({len(self)} layers, input_size={self.input_size}, {self.counts})"

    def __str__(self) -> str:
        header = ("name", "type", "parameters", "channels", "output shape")
        rows = [
            (
                layer.name,
                layer.type,
                f"{layer.parameters:,}",
                "" if layer.channels is None else str(layer.channels),
                "-" if layer.output_shape is None else "x".join(map(str, layer.output_shape))
                + (f" (x{layer.calls} calls)" if layer.calls > 1 else ""),
            )
            for layer in self._layers
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
        if self.input_size is not None:
            lines.insert(0, f"output shapes for one input of input_size={self.input_size}; "
                            "subject.layers(size=(H, W)) probes another size")
        lines.append(", ".join(f"{kind}: {count}" for kind, count in self.counts.items()))
        return "\n".join(lines)


@dataclass(frozen=True)
class _Event:
    """One module call seen in the probe pass, in completion order."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None


def _shape(value: object) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def probe(model: nn.Module, probe_input: torch.Tensor) -> list[_Event]:
    """Run ``model(probe_input)`` once without gradients and return every module call in completion order.

    The hooks are removed in ``finally``; exceptions from the model propagate unchanged.
    """
    events: list[_Event] = []

    def note(name: str, module: nn.Module, inputs: tuple, output: object) -> None:
        events.append(_Event(name, module, _shape(inputs[0]) if inputs else None, _shape(output)))

    with hooks.observing({name: module for name, module in model.named_modules() if name}, note), torch.no_grad():
        model(probe_input)
    return events


def layer_inventory(model: nn.Module, probe_input: torch.Tensor, events: list[_Event] | None = None) -> LayerInventory:
    """Every named submodule of ``model`` with its type, parameter count and probed output shape.

    ``events``: the result of ``probe(model, probe_input)`` when the caller already ran it.
    """
    events = probe(model, probe_input) if events is None else events
    first: dict[str, _Event] = {}
    calls: dict[str, int] = {}
    for event in events:
        first.setdefault(event.name, event)
        calls[event.name] = calls.get(event.name, 0) + 1
    layers = []
    for name, module in model.named_modules():
        if not name:
            continue
        shape = first[name].output_shape if name in first else None
        layers.append(
            LayerInfo(
                name=name,
                type=type(module).__name__,
                parameters=sum(p.numel() for p in module.parameters()),
                channels=shape[1] if shape is not None and len(shape) >= 2 else None,
                output_shape=shape[1:] if shape is not None else None,
                calls=calls.get(name, 0),
            )
        )
    return LayerInventory(layers, _counts(model), input_size=tuple(probe_input.shape[1:]))


def _is_downsample(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in _DOWNSAMPLE_NAMES


def _counts(model: nn.Module) -> dict[str, int]:
    counts = {"conv": 0, "linear": 0, "sequential": 0, "blocks": 0, "downsample": 0}
    for name, module in model.named_modules():
        if not name:
            continue
        if isinstance(module, nn.modules.conv._ConvNd):
            counts["conv"] += 1
        elif isinstance(module, nn.Linear):
            counts["linear"] += 1
        if _is_downsample(name) and any(True for _ in module.parameters()):
            counts["downsample"] += 1
        elif isinstance(module, nn.Sequential):
            counts["sequential"] += 1
        elif not isinstance(module, (*_CONTAINERS, nn.modules.conv._ConvNd)) and any(
            isinstance(child, nn.modules.conv._ConvNd) for child in module.modules()
        ):
            counts["blocks"] += 1
    return counts


def close_matches(name: str, options: Iterable[str], first: Sequence[str] = ()) -> str:
    """``" (did you mean 'a', 'b' or 'c'?)"``: up to 3 ``options`` close to ``name`` (``difflib``), or ``""``.

    The one format of every unknown-name error: layers, class names, regions and groups. ``first``:
    suggestions listed before the close matches (a layer's full names ending in ``name``).
    """
    near = list(dict.fromkeys([*first, *difflib.get_close_matches(name, list(options), n=3)]))
    if not near:
        return ""
    quoted = [repr(option) for option in near]
    listed = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return f" (did you mean {listed}?)"


_SUFFIX_SHOWN = 6
"""At most this many full layer names ending in an unknown name are suggested."""


def _unknown_layer_message(name: str, names: list[str]) -> str:
    """Close matches, led by the full names that end in ``name`` (``conv4`` -> ``features.conv4``)."""
    ending = [n for n in names if n.endswith("." + name)] if name else []
    more = ""
    if len(ending) > _SUFFIX_SHOWN:
        more = f" (the first {_SUFFIX_SHOWN} of {len(ending)} layers ending in '.{name}')"
    return (
        f"no layer named {name!r} in the model{close_matches(name, names, first=ending[:_SUFFIX_SHOWN])}{more}. "
        "Layer names are those of model.named_modules(); list them with subject.layers()"
    )


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` in ``model.named_modules()``; ``KeyError`` listing close matches otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"a layer name must be a str as in model.named_modules(), got {type(name).__name__}")
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise KeyError(_unknown_layer_message(name, [n for n in modules if n]))
    return modules[name]


def layer_name(model: nn.Module, module: nn.Module) -> str:
    """The ``named_modules()`` name of ``module`` inside ``model``."""
    for name, candidate in model.named_modules():
        if candidate is module and name:
            return name
    raise KeyError(f"the module {type(module).__name__} is not a submodule of the model")


def _is_global_pooling(event: _Event) -> bool:
    """Adaptive pooling, or a pooling module that reduces its input to 1x1."""
    if isinstance(event.module, _ADAPTIVE_POOLING):
        return True
    return isinstance(event.module, _POOLING) and event.output_shape is not None and event.output_shape[2:] == (1, 1)


def _is_reduction(event: _Event) -> bool:
    """Global pooling, a non-4-D output, or a module that collapses a spatial input to 1x1 (a head
    such as SqueezeNet's ``classifier``, whose last step is a global pooling)."""
    shape = event.output_shape
    if shape is None:
        return False
    return len(shape) != 4 or _is_global_pooling(event) or (_is_point(shape) and not _is_point(event.input_shape))


def _is_point(shape: tuple[int, ...] | None) -> bool:
    """A 4-D shape whose spatial size is 1x1."""
    return shape is not None and len(shape) == 4 and shape[2:] == (1, 1)


def auto_layer(model: nn.Module, probe_input: torch.Tensor, events: list[_Event] | None = None) -> str:
    """Name of the last module with a spatial 4-D ``(N,C,h,w)`` output (``h * w > 1``) before the head.

    Modules are taken in the order they finish in one probe pass. The head starts at the first
    *reduction* (a global pooling module, a module whose output is not 4-D, or one that collapses a
    spatial input to 1x1) that is not nested inside a module with a 4-D output, so squeeze-excitation
    pooling inside a block does not count; the head is the outermost module around it that is itself
    a reduction, and nothing inside it is picked (if that leaves nothing, the next one in: AlexNet at
    64 px, whose ``features`` end in a pooling to 1x1). Pooling modules and 1x1 outputs are never picked.
    For a residual network this gives ``layer4``, for torchvision VGG / DenseNet / MobileNet /
    EfficientNet / SqueezeNet ``features``. ``events``: ``probe(model, probe_input)`` when already run.
    """
    events = probe(model, probe_input) if events is None else events
    first: dict[str, _Event] = {}
    for event in events:
        first.setdefault(event.name, event)

    def inside_feature_module(name: str) -> bool:
        parts = name.split(".")
        ancestors = (first.get(".".join(parts[:i])) for i in range(1, len(parts)))
        return any(
            a is not None and a.output_shape is not None and len(a.output_shape) == 4 and not _is_reduction(a)
            for a in ancestors
        )

    def within(name: str, root: str) -> bool:
        return name == root or name.startswith(root + ".")

    def eligible(event: _Event) -> bool:
        shape = event.output_shape
        return shape is not None and len(shape) == 4 and not _is_point(shape) and not _is_global_pooling(event)

    end, roots = len(events), [""]
    for position, event in enumerate(events):
        if _is_reduction(event) and not inside_feature_module(event.name):
            # the head: the outermost module around this reduction that is itself one (SqueezeNet's
            # classifier: conv, ReLU, global pooling - class maps, not features), else the next one in
            parts = event.name.split(".")
            prefixes = (".".join(parts[:i]) for i in range(1, len(parts) + 1))
            end, roots = position, [p for p in prefixes if p in first and _is_reduction(first[p])]
            break
    picked = None
    for root in roots:
        candidates = [e for e in events[:end] if not (root and within(e.name, root))]
        picked = next((event.name for event in reversed(candidates) if eligible(event)), None)
        if picked is not None:
            break
    if picked is None:
        raise ValueError(
            "layer='auto' found no module with a 4-D (N,C,h,w) output before the model's head; "
            "pass Subject(layer=NAME) with a name from subject.layers()"
        )
    return picked
