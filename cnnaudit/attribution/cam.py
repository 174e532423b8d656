"""The Grad-CAM family: one pure function per method, and the batch engine that feeds them.

Notation: ``A`` is the recorded layer's activation ``(N,K,h,w)``, ``dA = dS/dA`` the gradient of
each image's target score ``S`` (before softmax) with respect to it, ``k`` a channel and ``ij`` a
position. Every method returns the *signed* map ``(N,h,w)`` before ReLU; ``Heatmaps`` applies
ReLU, bilinear upsampling and normalisation. The batch engine runs one forward and (for the
gradient methods) one ``autograd.grad`` pass per batch, everything on the model's device. The
formulas run in float32 on ``A`` and ``dA`` cast from the model's dtype (a bfloat16 or float16
model's activations; Eigen-CAM's SVD has no half-precision kernel), so maps are float32.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from cnnaudit import hooks, layers, layouts
from cnnaudit.attribution.targets import (
    Target,
    image_scores,
    output_tensors,
    predicted,
    score_rows,
    select_scores,
    undefined_to_zero,
)
from cnnaudit.engine import AuditedModel


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, 0 where the denominator is 0."""
    nonzero = denominator != 0
    return torch.where(nonzero, numerator / torch.where(nonzero, denominator, torch.ones_like(denominator)), 0.0)


def gradcam(A: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): ``L_ij = sum_k alpha_k A_kij``, ``alpha_k = (1/Z) sum_ij dS/dA_kij``."""
    return (dA.mean(dim=(2, 3), keepdim=True) * A).sum(dim=1)


def gradcam_plus_plus(A: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, eq. 19: the exponential score ``Y = exp(S)``).

    With ``g = dS/dA``, the higher derivatives of ``exp(S)`` are closed-form in first-order
    gradients (``d2Y/dA2 = exp(S) g^2``, ``d3Y/dA3 = exp(S) g^3``) and ``exp(S)`` cancels in::

        a_kij = g_kij^2 / (2 g_kij^2 + sum_ab A_kab g_kij^3)      (0 where the denominator is 0)
        w_k   = sum_ij a_kij relu(g_kij)
        L_ij  = sum_k w_k A_kij

    The paper's ``w_k`` carries one more positive per-image factor ``exp(S)``; it is dropped (it
    only rescales the map and overflows for large scores).
    """
    g2 = dA.pow(2)
    denominator = 2.0 * g2 + A.sum(dim=(2, 3), keepdim=True) * g2 * dA
    weights = (_safe_divide(g2, denominator) * dA.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    return (weights * A).sum(dim=1)


def xgradcam(A: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM (Fu et al., BMVC 2020): ``w_k = sum_ij (A_kij / sum_ab A_kab) dS/dA_kij``, ``L_ij = sum_k w_k A_kij``.

    A channel whose activations sum to 0 gets weight 0.
    """
    weights = (_safe_divide(A, A.sum(dim=(2, 3), keepdim=True)) * dA).sum(dim=(2, 3), keepdim=True)
    return (weights * A).sum(dim=1)


def layercam(A: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al., IEEE TIP 2021): ``L_ij = sum_k relu(dS/dA_kij) A_kij``."""
    return (dA.clamp(min=0) * A).sum(dim=1)


def hirescam(A: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin 2020): ``L_ij = sum_k dS/dA_kij A_kij`` (no spatial pooling of the gradient)."""
    return (dA * A).sum(dim=1)


def eigencam(A: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): projection on the first principal component.

    Per image, ``X`` = the ``(hw, K)`` matrix of activations with each channel's mean over positions
    subtracted; ``v`` = its first right singular vector; ``L = X v``. The sign of a singular vector
    is arbitrary, so it is fixed: ``L`` is flipped when needed to correlate non-negatively with the
    channel-summed activation ``sum_k A_k`` (the map is high where the layer is active).
    """
    n, _, h, w = A.shape
    X = A.flatten(2).transpose(1, 2)
    X = X - X.mean(dim=1, keepdim=True)
    first = torch.linalg.svd(X, full_matrices=False).Vh[:, 0, :]
    projection = (X @ first[:, :, None])[..., 0]
    agreement = (projection * A.sum(dim=1).flatten(1)).sum(dim=1)
    sign = torch.where(agreement < 0, -1.0, 1.0).to(A.dtype)
    return (projection * sign[:, None]).reshape(n, h, w)


def scorecam_masks(A: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Score-CAM masks: each channel map of ``A`` (``(K,h,w)``) bilinearly upsampled to ``size``
    (``align_corners=False``) and min-max normalised to ``[0,1]`` (a constant channel gives 0); ``(K,1,H,W)``."""
    masks = F.interpolate(A[:, None], size=size, mode="bilinear", align_corners=False)
    low = masks.amin(dim=(1, 2, 3), keepdim=True)
    return _safe_divide(masks - low, masks.amax(dim=(1, 2, 3), keepdim=True) - low)


def scorecam(A: torch.Tensor, masked_scores: torch.Tensor) -> torch.Tensor:
    """Score-CAM (Wang et al., CVPR-W 2020, Algorithm 1): ``L_ij = sum_k softmax_k(s)_k A_kij``.

    ``masked_scores`` ``(N,K)``: ``s_k`` = the target score of the model input multiplied by the
    normalised upsampled mask of channel ``k`` (:func:`scorecam_masks`). The paper subtracts the
    score of a baseline input first; that constant cancels in the softmax over channels. An
    undefined (NaN) ``s_k`` gets weight 0 (``s_k = -inf``); an image with none defined gets ``L = 0``.
    """
    weights = masked_scores.masked_fill(masked_scores.isnan(), float("-inf")).softmax(dim=1).nan_to_num(0.0)
    return (weights[:, :, None, None] * A).sum(dim=1)


GRADIENT_METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": gradcam,
    "gradcam++": gradcam_plus_plus,
    "xgradcam": xgradcam,
    "layercam": layercam,
    "hirescam": hirescam,
}
METHODS = (*GRADIENT_METHODS, "eigencam", "scorecam")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")


def _feature_map(
    subject: AuditedModel, recording: hooks.Recording, layer: str, x: torch.Tensor
) -> tuple[torch.Tensor, layouts.Layout]:
    """The recorded output of ``layer`` and its :class:`~cnnaudit.layouts.Layout` as ``(N,C,h,w)`` for the model
    input of the images ``x`` (the subject's ``reshape`` for the layer, else inferred)."""
    recorded = recording[layer]
    height, width = subject.prepare(x[:1]).shape[-2:]  # the grid follows the model input (preprocess may resize)
    input_size = (int(height), int(width))
    reshape = subject.reshape_for(layer)
    if reshape is not None:
        layout = layouts.custom(reshape, recorded, input_size, layer)
    else:
        layout = layouts.infer(recorded.shape, input_size, layer)
    if layout.grid == (1, 1):
        raise ValueError(
            f"layer {layer!r} outputs a 1x1 map per channel (shape {tuple(recorded.shape)}: after global pooling), so "
            "every heatmap would be constant and mass_in of any region would be its area fraction; pick a layer with a "
            "spatial output from subject.layers() (layer='auto' picks the last one before the head)"
        )
    return recorded, layout


def _grid_gradient(layout: layouts.Layout, gradient: torch.Tensor, subject: AuditedModel, layer: str) -> torch.Tensor:
    """``gradient`` (with respect to the recorded output) read as ``(N,C,h,w)``; ``ValueError`` when a token grid's
    patch tokens get no gradient at all while its leading tokens do: only the class token feeds the output
    there (the last block of a ViT), so every map would be zero (one host read, token grids with extra tokens only)."""
    dA = layout.apply(gradient)
    if layout.kind != "tokens" or layout.extra == 0:
        return dA
    leading = gradient[:, : layout.extra].abs().amax()
    if bool((dA.abs().amax() == 0) & (leading > 0)):
        suggestion = layers.last_block_norm(subject.model)
        instead = f"e.g. {suggestion!r}, " if suggestion is not None else ""
        raise ValueError(
            f"layer {layer!r} is a token grid ({layout.description}) whose {layout.grid[0] * layout.grid[1]} patch "
            f"tokens get no gradient from the target, only its {layout.extra} leading token(s) do: past the last "
            "attention, only the class token reaches the head, so every map at this layer would be zero. Pick a "
            f"layer before the last block's attention: its first norm, {instead}as pytorch-grad-cam recommends "
            "(blocks[-1].norm1); see subject.layers()"
        )
    return dA


CANCELLED = 1e-4
"""A map is rounding noise when ``max |L|`` is at most this fraction of its terms' bound (:func:`_check_not_cancelled`)."""


def _check_not_cancelled(L: torch.Tensor, A: torch.Tensor, dA: torch.Tensor, method: str, layer: str,
                         defined: torch.Tensor) -> None:
    """``ValueError`` when every defined map of the batch is rounding noise: ``max_ij |L_ij| <= CANCELLED * max_ij
    B_ij`` with ``B`` the method's formula on ``|A|`` and ``|dA|`` (an upper bound of ``|L|`` for Grad-CAM,
    HiResCAM and LayerCAM). HiResCAM at a layer that feeds only a normalisation over channels (Swin's last
    stage, then ``norm``) is such a case: ``LN(c x) = LN(x)``, so ``sum_k dS/dA_k A_k = 0`` at every position and
    the map is float32 cancellation, which normalisation would blow up to a full-contrast picture of noise. One
    host read; called for token-grid, channels-last and reshaped layers only, where transformers put such norms."""
    bound = GRADIENT_METHODS[method](A.abs(), dA.abs()).flatten(1).amax(dim=1)
    noise = (L.flatten(1).abs().amax(dim=1) <= CANCELLED * bound) & (bound > 0)
    if bool((noise | ~defined).all() & (noise & defined).any()):
        raise ValueError(
            f"{method} at layer {layer!r} cancels to rounding noise: its largest value is at most {CANCELLED:g} of the "
            "size of its terms on every image, as when the layer feeds only a normalisation over channels (a "
            "LayerNorm right after it, e.g. swin_t's features.7): sum_k dS/dA_k * A_k is then 0 exactly. Use "
            "method='gradcam' or 'layercam' at this layer, or the layer after the norm (e.g. swin_t's 'permute')"
        )


def cam_batch(
    subject: AuditedModel, x: torch.Tensor, target: Target, start: int, layer: str, method: str, limit: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str | None]:
    """Signed maps ``(B,h,w)``, explained class indices ``(B,)``, predicted classes ``(B,)`` (``-1`` for an
    output that is not ``(N, classes)``) for the images ``x`` (on the device), and how the layer output was read
    (:attr:`cnnaudit.layouts.Layout.description`: ``"tokens 14x14 +1"``, ``None`` for a plain ``(N,C,h,w)`` map).

    Call inside ``subject.audit()``. ``start`` is the batch's offset in the full image set (for
    per-image targets); ``limit`` caps the images in one forward pass (Score-CAM's masked inputs).
    An image whose target score is undefined (NaN) gets an all-zero map, whatever the method.
    """
    needs_gradient = method in GRADIENT_METHODS
    with hooks.record({layer: subject.module(layer)}, start_graph=needs_gradient) as recording:
        with torch.set_grad_enabled(needs_gradient):
            output = subject.logits(x, any_output=target.reads_any_output)
    recorded, layout = _feature_map(subject, recording, layer, x)
    A = layout.apply(recorded)
    scores, indices = select_scores(target, output, start, x.shape[0])
    scores, defined = undefined_to_zero(scores)
    predictions = predicted(output, x.shape[0])
    if needs_gradient and not _carries_gradient(output) and forward_cuts_graph(subject, x, target.reads_any_output):
        raise ValueError(graph_cut_message(f"layer {layer!r}"))
    if needs_gradient:
        (gradient,) = hooks.gradient(scores, recorded, output=output if isinstance(output, torch.Tensor) else None)
        dA = _grid_gradient(layout, gradient, subject, layer)
        A, dA = A.detach().float(), dA.float()  # float32 formulas, whatever the model's dtype
        L = GRADIENT_METHODS[method](A, dA)
        if method in ("gradcam", "hirescam", "layercam") and layout.kind != "nchw":
            _check_not_cancelled(L, A, dA, method, layer, defined)
    elif method == "eigencam":
        L = eigencam(A.float())
    else:
        with torch.no_grad():
            L = scorecam(A.float(), _masked_scores(subject, x, A.float(), target, indices, start, limit).float())
    return torch.where(defined[:, None, None], L, 0.0), indices, predictions, layout.description


def _carries_gradient(output: object) -> bool:
    """Whether any tensor of the model output requires grad."""
    return any(tensor.requires_grad for tensor in output_tensors(output))


def forward_cuts_graph(subject: AuditedModel, x: torch.Tensor, any_output: bool = False) -> bool:
    """Whether the model output does not depend differentiably on its input at all (one extra forward of one
    image, for error messages): the forward runs under ``no_grad`` / ``inference_mode`` or detaches its features.
    ``any_output``: the output is taken as the model returns it (a target of ``cnnaudit.targets``)."""
    with torch.inference_mode(False), torch.enable_grad():
        image = x[:1].detach().clone().requires_grad_()
        output = subject.logits(image, any_output=any_output)
    return not _carries_gradient(output)


def graph_cut_message(what: str) -> str:
    """The error for a forward pass that cuts the autograd graph (``what``: ``layer 'name'`` or the input image)."""
    alternative = ""
    if what.startswith("layer"):
        alternative = ", or use a gradient-free method: gradcam(method='eigencam' or 'scorecam')"
    return (
        "the model output carries no gradient at all, even from its input: the model's forward runs (part of) "
        "itself under torch.no_grad() or torch.inference_mode() (or detaches its features), so no gradient reaches "
        f"{what}; run the audited forward with gradients enabled (e.g. a flag on the model that skips the no_grad "
        f"block){alternative}"
    )


def _masked_scores(
    subject: AuditedModel, x: torch.Tensor, A: torch.Tensor, target: Target, indices: torch.Tensor, start: int,
    limit: int,
) -> torch.Tensor:
    """Score-CAM's ``s_k`` for every image and channel ``(N,K)``, ``limit`` masked inputs per forward pass
    (``start``: the batch's offset in the image set, each masked copy scored as its image by an image target).

    The ``N*K`` (image, channel) pairs form one stream cut into passes of ``limit``, so a pass is
    full even when a layer has fewer channels than ``limit``; each pass builds only its own masks
    and masked inputs. Masks multiply the *model input* (after ``preprocess``), so a masked-out
    pixel is 0 in model space (the dataset mean under ``cnnaudit.normalize``), as in the
    reference implementation.
    """
    model_input = subject.prepare(x)
    size = (model_input.shape[-2], model_input.shape[-1])
    n, k = A.shape[0], A.shape[1]
    channels = A.flatten(0, 1)
    image_of_pair = torch.arange(n, device=A.device).repeat_interleave(k)
    scores = []
    for offset in range(0, n * k, limit):
        rows = image_of_pair[offset : offset + limit]
        masks = scorecam_masks(channels[offset : offset + limit], size).to(model_input.dtype)
        masked = model_input.index_select(0, rows) * masks
        output = subject.forward(masked, any_output=target.reads_any_output)
        if target.per_image is not None:
            scores.append(image_scores(target.per_image, output, rows + start))
        elif target.function is not None:
            scores.append(score_rows(target.function, output))
        else:
            scores.append(output.gather(1, indices.index_select(0, rows)[:, None])[:, 0])  # no host read
    return torch.cat(scores).reshape(n, k)
