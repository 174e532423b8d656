"""One way to give every ReLU call of a forward pass another backward rule, without touching the model.

Guided backprop and deconvnet (:mod:`cnnaudit.attribution.guided`) and the redirected gradient of
activation maximisation (:mod:`cnnaudit.maximize.redirect`) each replace ReLU's backward. They share
:class:`ReLUMode`, a ``TorchFunctionMode`` that recognises every spelling of a ReLU call
(``nn.ReLU`` with or without ``inplace``, ``F.relu(x, inplace)`` given by keyword or position,
``F.relu_``, ``torch.relu`` / ``torch.relu_``, ``Tensor.relu`` / ``Tensor.relu_``) and swaps it for
``rectify(x)``, an autograd function with ReLU's forward value and its own backward. An in-place call
writes that value back into its input, as the original would have. No module is modified and no
backward hook is used.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

RELU = frozenset({F.relu, torch.relu, torch.Tensor.relu})
RELU_IN_PLACE = frozenset({F.relu_, torch.relu_, torch.Tensor.relu_})


def relu_input(func: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[torch.Tensor, bool] | None:
    """For a ReLU call ``func(*args, **kwargs)``: its input and whether it works in place; else ``None``."""
    if func in RELU_IN_PLACE:
        return args[0], True
    if func in RELU:
        in_place = bool(kwargs.get("inplace", False)) or (len(args) > 1 and bool(args[1]))
        return args[0], in_place
    return None


class ReLUMode(TorchFunctionMode):
    """While active, every ReLU call returns ``rectify(x)`` (written into ``x`` for an in-place call);
    :meth:`other` sees every other call. ``relu_calls`` counts the ReLU calls replaced."""

    def __init__(self, rectify: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.rectify = rectify
        self.relu_calls = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        call = relu_input(func, args, kwargs)
        if call is None:
            return self.other(func, args, kwargs)
        self.relu_calls += 1
        x, in_place = call
        y = self.rectify(x)
        return x.copy_(y) if in_place else y

    def other(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """A call that is not a ReLU: run as it is (subclasses may refuse some)."""
        return func(*args, **kwargs)
