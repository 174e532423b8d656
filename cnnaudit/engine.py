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


class AuditedModel(Protocol):
    """A model under audit, as the engine sees it."""

    model: nn.Module  #: the audited module itself (its state is left as it was found)
    device: torch.device  #: where inputs go
    batch_size: int  #: images per forward pass
    classes: Sequence[str] | None  #: class names, when given

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

    def forward(self, model_input: torch.Tensor) -> torch.Tensor:
        """The selected model output (e.g. logits) for an already prepared input."""
        ...

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(prepare(x))``."""
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
