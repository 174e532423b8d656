"""Attention metrics: one small function per definition, each returning ``Scores`` (one value per image).

All metrics read ``Heatmaps.mass`` — ``M = bilinear(relu(raw))`` at input resolution, *not*
normalised (never across the batch either) — and region masks ``R`` rasterised at the same
resolution by the rule in :mod:`cnnaudit.regions`. A value is undefined (NaN, never a hit) when the
region is empty or ``None`` or the map is all zero. Ties are shared: when several pixels tie, each
gets an equal share of the credit, which is the expected score under random tie-breaking (a uniform
map scores chance level, not a hit).
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch

from cnnaudit import evidence
from cnnaudit.engine import AuditedModel, Maps
from cnnaudit.images import iter_batches
from cnnaudit.regions import Regions, as_regions, mask_box
from cnnaudit.scores import Scores

POINTING_TOLERANCE = 15.0
"""Default distance (px) within which a map's peak counts as on the region (``pointing_game``)."""
IOU_THRESHOLD = 0.15
"""Default fraction of a map's peak that bounds its box (``localization_iou``, the Grad-CAM paper's 15%)."""
CURVE_STEPS = 50
"""Default number of deletion / insertion steps."""
DELETION_SUBSTRATE = "zeros"
INSERTION_SUBSTRATE = "blur"

PerBatch = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | np.ndarray"]


def _per_image(heatmaps: Maps, regions: Any, metric: str, compute: PerBatch, batch_size: int = 64) -> Scores:
    """Run ``compute(mass, masks) -> values`` over batches; undefined where the map or region is empty.

    Values stay on the maps' device until one read at the end (metrics that loop on the host
    return numpy arrays, which are put back on the device with their chunk).
    """
    if isinstance(regions, str):
        regions = named_region(heatmaps, regions, metric)
    regions = as_regions(regions, heatmaps.image_size, len(heatmaps))
    values = torch.empty(len(heatmaps), dtype=torch.float64, device=heatmaps.raw.device)
    for start, mass in heatmaps.mass_batches(batch_size):
        stop = start + mass.shape[0]
        masks = regions[start:stop].masks(heatmaps.image_size, device=mass.device)
        batch = torch.as_tensor(compute(mass, masks), dtype=torch.float64, device=mass.device)
        empty = (masks.flatten(1).sum(1) == 0) | (mass.flatten(1).amax(1) <= 0)
        values[start:stop] = torch.where(empty, torch.nan, batch)
    source = {"heatmaps": heatmaps, "regions": regions, "index": np.arange(len(heatmaps))}
    return Scores(values.cpu().numpy(), f"{metric}({regions.name})", ids=heatmaps.ids, source=source)


def named_region(heatmaps: Maps, name: str, metric: str = "mass_in") -> Regions:
    """``heatmaps.images.region(name)``: the region called ``name`` of the ImageSet the maps were computed on,
    for exactly those images. ``ValueError`` saying to pass the regions when the maps were not computed from
    an ImageSet; ``KeyError`` listing the region names for an unknown one."""
    region = getattr(heatmaps.images, "region", None)
    if not callable(region):
        made = "without their images" if heatmaps.images is None else f"from a {type(heatmaps.images).__name__}, not an ImageSet"
        raise ValueError(
            f"{metric}({name!r}): a region name is looked up in the ImageSet the heatmaps were computed on, but these "
            f"were computed {made}; pass the regions themselves, e.g. {metric}(images.region({name!r})), or one box "
            "(x0, y0, x1, y1) per image"
        )
    try:
        return region(name)
    except KeyError as error:
        raise KeyError(f"{metric}({name!r}): {error.args[0]}") from None


def _fractions(mass: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, float64 on the device: mass fraction inside the region and area fraction of the region."""
    total = mass.sum(dim=(1, 2), dtype=torch.float64)
    inside = (mass * masks).sum(dim=(1, 2), dtype=torch.float64)
    area = masks.sum(dim=(1, 2), dtype=torch.float64) / (masks.shape[1] * masks.shape[2])
    return inside / total, area  # 0/0 -> NaN; _per_image marks those undefined


def mass_in(heatmaps: Maps, regions: Any) -> Scores:
    """Fraction of heatmap mass inside the region: ``sum(M * R) / sum(M)``, in ``[0, 1]``.

    The "energy-based pointing game" of Score-CAM (Wang et al., CVPR-W 2020), on the un-normalised map.
    """
    return _per_image(heatmaps, regions, "mass_in", lambda mass, masks: _fractions(mass, masks)[0])


def enrichment(heatmaps: Maps, regions: Any) -> Scores:
    """Mass fraction over area fraction: ``(sum(M * R) / sum(M)) / (sum(R) / (H * W))``.

    1.0 = the map is no more concentrated on the region than a uniform map; ``> 1`` = concentrated.
    Corrects ``mass_in`` for region size (cf. the "relevance mass accuracy" of Arras et al., 2022).
    """

    def compute(mass: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        fraction, area = _fractions(mass, masks)
        return fraction / area

    return _per_image(heatmaps, regions, "enrichment", compute)


def pointing_game(heatmaps: Maps, regions: Any, tolerance: float = POINTING_TOLERANCE) -> Scores:
    """Does the map's maximum fall on the region? (Zhang et al., "Top-down neural attention by excitation backprop", 2016).

    ``P = {p : M(p) >= max M * (1 - 16 eps)}``: the maxima, ties included, where ``eps`` is the
    rounding unit of the maps' dtype (bilinear upsampling of equal layer values gives values a few
    units apart: a flat 6x9 map at 50x70 px has 3 pixels exactly at its float32 maximum, not 3,500);
    ``Z = {p : dist(p, R) <= tolerance}`` (Euclidean, pixels, at input resolution; ``tolerance=0``
    means ``Z = R``). Score ``|P ∩ Z| / |P|``: 1 or 0 for a unique maximum; with tied maxima, the
    probability that a maximum picked at random hits (a flat map scores the region's area fraction,
    chance). Computed on the maps' device.
    """

    def compute(mass: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        tie = 1.0 - 16 * torch.finfo(mass.dtype).eps
        peaks = mass >= mass.flatten(1).amax(1)[:, None, None] * tie
        zones = within_distance(masks, tolerance)
        return (peaks & zones).sum(dim=(1, 2), dtype=torch.float64) / peaks.sum(dim=(1, 2), dtype=torch.float64)

    return _per_image(heatmaps, regions, "pointing_game", compute)


def within_distance(masks: torch.Tensor, tolerance: float) -> torch.Tensor:
    """``(N,H,W)`` bool: pixels at Euclidean distance ``<= tolerance`` from a pixel of the mask, on its device.

    The first pass of an exact distance transform: ``across(y, x)``, the distance along row ``y``
    to the nearest mask pixel (running max / min of mask columns). A pixel is within reach if
    some row offset ``dy`` has ``across(y + dy, x) <= max{dx : hypot(dx, dy) <= tolerance}``.
    The same set as ``scipy.ndimage.distance_transform_edt(~mask) <= tolerance``.
    """
    if tolerance <= 0:
        return masks
    n, height, width = masks.shape
    columns = torch.arange(width, device=masks.device).expand(n, height, width)
    far = width + math.ceil(tolerance) + 1  # farther than any reach, for rows without mask pixels
    left = torch.where(masks, columns, -far).cummax(dim=2).values
    right = torch.where(masks, columns, width - 1 + far).flip(2).cummin(dim=2).values.flip(2)
    across = torch.minimum(columns - left, right - columns)
    zones = across == 0
    reach = math.floor(tolerance)
    for dy in range(-min(reach, height - 1), min(reach, height - 1) + 1):
        near = across <= max(dx for dx in range(reach + 1) if math.hypot(dx, dy) <= tolerance)
        if dy >= 0:  # row y is near the mask's row y + dy
            zones[:, : height - dy] |= near[:, dy:]
        else:
            zones[:, -dy:] |= near[:, : height + dy]
    return zones


def localization_iou(heatmaps: Maps, regions: Any, threshold: float = IOU_THRESHOLD) -> Scores:
    """Weakly supervised localisation as in the Grad-CAM paper (Selvaraju et al., ICCV 2017, sec. 4.1).

    Binarise ``M >= threshold * max M``; take the largest 8-connected component
    (``skimage.measure.label`` / ``regionprops``; on equal areas the first in raster order); score
    ``IoU(bbox(component), bbox(R))`` of the half-open pixel boxes, where ``bbox(R)`` is the tight
    box of the rasterised region.
    """
    from skimage import measure


    def compute(mass: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
        maps, zones = mass.cpu().numpy(), masks.cpu().numpy()
        out = np.full(len(maps), np.nan)
        for i, (heat, zone) in enumerate(zip(maps, zones)):
            truth, peak = mask_box(zone), heat.max()
            if truth is None or peak <= 0:
                continue
            components = measure.regionprops(measure.label(heat >= threshold * peak, connectivity=2))
            r0, c0, r1, c1 = max(components, key=lambda c: c.area).bbox
            out[i] = box_iou((c0, r0, c1, r1), truth)
        return out

    return _per_image(heatmaps, regions, "localization_iou", compute)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of half-open boxes ``(x0, y0, x1, y1)``."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else float("nan")


def rank_accuracy(heatmaps: Maps, regions: Any) -> Scores:
    """Relevance rank accuracy (Arras, Osman & Samek, "CLEVR-XAI", Information Fusion 2022).

    ``K = |R|``; the fraction of the ``K`` highest-valued pixels that lie in ``R``. Pixels tied with
    the ``K``-th value share the remaining slots: ``(|{M > v} ∩ R| + (K - |{M > v}|) ·
    |{M = v} ∩ R| / |{M = v}|) / K`` with ``v`` the ``K``-th largest value. A uniform map scores ``K / (H W)``.
    Computed on the maps' device.
    """

    def compute(mass: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        heat, zone = mass.flatten(1), masks.flatten(1)
        k = zone.sum(1)
        v = heat.sort(dim=1, descending=True).values.gather(1, (k - 1).clamp(min=0)[:, None])
        above, tied = heat > v, heat == v

        def count(selected: torch.Tensor) -> torch.Tensor:
            return selected.sum(1, dtype=torch.float64)

        hits = count(above & zone) + (k - count(above)) * count(tied & zone) / count(tied)
        return hits / k  # k = 0: _per_image marks the empty region undefined

    return _per_image(heatmaps, regions, "rank_accuracy", compute)


# ---- perturbation metrics (need the model) -----------------------------------------------------
def _zeros(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True).expand_as(x)


def _blur(x: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms.v2.functional import gaussian_blur

    return gaussian_blur(x, kernel_size=[11, 11], sigma=[5.0, 5.0])


SUBSTRATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"zeros": _zeros, "mean": _mean, "blur": _blur}


def perturbation_curves(
    heatmaps: Maps,
    subject: AuditedModel | None = None,
    *,
    insert: bool,
    steps: int = CURVE_STEPS,
    substrate: str | Callable[[torch.Tensor], torch.Tensor] = "zeros",
) -> np.ndarray:
    """Class probability while pixels are deleted (or inserted) in order of the map, float64 ``(N, steps + 1)``.

    Pixels are ranked by ``M`` (descending; ties in raster order). Step ``i`` replaces the first
    ``k_i = round(i * H * W / steps)`` pixels (all channels) of the image by the substrate
    (deletion), or of the substrate by the image (insertion), and records ``p_i`` = softmax
    probability of the explained class (sigmoid for a single-output model). Substrates: ``"zeros"``,
    ``"mean"`` (per-image channel means), ``"blur"`` (Gaussian, 11 px kernel, sigma 5, as in RISE),
    or a callable ``(N,C,H,W) -> (N,C,H,W)``. Runs on the subject's device, ``batch_size`` images per pass.
    """
    subject = subject if subject is not None else heatmaps.subject
    if subject is None:
        raise ValueError("deletion/insertion need the model: pass subject=, or use heatmaps made by a Subject")
    if heatmaps.images is None:
        raise ValueError("deletion/insertion need the heatmaps' images; make the Heatmaps with images=")
    if (heatmaps.targets < 0).any():
        raise ValueError("deletion/insertion need a class target per image; these heatmaps explain a callable target")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    make_substrate = SUBSTRATES.get(substrate) if isinstance(substrate, str) else substrate
    if make_substrate is None:
        raise ValueError(f"unknown substrate {substrate!r}; choose one of {', '.join(SUBSTRATES)} or pass a callable")
    device = subject.device
    height, width = heatmaps.image_size
    pixels = height * width
    counts = torch.round(torch.arange(steps + 1, dtype=torch.float64) * pixels / steps).long().to(device)
    curves = np.full((len(heatmaps), steps + 1), np.nan)
    with subject.audit(), torch.no_grad():
        for start, images in iter_batches(heatmaps.images, subject.batch_size):
            x = images.to(device)
            if tuple(x.shape[-2:]) != (height, width):
                raise ValueError(f"images are {tuple(x.shape[-2:])} but the heatmaps were made at {(height, width)}")
            b = x.shape[0]
            mass = heatmaps.upsample(heatmaps.raw[start : start + b].to(device))
            order = mass.flatten(1).argsort(dim=1, descending=True, stable=True)
            rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels, device=device).expand(b, pixels))
            rank = rank.view(b, 1, height, width)
            base = make_substrate(x)
            targets = heatmaps.targets[start : start + b].to(device)
            pairs = torch.arange(b * (steps + 1), device=device)
            for chunk in pairs.split(subject.batch_size):
                image, step = chunk // (steps + 1), chunk % (steps + 1)
                changed = rank[image] < counts[step].view(-1, 1, 1, 1)
                if insert:
                    perturbed = torch.where(changed, x[image], base[image])
                else:
                    perturbed = torch.where(changed, base[image], x[image])
                probabilities = _class_probabilities(subject.logits(perturbed))
                picked = probabilities.gather(1, targets[image][:, None])[:, 0]
                curves[start + image.cpu().numpy(), step.cpu().numpy()] = picked.double().cpu().numpy()
    return curves


def _class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    if logits.ndim != 2:
        raise ValueError(f"deletion/insertion need (N, classes) outputs, got shape {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return logits.softmax(dim=1)


def _auc_scores(heatmaps: Maps, curves: np.ndarray, name: str, steps: int) -> Scores:
    from scipy.integrate import trapezoid

    values = trapezoid(curves, dx=1.0 / steps, axis=1)
    values[heatmaps.zero.numpy()] = np.nan
    source = {"heatmaps": heatmaps, "curves": curves, "index": np.arange(len(heatmaps))}
    return Scores(values, name, ids=heatmaps.ids, source=source)


def deletion(
    heatmaps: Maps,
    subject: AuditedModel | None = None,
    *,
    steps: int = CURVE_STEPS,
    substrate: str | Callable[[torch.Tensor], torch.Tensor] = DELETION_SUBSTRATE,
) -> Scores:
    """Deletion AUC (RISE: Petsiuk, Das & Saenko, BMVC 2018): lower = the map found what the class needs.

    ``AUC = sum_i (p_i + p_{i+1}) / 2 * (1 / steps)`` over the deletion curve of
    :func:`perturbation_curves` (most important pixels removed first; default substrate zeros, as in
    RISE). NaN for all-zero maps.
    """
    curves = perturbation_curves(heatmaps, subject, insert=False, steps=steps, substrate=substrate)
    return _auc_scores(heatmaps, curves, f"deletion({_substrate_name(substrate)})", steps)


def insertion(
    heatmaps: Maps,
    subject: AuditedModel | None = None,
    *,
    steps: int = CURVE_STEPS,
    substrate: str | Callable[[torch.Tensor], torch.Tensor] = INSERTION_SUBSTRATE,
) -> Scores:
    """Insertion AUC (RISE: Petsiuk, Das & Saenko, BMVC 2018): higher = the map found what the class needs.

    Trapezoidal area under the insertion curve of :func:`perturbation_curves` (most important pixels
    restored first onto the substrate; default a blurred image, as in RISE). NaN for all-zero maps.
    """
    curves = perturbation_curves(heatmaps, subject, insert=True, steps=steps, substrate=substrate)
    return _auc_scores(heatmaps, curves, f"insertion({_substrate_name(substrate)})", steps)


def _substrate_name(substrate: Any) -> str:
    return substrate if isinstance(substrate, str) else getattr(substrate, "__name__", "custom")


# ---- randomisation sanity check ---------------------------------------------------------------
Explainer = Callable[[Any, Any, Any], Maps]


def sanity_check(
    subject: Any,
    images: Any,
    target: Any = None,
    method: str | Explainer = "gradcam",
    *,
    layer: str | None = None,
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> Scores:
    """Cascading model-parameter randomisation (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018).

    On a deep copy of ``subject`` (the audited model is never touched), the parameterised modules
    are re-initialised one after another from the top (output side, reverse registration order;
    or ``layers`` in the order given), cumulatively; after each, the maps are recomputed for the
    same class targets. A named block (e.g. ``layer3``) re-initialises every parameterised module
    inside it at once. ``source``: the original ``heatmaps``, the ``correlations`` per (layer, image)
    and ``randomised``, the first image's signed map after each step (``(layers, h, w)``, CPU; the report
    draws them). Value per layer: the mean over images of the Spearman rank correlation
    ``rho(raw_original, raw_randomised)`` of the signed layer-resolution maps (NaN for a constant
    map). Re-initialisation: ``reset_parameters()`` under ``torch.manual_seed(seed + k)``, else each
    parameter redrawn from ``N(0, std(parameter)^2)``.

    An explanation that reflects the model decorrelates as layers are randomised; one that ignores
    the weights (an edge detector) keeps ``rho = 1``. Audits bound it, e.g. ``assert check.max() < 0.8``.
    ``method``: a ``Subject.gradcam`` method name, or a callable ``(subject, images, target) -> Heatmaps``.
    Cost: one explanation of ``images`` per layer; pass ``layers=`` to check a deep network by blocks.
    """
    explain = _explainer(method, layer)
    original = explain(subject, images, target)
    targets = original.targets.tolist() if bool((original.targets >= 0).all()) else target
    twin = copy.deepcopy(subject)
    order = list(layers) if layers is not None else [
        name for name, module in twin.model.named_modules() if next(module.parameters(recurse=False), None) is not None
    ][::-1]
    modules = [twin.module(name) for name in order]
    before = original.raw.detach().flatten(1).cpu().numpy()
    correlations = np.full((len(order), len(original)), np.nan)
    randomised = []  # the first image's map after each step, for the report (already on the host)
    for k, (layer_name, module) in enumerate(zip(order, modules)):
        _reinitialise(module, seed + k, layer_name)
        with evidence.paused():  # the randomised twin's maps are not evidence about the audited model
            maps = explain(twin, images, targets).raw.detach()
        after = maps.flatten(1).cpu().numpy()
        correlations[k] = [_spearman(a, b) for a, b in zip(before, after)]
        if len(after):
            randomised.append(torch.from_numpy(after[0].reshape(maps.shape[1:]).copy()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an all-NaN row is NaN, on purpose
        values = np.nanmean(correlations, axis=1) if len(original) else np.full(len(order), np.nan)
    name = method if isinstance(method, str) else getattr(method, "__name__", "explainer")
    source = {"heatmaps": original, "correlations": correlations, "randomised": torch.stack(randomised) if randomised else None}
    return Scores(values, f"sanity_check({name})", ids=order, unit="layer", source=source)


def _explainer(method: str | Explainer, layer: str | None) -> Explainer:
    if callable(method):
        return method
    return lambda subject, images, target: subject.gradcam(images, target=target, layer=layer, method=method)


def _reinitialise(module: torch.nn.Module, seed: int, name: str) -> None:
    """Re-initialise every parameterised module inside ``module`` (itself included), in registration order."""
    owners = [m for m in module.modules() if next(m.parameters(recurse=False), None) is not None]
    if not owners:
        raise ValueError(f"layer {name!r} has no parameters to re-initialise; pass layers= with parameterised modules or blocks")
    devices = sorted({p.device for p in module.parameters() if p.device.type == "cuda"}, key=str)
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for owner in owners:
            layouts = _make_contiguous(owner)
            if hasattr(owner, "reset_parameters"):
                owner.reset_parameters()
            else:
                for parameter in owner.parameters(recurse=False):
                    scale = float(parameter.std()) if parameter.numel() > 1 else 1.0
                    parameter.normal_(0.0, scale or 1.0)
            for parameter, layout in layouts:
                parameter.data = layout.copy_(parameter.data)


def _make_contiguous(owner: torch.nn.Module) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """Give ``owner``'s non-contiguous parameters contiguous storage; return each with an empty tensor
    of its old layout to copy the new values back into.

    Random fills (``uniform_``, ``normal_``, ``nn.init``) draw in memory order, so a channels-last
    weight got other values than a contiguous one from the same seed; torch 2.14's ``Conv2d.
    reset_parameters`` initialises through a contiguous buffer, torch 2.11's did not, so the demo's
    channels-last model had another sanity check on each. Filling contiguous storage gives the same
    weights whatever the layout and the torch version.
    """
    layouts = []
    for parameter in owner.parameters(recurse=False):
        if not parameter.is_contiguous():
            layouts.append((parameter, torch.empty_like(parameter.data)))
            parameter.data = parameter.data.contiguous()
    return layouts


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)
