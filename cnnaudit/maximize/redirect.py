"""Lucid's redirected ReLU gradient, for the first steps of an optimisation.

A unit behind a ReLU that is off everywhere on the starting image gets no gradient and would
never move. The redirected gradient of ``y = relu(x)`` for an objective ``J`` (ascent) is, per
batch element ``n``::

    g_relu  = dJ/dy * [x > 0]
    g_redir = dJ/dy * not([x < 0] and [dJ/dy < 0])     # pass what would push x up
    dJ/dx   = g_relu   if ||g_relu[n]|| > 0   else   g_redir

so a unit that is merely switched off is reached, and a unit whose input cannot move (zero
weights) still gets exactly zero. The decision is per image: images of a batch do not interact.

The per-image rule stalls at the objective's own ReLU: once one position of a channel fires, the
plain gradient is non-zero and every position that is off gets nothing (``relu(r - g - b)`` stopped
at 0.13 of its optimum with a few red pixels). That one ReLU (:func:`leak_at`) therefore passes
``leak * max(dJ/dy, 0)`` where it is off: the optimiser ascends ``mean(leaky_relu(x, leak))``, which
draws every position towards firing. For a map whose pre-activations sum to a constant (an edge
filter) this keeps the direction of the plain gradient; at the ReLUs inside the network the
per-image rule stays, since drawing every position up there silences deeper units.

:func:`redirected_relus` intercepts every ReLU call with :class:`cnnaudit.relu_mode.ReLUMode` (the
mode guided backprop uses too); the model and its hooks are not touched.
"""

from __future__ import annotations

from typing import Any

import torch

from cnnaudit.relu_mode import ReLUMode


class _RedirectedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x > 0, x < 0)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        on, off = ctx.saved_tensors
        relu_grad = grad * on
        leak = getattr(ctx, "leak", 0.0)
        if leak:  # the objective's own ReLU: every position that is off is drawn up, gently
            return torch.where(on, grad, grad.clamp(min=0) * leak)
        alive = relu_grad.flatten(1).any(dim=1) if grad.ndim > 1 else relu_grad.any()  # per batch element
        if grad.device.type == "cpu" and bool(alive.all()):  # the usual case; on a GPU this read would stall
            return relu_grad
        # where an element is dead, pass everything but the downward pushes on negative inputs
        dead = alive.logical_not().reshape(alive.shape + (1,) * (grad.ndim - alive.ndim))
        redirect = (grad >= 0).logical_or_(off.logical_not()).logical_and_(dead)
        return torch.where(redirect, grad, relu_grad)


def redirected_relus() -> ReLUMode:
    """Context in which every ReLU has the redirected gradient (forward values unchanged)."""
    return ReLUMode(_RedirectedReLU.apply)


def leak_at(output: torch.Tensor, leak: float) -> bool:
    """If ``output`` came from a redirected ReLU (directly or through its in-place copy), make that ReLU's
    backward pass ``leak`` times the upward gradient where it is off; returns whether it did."""
    node = output.grad_fn
    nodes = [node] + ([n for n, _ in node.next_functions if n is not None] if node is not None else [])
    for candidate in nodes:
        if candidate is not None and type(candidate).__name__ == "_RedirectedReLUBackward":
            candidate.leak = leak
            return True
    return False
