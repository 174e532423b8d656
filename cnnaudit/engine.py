"""The narrow interface the computing code needs of a model under audit.

The attribution engine (``attribution/``), activation maximisation's loop and search take an
:class:`AuditedModel`, the few operations they call, in the way captum's engine takes a forward
function and a layer; they never import ``Subject``, which satisfies the protocol (as does any object
with these members, e.g. a test double). The metrics read :class:`Maps`, which ``Heatmaps`` satisfies,
so ``metrics`` and ``heatmaps`` do not import each other both ways.
"""

from __future__ import annotations

from typing import Any, ContextManager, Iterator, Protocol, Sequence

import torch
from torch import nn

from cnnaudit.layouts import Reshape


class AuditedModel(Protocol):
    """A model under audit, as the engine sees it."""

    model: nn.Module  #: the audited module itself (its state is left as it was found)
    device: torch.device  #: where inputs go
    batch_size: int  #: images per forward pass
    classes: Sequence[str] | None  #: class names, when given

    @property
    def image_channels(self) -> int:
        """How many channels the images have (what maximisation makes)."""
        ...

    def audit(self) -> ContextManager[Any]:
        """A block in eval mode with frozen parameters, the model restored afterwards."""
        ...

    def class_index(self, target: int | str) -> int:
        """The class index of a class name or a checked index."""
        ...

    def module(self, name: str) -> nn.Module:
        """The submodule ``name`` (a ``named_modules()`` name)."""
        ...

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Model input for images ``x`` in ``[0,1]`` on the device (the preprocessing)."""
        ...

    def forward(self, model_input: torch.Tensor, *, any_output: bool = False) -> Any:
        """The selected model output (e.g. logits) for an already prepared input; a tensor, or with
        ``any_output=True`` and no output selector whatever the model returned (a dict, a list of dicts)."""
        ...

    def logits(self, x: torch.Tensor, *, any_output: bool = False) -> Any:
        """``forward(prepare(x), any_output=any_output)``."""
        ...

    def reshape_for(self, layer: str) -> Reshape | None:
        """How the user reads ``layer``'s output as ``(N, C, h, w)``; ``None``: inferred (:mod:`cnnaudit.layouts`)."""
        ...


class Maps(Protocol):
    """Attribution maps as the metrics read them (``Heatmaps`` satisfies it; see :mod:`cnnaudit.heatmaps`
    for ``raw`` and ``mass``)."""

    raw: torch.Tensor  #: ``(N, h, w)`` signed maps at layer resolution
    image_size: tuple[int, int]  #: ``(H, W)`` of the images
    ids: list[str]  #: one id per image
    targets: torch.Tensor  #: the explained class per image (``-1``: a custom score)
    zero: torch.Tensor  #: bool ``(N,)``: maps whose mass is all zero
    images: Any  #: the images the maps explain (``None`` if not kept)
    subject: Any  #: the model the maps came from (``None`` if unknown)

    def upsample(self, raw: torch.Tensor) -> torch.Tensor:
        """``bilinear(relu(raw))`` at ``image_size``."""
        ...

    def mass_batches(self, batch_size: int = 64) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, mass)`` chunks of the upsampled maps."""
        ...
