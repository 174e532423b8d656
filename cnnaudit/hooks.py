"""The one capture engine: forward hooks record activations, ``torch.autograd.grad`` gives gradients.

* A forward hook stores the module's output and hands a *clone* downstream, so in-place ops
  after the layer (``nn.ReLU(inplace=True)``, ``out += identity`` in ResNet, DenseNet's in-place
  ReLU after ``norm1``) cannot change what was recorded, and the gradient with respect to the
  recorded tensor is the gradient with respect to the layer's true output.
* With ``start_graph=True`` the recorded tensor is cut from the history before the layer and
  becomes a leaf that requires grad: gradients with respect to it exist even when neither the
  input nor any parameter requires grad, and nothing upstream of the layer is kept for backward.
* Gradients come only from :func:`gradient` (``torch.autograd.grad``): no module backward hooks,
  no ``.backward()``, so no parameter's ``.grad`` is ever written.
* Hooks are removed in ``finally``, also when the model raises.

Every forward hook cnnaudit registers goes through :func:`observing`: :func:`record` (the maps'
activations), :func:`first_output` (activation maximisation: the pass stops at its layer) and
``layers.probe`` (the layer inventory).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn


class Recording:
    """Activations recorded during a forward pass, by layer name."""

    def __init__(self, names: Sequence[str]) -> None:
        self._outputs: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def _add(self, name: str, value: torch.Tensor) -> None:
        self._outputs[name].append(value)

    def __getitem__(self, name: str) -> torch.Tensor:
        """The single activation recorded for ``name``; a clear error if it ran zero or several times."""
        outputs = self._outputs[name]
        if len(outputs) != 1:
            why = "did not run" if not outputs else f"ran {len(outputs)} times (a module shared within the forward pass)"
            raise ValueError(f"layer {name!r} {why}; pick a layer that runs exactly once per forward pass, see subject.layers()")
        return outputs[0]


Observer = Callable[[str, nn.Module, tuple, object], object]
"""``observe(name, module, inputs, output)``: returns ``None`` to leave the output, or its replacement."""


@contextlib.contextmanager
def observing(modules: Mapping[str, nn.Module], observe: Observer) -> Iterator[None]:
    """Call ``observe`` after every call of one of ``modules`` (name -> module) inside the block.

    The hooks are removed when the block exits, normally or by an exception (also one ``observe`` raised).
    """
    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(functools.partial(observe, name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _tensor_output(what: str, module: nn.Module, output: object) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"{what} ({type(module).__name__}) returned {type(output).__name__}, not a tensor; "
            "pick a layer whose output is a single tensor, see subject.layers()"
        )
    return output


@contextlib.contextmanager
def record(modules: Mapping[str, nn.Module], *, start_graph: bool = False) -> Iterator[Recording]:
    """Record the outputs of ``modules`` (name -> module) for forward passes run inside the block.

    ``start_graph=True`` makes each recorded activation a fresh leaf requiring grad (see the
    module docstring). The hooks are removed when the block exits, normally or by an exception.
    """
    recording = Recording(list(modules))

    def keep(name: str, module: nn.Module, inputs: tuple, output: object) -> torch.Tensor:
        output = _tensor_output(f"layer {name!r}", module, output)
        recorded = output.detach().requires_grad_() if start_graph else output
        recording._add(name, recorded)
        return recorded.clone()

    with observing(modules, keep):
        yield recording


class _Reached(Exception):
    """Raised by :func:`first_output`'s hook once its module has produced its output."""


def first_output(module: nn.Module, run: Callable[[], object], name: str = "the target layer") -> torch.Tensor:
    """The output of ``module``'s first call during ``run()``; the forward pass stops right there.

    ``ValueError`` if ``module`` is not called, ``TypeError`` if its output is not a tensor (``name``
    says which layer in both messages).
    """
    reached: list[torch.Tensor] = []

    def stop(_: str, module: nn.Module, inputs: tuple, output: object) -> None:
        reached.append(_tensor_output(name, module, output))
        raise _Reached

    try:
        with observing({name: module}, stop):
            run()
    except _Reached:
        pass
    if not reached:
        raise ValueError(f"{name} was not called in the model's forward pass; see subject.layers()")
    return reached[0]


def gradient(
    scores: torch.Tensor, wrt: torch.Tensor | Sequence[torch.Tensor], *, output: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """``d(sum(scores)) / d wrt`` by ``torch.autograd.grad``; one pass for a batch of per-image scores.

    Per-image scores of a batch are independent (eval mode), so the gradient of their sum with
    respect to a batched tensor holds each image's own gradient in its row. ``output`` is the
    model output the scores were computed from (default: the scores themselves); when there is
    no gradient it tells the two causes apart: the recorded tensor does not feed the output (a
    layer off the path to it), or it does but the score is not a differentiable function of the
    output (a callable target using argmax, ``.item()``, numpy, ...).
    """
    inputs = (wrt,) if isinstance(wrt, torch.Tensor) else tuple(wrt)
    if scores.requires_grad:
        grads = torch.autograd.grad(scores.sum(), inputs, allow_unused=True)
        if all(g is not None for g in grads):
            return grads
    output = scores if output is None else output
    if _feeds(inputs, output):
        raise ValueError(
            "the target score is not a differentiable function of the model output, although the recorded layer "
            "feeds the output; a callable target must compute its scores from the output with differentiable torch "
            "ops (no argmax, comparisons, .item(), .detach() or numpy)"
        )
    raise ValueError(
        "the recorded layer does not feed the model output (it runs, but its result does not reach the scores); "
        "pick a layer on the path from the input to the output, e.g. the last convolutional block (layer='auto')"
    )


def _feeds(inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> bool:
    """Whether ``output`` depends differentiably on every tensor of ``inputs`` (one extra backward pass)."""
    if not output.requires_grad:
        return False
    grads = torch.autograd.grad(output, inputs, grad_outputs=torch.ones_like(output), allow_unused=True)
    return all(g is not None for g in grads)
