"""Guided backpropagation, deconvnet and guided Grad-CAM.

The rectifier rules replace the backward pass of *every* ReLU, however the model applies it
(:class:`cnnaudit.relu_mode.ReLUMode`, shared with activation maximisation's redirected gradient:
every spelling of a ReLU call is swapped for an autograd function with the same forward value and
the chosen backward rule; no module is modified and no backward hook is used). With ``x`` the ReLU
input and ``g`` the gradient arriving from above:

* guided backprop (Springenberg et al. 2015): ``g_in = g * [x > 0] * [g > 0]``
* deconvnet (Zeiler & Fergus 2014): ``g_in = relu(g)`` (the forward mask is ignored)

Both rules are defined for ReLU networks. A forward pass that applies another rectifier-like
activation (SiLU, GELU, Hardswish, ReLU6, LeakyReLU, ...) raises ``ValueError`` instead of
returning a map in which some activations were silently left unmodified; so does a model with
TorchScript parts (the mode cannot see inside them). A forward pass that makes no ReLU call at all
(rectifiers hand-written as ``x.clamp(min=0)``, ``torch.maximum(x, 0)``, ``x * (x > 0)``, or swish as
``x * torch.sigmoid(x)``) gives the rules nothing to modify: the map is the plain input gradient
(vanilla saliency), and :class:`GuidedRuleWarning` says so, naming the element-wise calls seen that
may be such hand-written activations.

The map: the target score's gradient with respect to the input image in ``[0,1]`` (through
``preprocess`` and the cast to the model's dtype, so float32 for any model), ``(N,C,H,W)``, reduced
over the image channels by the maximum absolute value (Simonyan et al. 2014): ``raw_ij = max_c |g_cij|``
(``|g_ij|`` for grey images). Guided Grad-CAM (Selvaraju et al. 2017)
multiplies the guided backprop gradient by the ReLU'd Grad-CAM map bilinearly upsampled to the
image, ``raw_ij = max_c |g_cij| * bilinear(relu(L))_ij``.
"""

from __future__ import annotations

from typing import Any

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from cnnaudit import hooks
from cnnaudit.attribution.cam import cam_batch
from cnnaudit.attribution.targets import Target, predicted, select_scores, undefined_to_zero
from cnnaudit.engine import AuditedModel
from cnnaudit.relu_mode import ReLUMode

METHODS = ("guided_backprop", "deconvnet", "guided_gradcam")
_RULES = {"guided_backprop": "guided", "deconvnet": "deconvnet", "guided_gradcam": "guided"}

_OTHER_ACTIVATIONS = {
    F.silu: "silu",
    F.gelu: "gelu",
    F.hardswish: "hardswish",
    F.relu6: "relu6",
    F.hardtanh: "hardtanh",
    F.leaky_relu: "leaky_relu",
    F.leaky_relu_: "leaky_relu_",
    F.elu: "elu",
    F.selu: "selu",
    F.celu: "celu",
    F.mish: "mish",
    F.softplus: "softplus",
    F.prelu: "prelu",
    F.rrelu: "rrelu",
    F.threshold: "threshold",
}


# element-wise calls that hand-written rectifiers / gates are made of (by ``__name__``, for the warning)
_HAND_WRITTEN = {
    "clamp": "clamp", "clamp_": "clamp", "clip": "clip", "clip_": "clip", "clamp_min": "clamp_min",
    "clamp_min_": "clamp_min", "maximum": "torch.maximum", "fmax": "torch.fmax", "max": "max", "where": "torch.where",
    "__gt__": "comparison (x > 0)", "__ge__": "comparison (x >= 0)", "__lt__": "comparison (x < 0)",
    "__le__": "comparison (x <= 0)", "gt": "comparison (x > 0)", "ge": "comparison (x >= 0)",
    "lt": "comparison (x < 0)", "le": "comparison (x <= 0)", "heaviside": "torch.heaviside",
    "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh", "tanh_": "tanh", "erf": "erf",
    "hardsigmoid": "hardsigmoid",
}


class GuidedRuleWarning(UserWarning):
    """Guided backprop / deconvnet changed nothing: the forward pass made no ReLU call, so the map is the plain gradient."""


class _RectifiedReLU(torch.autograd.Function):
    """ReLU forward; backward by the guided or deconvnet rule (module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rule: str) -> torch.Tensor:
        out = x.clamp(min=0)
        ctx.rule = rule
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        positive = grad.clamp(min=0)
        if ctx.rule == "deconvnet":
            return positive, None
        (out,) = ctx.saved_tensors
        return positive * (out > 0), None


class RectifierRule(ReLUMode):
    """While active, every ReLU call runs with the ``rule`` ("guided" or "deconvnet") backward, and any
    other rectifier-like activation is refused."""

    def __init__(self, rule: str) -> None:
        super().__init__(lambda x: _RectifiedReLU.apply(x, rule))
        self.rule = rule
        self.hand_written: dict[str, None] = {}  # names of element-wise calls seen, in order (see _HAND_WRITTEN)

    def other(self, func: Any, args: tuple, kwargs: dict) -> Any:
        seen = _HAND_WRITTEN.get(getattr(func, "__name__", ""))
        if seen is not None:
            self.hand_written[seen] = None
        if func in _OTHER_ACTIVATIONS:
            raise ValueError(
                f"the model applies {_OTHER_ACTIVATIONS[func]}; guided backprop and deconvnet are defined for ReLU "
                "networks only, so this map would be silently wrong. Use subject.gradcam(...) instead"
            )
        return func(*args, **kwargs)


def _check_scriptless(model: nn.Module) -> None:
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        raise ValueError("the model contains TorchScript modules whose ReLUs cannot be rewritten; pass the eager nn.Module")


def _check_relus_seen(model: nn.Module, mode: RectifierRule) -> None:
    if mode.relu_calls == 0 and any(isinstance(m, nn.ReLU) for m in model.modules()):
        raise ValueError("the model has nn.ReLU modules but no ReLU call was seen in the forward pass; cannot apply the rule")
    if mode.relu_calls == 0:
        seen = f" (the forward pass called: {', '.join(mode.hand_written)})" if mode.hand_written else ""
        warnings.warn(
            f"the forward pass made no ReLU call the {mode.rule} rule can modify{seen}, so this map is the plain "
            "input gradient (vanilla saliency), not guided backprop / deconvnet. Rectifiers written as "
            "x.clamp(min=0), torch.maximum(x, 0) or x * (x > 0), and swish as x * torch.sigmoid(x), are not ReLU "
            "calls: write them with nn.ReLU / F.relu / torch.relu, or read this map as a plain gradient",
            GuidedRuleWarning,
            stacklevel=2,
        )


def saliency_batch(
    subject: AuditedModel, x: torch.Tensor, target: Target, start: int, method: str, layer: str | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str | None]:
    """Maps ``(B,H,W)``, explained class indices ``(B,)``, predicted classes ``(B,)`` and the Grad-CAM layer's
    layout (guided Grad-CAM, see :func:`cnnaudit.attribution.cam.cam_batch`; else ``None``) for the images ``x``
    (call inside ``subject.audit()``); an image whose target score is undefined (NaN) gets an all-zero map."""
    _check_scriptless(subject.model)
    image = x.detach().requires_grad_()
    mode = RectifierRule(_RULES[method])
    with mode:
        output = subject.logits(image, any_output=target.reads_any_output)
    _check_relus_seen(subject.model, mode)
    scores, indices = select_scores(target, output, start, x.shape[0])
    scores, defined = undefined_to_zero(scores)
    (gradient,) = hooks.gradient(scores, image, output=output if isinstance(output, torch.Tensor) else None)
    raw = torch.where(defined[:, None, None], gradient.abs().amax(dim=1), 0.0)
    layout = None
    if method == "guided_gradcam":
        assert layer is not None
        cam, _, _, layout = cam_batch(subject, x, target, start, layer, "gradcam", x.shape[0])
        raw = raw * F.interpolate(cam.clamp(min=0)[:, None], size=raw.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return raw, indices, predicted(output, x.shape[0]), layout
