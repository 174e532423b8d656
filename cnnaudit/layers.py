"""Layer inventory, layer-name resolution and the automatic target layer.

Layer names are exactly those of ``model.named_modules()`` (``"layer4"``, ``"layer1.0.conv1"``,
``"features.denseblock1.denselayer1.norm1"``). The inventory comes from ONE probe forward pass
with a forward hook on every module, so it works for any architecture: nested ``Sequential``,
residual blocks with a ``downsample`` branch, dense blocks, functional code between modules.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from cnnaudit import hooks, layouts

_ADAPTIVE_POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOLING = (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._LPPoolNd)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_DOWNSAMPLE_NAMES = ("downsample", "shortcut")


@dataclass(frozen=True)
class LayerInfo:
    """One module of the model as seen in the probe pass.

    ``parameters`` counts the module's parameters including its submodules; ``channels`` is
    dimension 1 of the output (``None`` when it is not a tensor of rank >= 2), or the channel
    dimension ``C`` of a token grid / channels-last output; ``output_shape``
    excludes the batch dimension (``None`` when the module did not run or returned a non-tensor);
    ``calls`` is how often the module ran in the probe pass (shared modules run more than once);
    ``layout`` says how a CAM reads an output that is not ``(N, C, h, w)`` as is (:mod:`cnnaudit.layouts`):
    ``"tokens 14x14 +1"`` (a patch-token grid after 1 leading token), ``"channels-last 7x7"``,
    ``"reshape"`` (``Subject(reshape=...)`` applies), ``"ambiguous: reshape="`` (a token count with
    several readings: pass ``Subject(reshape=...)``); ``None`` otherwise.
    """

    name: str
    type: str
    parameters: int
    channels: int | None
    output_shape: tuple[int, ...] | None
    calls: int = 1
    layout: str | None = None


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
        marked = any(layer.layout is not None for layer in self._layers)  # a layout column only when one is marked
        header = ("name", "type", "parameters", "channels", "output shape", *(("layout",) if marked else ()))
        rows = [
            (
                layer.name,
                layer.type,
                f"{layer.parameters:,}",
                "" if layer.channels is None else str(layer.channels),
                "-" if layer.output_shape is None else "x".join(map(str, layer.output_shape))
                + (f" (x{layer.calls} calls)" if layer.calls > 1 else ""),
                *((layer.layout or "",) if marked else ()),
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


def layer_inventory(model: nn.Module, probe_input: torch.Tensor, events: list[_Event] | None = None,
                    reshaped: Callable[[str], bool] | None = None) -> LayerInventory:
    """Every named submodule of ``model`` with its type, parameter count, probed output shape and layout.

    ``events``: the result of ``probe(model, probe_input)`` when the caller already ran it;
    ``reshaped(name)``: whether a user's ``reshape`` reads that layer (its layout is then ``"reshape"``).
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
        layout, channels = _read_as(shape, (probe_input.shape[-2], probe_input.shape[-1]))
        layers.append(
            LayerInfo(
                name=name,
                type=type(module).__name__,
                parameters=sum(p.numel() for p in module.parameters()),
                channels=channels,
                output_shape=shape[1:] if shape is not None else None,
                calls=calls.get(name, 0),
                layout="reshape" if reshaped is not None and shape is not None and reshaped(name) else layout,
            )
        )
    return LayerInventory(layers, _counts(model), input_size=tuple(probe_input.shape[1:]))


def _read_as(shape: tuple[int, ...] | None, size: tuple[int, int]) -> tuple[str | None, int | None]:
    """(layout mark, channels) of an output of ``shape`` (batch first) for a model input of ``size`` (see
    :class:`LayerInfo`): a token grid or channels-last output has its channels last."""
    if shape is None or len(shape) < 2:
        return None, None
    if len(shape) in (3, 4):
        try:
            layout = layouts.infer(shape, size)
        except ValueError:
            ambiguous = len(shape) == 3 and len(layouts.token_grids(shape[1], size)) > 1
            return ("ambiguous: reshape=" if ambiguous else None), shape[-1] if ambiguous else shape[1]
        if layout.kind != "nchw":
            return layout.description, shape[-1]
    return None, shape[1]


def last_block_norm(model: nn.Module) -> str | None:
    """The first norm of the model's last transformer block (the last module named ``ln_1`` or ``norm1``:
    torchvision ViT's ``encoder.layers.encoder_layer_11.ln_1``, timm's ``blocks.11.norm1``), or ``None``."""
    names = [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in ("ln_1", "norm1")]
    return names[-1] if names else None


def token_layer(model: nn.Module, probe_input: torch.Tensor, events: list[_Event], picked: str) -> str | None:
    """The CAM layer of a model whose features are a token grid after ``picked`` (what :func:`auto_layer` found:
    a ViT's patch embedding, its last 4-D output): the first norm of its last block (:func:`last_block_norm`),
    when it ran once after ``picked`` in the probe pass with a 3-D output that is a token grid or an ambiguous
    one (then the CAM's error names ``Subject(reshape=...)``, rather than maps of the patch embedding); else
    ``None`` (every CNN, and Swin, whose final ``permute`` is already ``(N, C, h, w)``). A separate step after
    :func:`auto_layer`."""
    norm = last_block_norm(model)
    names = [event.name for event in events]
    if norm is None or picked not in names:
        return None
    ran = [event for event in events[names.index(picked) + 1 :] if event.name == norm]
    size = (probe_input.shape[-2], probe_input.shape[-1])
    if len(ran) != 1 or ran[0].output_shape is None or len(ran[0].output_shape) != 3:
        return None
    try:
        return norm if layouts.infer(ran[0].output_shape, size).kind == "tokens" else None
    except ValueError:
        return norm  # a token grid cnnaudit cannot read alone: the CAM says so, naming Subject(reshape=...)


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


def feature_root(model: nn.Module) -> str:
    """Where torchvision's segmentation and detection models keep their feature extractor: ``backbone``
    (``backbone.body`` when the backbone also holds an ``fpn``), or ``""`` for a model without one."""
    children = dict(model.named_children())
    backbone = children.get("backbone")
    if backbone is None:
        return ""
    parts = dict(backbone.named_children())
    return "backbone.body" if "body" in parts and "fpn" in parts else "backbone"


def auto_layer(model: nn.Module, probe_input: torch.Tensor, events: list[_Event] | None = None) -> str:
    """Name of the last module with a spatial 4-D ``(N,C,h,w)`` output (``h * w > 1``) before the head.

    Modules are taken in the order they finish in one probe pass. The head starts at the first
    *reduction* (a global pooling module, a module whose output is not 4-D, or one that collapses a
    spatial input to 1x1) that is not nested inside a module with a 4-D output, so squeeze-excitation
    pooling inside a block does not count; the head is the outermost module around it that is itself
    a reduction, and nothing inside it is picked (if that leaves nothing, the next one in: AlexNet at
    64 px, whose ``features`` end in a pooling to 1x1). Pooling modules and 1x1 outputs are never picked,
    nor modules that run more than once in the pass (an FPN level's head) or whose output's dimension 0 is
    not the input's batch (one row per box proposal: ``roi_heads.box_roi_pool``).
    For a residual network this gives ``layer4``, for torchvision VGG / DenseNet / MobileNet /
    EfficientNet / SqueezeNet ``features``. A model with a ``backbone`` submodule (torchvision's segmentation
    and detection models) is searched inside it (inside ``backbone.body`` behind an FPN, see
    :func:`feature_root`): FCN-ResNet50 gives ``backbone.layer4``, DeepLabV3-MobileNetV3 ``backbone.16``,
    Faster R-CNN-MobileNetV3-FPN ``backbone.body.16``, never the logit map, the auxiliary head, an FPN
    output or the detection heads. ``events``: ``probe(model, probe_input)`` when already run.
    """
    events = probe(model, probe_input) if events is None else events
    batch = probe_input.shape[0]
    first: dict[str, _Event] = {}
    calls: dict[str, int] = {}
    for event in events:
        first.setdefault(event.name, event)
        calls[event.name] = calls.get(event.name, 0) + 1

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
        return (
            shape is not None and len(shape) == 4 and shape[0] == batch and calls[event.name] == 1
            and not _is_point(shape) and not _is_global_pooling(event)
        )

    root = feature_root(model)
    inside_root = [e for e in events if root and within(e.name, root)]
    if any(eligible(e) for e in inside_root):
        events = inside_root
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
