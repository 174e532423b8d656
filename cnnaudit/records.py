"""Evidence of one test, recorded while it runs.

An :class:`EvidenceRecorder` is made current (``cnnaudit.evidence.recording``) around each test by
the pytest plugin. Library objects announce themselves with ``evidence.notify(obj)``; the recorder
renders their images to disk at once (a full-size JPEG and a thumbnail, both in ``image_dir``) and
keeps only file names, so memory stays flat however many images a run produces. At the end of the
test :meth:`EvidenceRecorder.finish` returns the test's evidence as plain JSON-able data (it
travels from xdist workers to the controller inside the test report).

A ``Difference`` (``cnnaudit.compare``) is kept as it is and summarised at :meth:`finish`, so its
interval and p-value are computed once, only when a run records, and reuse what the test already
asked for. The summaries themselves (statistics, thresholds, histograms, JUnit properties) are
:mod:`cnnaudit.summaries`; a model's identity is ``Subject.identity()``.

Bounded per object and per test: the first :data:`OVERLAYS_PER_HEATMAPS` overlays of a
``Heatmaps``; the :data:`EXTREMES_PER_SCORES` lowest and highest images of a ``Scores`` with a
heatmap source (a sanity check's: its first image's cascade, at most :data:`CASCADE_STEPS` randomised
overlays, and its per-layer values as a ``curve``); one grid of at most :data:`CHANNELS_PER_GRID` channels per
``Visualizations``, each tile numbered and dead units (:data:`DEAD_EPS`) marked; at
most :data:`IMAGES_PER_TEST` images per test (the rest are counted in ``dropped_images``). Images
are stored at most :data:`EVIDENCE_SIDE` px on their longer side (overlays are drawn at that size,
not drawn at full size and shrunk); each record keeps the ``source_width`` / ``source_height`` it
was downscaled from. An image no larger than its thumbnail is one file, used for both.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cnnaudit.safe_text import digest
from cnnaudit.summaries import (
    delta,
    gate,
    histogram,
    markers,
    number,
    paired_histogram,
    per_image,
    summarize,
    summarize_difference,
)

OVERLAYS_PER_HEATMAPS = 8
EXTREMES_PER_SCORES = 4
CHANGES_PER_COMPARISON = 4
"""Images shown side by side (a's overlay, b's, their difference) for a paired comparison of two heatmap sets."""
CHANNELS_PER_GRID = 64
IMAGES_PER_TEST = 96
THUMBNAIL_SIDE = 128
EVIDENCE_SIDE = 1024
"""Longest side of a stored evidence image: what the report's lightbox shows on a screen."""
GRID_THUMBNAIL_SIDE = 320
DEAD_EPS = 1e-6
"""A unit whose optimised image drives it no higher than this is marked dead in its grid (``Visualizations.dead()``'s
default ``eps``, applied to the activation the optimisation achieved: the grid is drawn when the units are, before
any reachability search)."""
CASCADE_STEPS = 12
"""Randomised overlays shown for a sanity check's cascade (evenly spaced steps, the last included)."""


class EvidenceRecorder:
    """Collects one test's evidence; images go to ``image_dir`` (``None``: record numbers only).

    ``index`` is the test's position in collection order (the report's order within an outcome).
    ``device`` is the session's audit device, recorded with the scores for baselines. ``per_image``:
    keep each Scores' values and ids in its summary (a run that saves a baseline stores them).
    """

    def __init__(self, nodeid: str, image_dir: Path | None, *, index: int = 0, device: str = "cpu",
                 per_image: bool = False) -> None:
        self.nodeid = nodeid
        self.image_dir = image_dir
        self.index = index
        self.device = device
        self.per_image = per_image
        self._prefix = digest(nodeid)
        self._written = 0
        self._dropped = 0
        self._scores: list[tuple[str, Any, dict[str, list[dict]]]] = []
        self._keys: dict[int, str] = {}
        self._differences: list[tuple[str, Any, tuple[str | None, str | None]]] = []
        self._changes: dict[str, list[dict]] = {}
        self._heatmaps: list[dict] = []
        self._visualizations: list[dict] = []
        self._images: list[dict] = []
        self._notes: list[str] = []
        self._models: dict[str, dict] = {}
        self._subjects: set[int] = set()
        self._subject_device: str | None = None
        self._seeds: set[int] = set()
        self._gates: dict[tuple[int, str, str, float], tuple[Any, str, str, float, float, bool]] = {}
        self._drawn: tuple[Any, dict[int, np.ndarray]] = (None, {})

    def __repr__(self) -> str:
        return f"EvidenceRecorder({self.nodeid!r}, images={self._written}, scores={len(self._scores)})"

    # ---- what library code and the audit author call --------------------------------------
    def observe(self, obj: Any) -> None:
        """Record a freshly created library object (``Heatmaps``, ``Scores``, ``Visualizations``, an image).

        Evidence never changes a test's outcome: a failure to record becomes a note.
        """
        kind = next((c.__name__ for c in type(obj).__mro__ if c.__name__ in _OBSERVERS), None)
        try:
            if kind is not None:
                _OBSERVERS[kind](self, obj)
            elif _looks_like_image(obj):
                self.image(type(obj).__name__, obj)
            else:
                self.note(f"{type(obj).__name__}: {repr(obj)[:300]}")
        except Exception as error:  # noqa: BLE001 - recording must not fail the audit
            self.note(f"cnnaudit could not record {type(obj).__name__}: {type(error).__name__}: {error}")

    def image(self, name: str, array: Any, caption: str = "") -> None:
        """Attach an image (see :func:`cnnaudit.render.to_rgb8` for the accepted forms) to this test."""
        from cnnaudit.render import to_rgb8

        image = to_rgb8(array)  # checked even when no image is written
        saved = self._save(lambda: image, title=str(name), caption=str(caption))
        if saved is not None:
            self._images.append(saved)

    def note(self, text: str) -> None:
        """Attach a line of text to this test."""
        self._notes.append(str(text))

    def gated(self, statistic: Any, op: str, threshold: float, holds: bool) -> None:
        """Remember a comparison the audit made with a :class:`~cnnaudit.gates.Statistic` (passed or failed);
        the same comparison made again (in a loop, a retry) replaces the earlier one."""
        owner = statistic.owner
        self._gates.pop((id(owner), statistic.expression, op, threshold), None)
        self._gates[(id(owner), statistic.expression, op, threshold)] = (owner, statistic.expression, op, threshold,
                                                                         float(statistic), holds)

    def key_of(self, scores: Any) -> str:
        """The key ``scores`` is recorded under in this test (its name, ``#2``… for repeats).

        ``ValueError`` for a Scores this test did not record: it has no key, and a baseline
        would never store it.
        """
        if id(scores) not in self._keys:
            raise ValueError(
                f"Scores {getattr(scores, 'name', scores)!r} was not computed in test {self.nodeid!r} (it comes from "
                "outside the test, e.g. a module- or session-scoped fixture), so it is not part of this test's "
                "evidence and no baseline stores it; compute the Scores inside the test (the Subject's heatmap "
                "cache makes that cheap)"
            )
        return self._keys[id(scores)]

    # ---- result -----------------------------------------------------------------------------
    def finish(self, baseline_entry: Callable[[str], dict | None] = lambda key: None) -> dict:
        """The test's evidence as JSON-able data; ``baseline_entry(key)`` gives a Scores' baseline summary.

        The recorder lets go of the Scores and Differences it held (and the heatmaps and images behind them).
        """
        gates = self._gate_summaries()

        def thresholds(kind: str, key: str) -> list[dict]:
            return [{k: v for k, v in g.items() if k not in ("key", "kind")} for g in gates if (g["kind"], g["key"]) == (kind, key)]

        comparisons = self._summaries(
            "comparison", self._differences,
            lambda key, diff, side_keys: {**self._comparison_summary(key, diff, side_keys), "thresholds": thresholds("comparison", key)},
        )
        scores = self._summaries(
            "Scores", self._scores,
            lambda key, obj, images: self._scores_summary(key, obj, images, baseline_entry, thresholds("scores", key)),
        )
        self._scores, self._keys, self._differences, self._gates, self._drawn = [], {}, [], {}, (None, {})
        if "torch" in sys.modules:
            self._seeds.add(int(sys.modules["torch"].initial_seed()))
        environment = None
        if scores:
            from cnnaudit.environment import device_identity

            environment = device_identity(self._subject_device or self.device)
        return {
            "index": self.index,
            "scores": scores,
            "comparisons": comparisons,
            "gates": gates,
            "heatmaps": self._heatmaps,
            "visualizations": self._visualizations,
            "images": self._images,
            "notes": self._notes,
            "models": list(self._models.values()),
            "seeds": sorted(self._seeds),
            "environment": environment,
            "dropped_images": self._dropped,
        }

    def _summaries(self, kind: str, entries: list[tuple], summary: Callable[..., dict]) -> list[dict]:
        """``summary(*entry)`` of each entry; one that fails becomes a note (recording must not fail the audit)."""
        done = []
        for entry in entries:
            try:
                done.append(summary(*entry))
            except Exception as error:  # noqa: BLE001 - see the docstring
                self.note(f"cnnaudit could not summarise {kind} {entry[0]!r}: {type(error).__name__}: {error}")
        return done

    def _gate_summaries(self) -> list[dict]:
        """The gates the audit made, in order, each with the ``key`` and ``kind`` of what it gated:
        ``scores`` or ``comparison`` of this test, ``baseline`` (a stored Scores), or ``other`` (a Scores
        from outside the test, known by its name)."""
        comparison_keys = {id(diff): key for key, diff, _ in self._differences}
        out = []
        for owner, expression, op, threshold, actual, holds in self._gates.values():
            if id(owner) in self._keys:
                kind, key = "scores", self._keys[id(owner)]
            elif id(owner) in comparison_keys:
                kind, key = "comparison", comparison_keys[id(owner)]
            else:
                kind, key = "baseline" if _is_stored(owner) else "other", _outside_key(owner)
            out.append({"key": key, "kind": kind, **gate(expression, op, threshold, actual, holds)})
        return out

    def _comparison_summary(self, key: str, diff: Any, side_keys: tuple[str | None, str | None]) -> dict:
        summary = {"key": key, **summarize_difference(diff)}
        summary["a"]["key"], summary["b"]["key"] = side_keys
        summary["b"]["baseline"] = _is_stored((getattr(diff, "sides", None) or (None, None))[1])
        summary["changes"] = self._changes.pop(key, [])
        summary["histogram"] = paired_histogram(diff.a, diff.b) if diff.paired else None
        return summary

    def _largest_changes(self, diff: Any, labels: list[str]) -> list[dict]:
        """For a paired comparison of two heatmap sets (two models, or two methods, on the same images): the
        :data:`CHANGES_PER_COMPARISON` images whose value changed most, each as a's overlay, b's overlay and
        the difference of the two maps (each scaled to its own maximum, as the overlays show them)."""
        sides = getattr(diff, "sides", None) or (None, None)
        sources = [(getattr(side, "source", None) or {}).get("heatmaps") for side in sides]
        if not diff.paired or diff.ids is None or self.image_dir is None:
            return []
        if any(h is None or h.images is None for h in sources):
            return []
        for heatmaps in sources:
            self._note_subject(getattr(heatmaps, "subject", None))
        where = [{str(i): k for k, i in enumerate(h.ids)} for h in sources]
        change = np.asarray(diff.a) - np.asarray(diff.b)
        out = []
        for j in np.argsort(-np.abs(change), kind="stable")[:CHANGES_PER_COMPARISON]:
            image_id = diff.ids[j]
            index = [w.get(image_id) for w in where]
            if None in index:
                continue
            shots = [
                self._save(lambda h=h, i=i: _overlay(h, i), title=image_id, source_size=h.image_size,
                           caption=" · ".join(filter(None, [f"{label} = {value:.3g}{_model_hint(h)}", _image_facts(h, i)])),
                           short=" · ".join(filter(None, [f"{side} {value:.3g}", _image_facts(h, i)])))
                for h, i, label, value, side in zip(sources, index, labels, (diff.a[j], diff.b[j]), "ab", strict=True)
            ]
            shots.append(self._save(lambda: _map_difference(sources, index), title=image_id,
                                    caption=f"a − b = {change[j]:+.3g} (red: a higher)", short=f"a − b = {change[j]:+.3g}",
                                    source_size=sources[0].image_size))
            if None not in shots:
                out.append({"id": image_id, "change": float(change[j]), "images": shots})
        return out

    def _scores_summary(self, key: str, obj: Any, images: dict, baseline_entry: Callable[[str], dict | None],
                        thresholds: list[dict]) -> dict:
        summary = summarize(obj)
        summary.update(key=key, images=images, model=_identity_of_source(obj))
        stored = baseline_entry(key)
        summary["baseline"] = None if stored is None else {k: v for k, v in stored.items() if k not in ("values", "ids")}
        summary["delta_mean"] = delta(summary["mean"], (summary["baseline"] or {}).get("mean"))
        summary["thresholds"] = thresholds
        summary["histogram"] = histogram(obj.values, markers(summary))
        if summary["unit"] == "layer" and obj.ids is not None:  # a sanity check's cascade: values in layer order
            summary["curve"] = [{"id": str(i), "value": number(v)} for i, v in zip(obj.ids, obj.values, strict=True)]
        if self.per_image:
            summary.update(per_image(obj))
        return summary

    # ---- observers ----------------------------------------------------------------------------
    def _observe_heatmaps(self, heatmaps: Any) -> None:
        self._note_subject(getattr(heatmaps, "subject", None))
        entry = {
            "method": str(heatmaps.method),
            "layer": None if heatmaps.layer is None else str(heatmaps.layer),
            "layout": getattr(heatmaps, "layout", None),  # how the layer was read: "tokens 14x14 +1", ...
            "n": len(heatmaps),
            "zero": int(heatmaps.zero.sum()),
            "images": [],
        }
        if heatmaps.images is not None:
            for i in range(min(len(heatmaps), OVERLAYS_PER_HEATMAPS)):
                facts = _image_facts(heatmaps, i)
                saved = self._save(
                    lambda i=i: self._overlay(heatmaps, i),
                    title=str(heatmaps.ids[i]),
                    caption=" · ".join(filter(None, [str(heatmaps.method), facts])),
                    short=facts or None,  # the card names the method
                    source_size=heatmaps.image_size,
                )
                if saved is not None:
                    entry["images"].append(saved)
        self._heatmaps.append(entry)

    def _observe_scores(self, scores: Any) -> None:
        key = _unique(str(scores.name), {k for k, _, _ in self._scores})
        self._keys[id(scores)] = key
        images = self._extremes(scores)
        cascade = self._cascade(scores)
        if cascade:
            images["cascade"] = cascade
        self._scores.append((key, scores, images))

    def _observe_difference(self, diff: Any) -> None:
        """Keep ``diff`` for :meth:`finish`, keyed ``"<a> − <b>"`` by its sides' keys in this test (else their names)."""
        sides = getattr(diff, "sides", None) or (None, None)
        side_keys = tuple(self._keys.get(id(side)) if side is not None else None for side in sides)
        if sides[0] is None or sides[1] is None:
            label = str(diff.name)
        else:
            label = " \u2212 ".join(key or _outside_key(side) for key, side in zip(side_keys, sides, strict=True))
        key = _unique(label, {k for k, _, _ in self._differences})
        self._differences.append((key, diff, side_keys))
        if sides[0] is not None and sides[1] is not None:
            labels = [k or _outside_key(side) for k, side in zip(side_keys, sides, strict=True)]
            self._changes[key] = self._largest_changes(diff, labels)

    def _observe_visualizations(self, vis: Any) -> None:
        from cnnaudit.images import display_rgb
        from cnnaudit.render import grid

        self._note_subject(getattr(vis, "subject", None))
        channels = [int(c) for c in vis.channels]
        seed = getattr(getattr(vis, "settings", None), "seed", None)
        if isinstance(seed, int):
            self._seeds.add(seed)
        shown = channels[:CHANNELS_PER_GRID]
        layer = getattr(vis, "layer", None)
        title = f"{layer}" if layer is not None else "activation maximisation"
        achieved = getattr(vis, "achieved", None)  # not vis.activation: that would make (and record) a Scores
        dead = [] if achieved is None else [c for c, value in zip(channels, np.asarray(achieved, dtype=np.float64), strict=True)
                                            if not value > DEAD_EPS]
        caption = f"channels {_ranges(shown)}"
        if len(shown) < len(channels):
            caption += f" (first {len(shown)} of {len(channels)})"
        if dead:
            caption += f" · dead (activation ≤ {DEAD_EPS:g}, red X): {_ranges(dead)}"
        dead_set = set(dead)
        marked = [c in dead_set for c in shown]
        saved = self._save(
            lambda: grid(display_rgb(vis.images[: len(shown)]), labels=[str(c) for c in shown], marked=marked),
            title=title, caption=caption, thumbnail_side=GRID_THUMBNAIL_SIDE,
        )
        self._visualizations.append(
            {"layer": None if layer is None else str(layer), "channels": channels,
             "dead": None if achieved is None else dead, "dead_eps": DEAD_EPS, "images": [saved] if saved else []}
        )

    # ---- helpers --------------------------------------------------------------------------------
    def _overlay(self, heatmaps: Any, i: int) -> np.ndarray:
        """:func:`_overlay` of map ``i``, drawn once: a Scores' extremes reuse the overlays its Heatmaps
        just drew (only the last Heatmaps' are kept)."""
        if self._drawn[0] is not heatmaps:
            self._drawn = (heatmaps, {})
        drawn = self._drawn[1]
        if i not in drawn:
            drawn[i] = _overlay(heatmaps, i)
        return drawn[i]

    def _extremes(self, scores: Any) -> dict[str, list[dict]]:
        """Overlays (with region outlines) of the lowest and highest defined values of ``scores``."""
        source = getattr(scores, "source", None) or {}
        heatmaps, regions = source.get("heatmaps"), source.get("regions")
        if heatmaps is None:
            return {}
        self._note_subject(getattr(heatmaps, "subject", None))
        if heatmaps.images is None or self.image_dir is None or getattr(scores, "unit", "image") != "image":
            return {}  # a value per layer or unit is not a value of one image
        values = np.asarray(scores.values, dtype=np.float64)
        ordered = [int(j) for j in np.argsort(values, kind="stable") if np.isfinite(values[j])]
        low_count = min(EXTREMES_PER_SCORES, (len(ordered) + 1) // 2)
        picks = {
            "lowest": ordered[:low_count],
            "highest": ordered[::-1][: min(EXTREMES_PER_SCORES, len(ordered) - low_count)],
        }
        locate = _heatmap_index(scores, heatmaps)
        out: dict[str, list[dict]] = {}
        for label, positions in picks.items():
            out[label] = []
            for j in positions:
                i = locate(j)
                if i is None:
                    continue
                facts = _image_facts(heatmaps, i)
                saved = self._save(
                    lambda i=i: _outlined(self._overlay(heatmaps, i), regions, i),
                    title=str(heatmaps.ids[i]),
                    caption=" · ".join(filter(None, [f"{scores.name} = {values[j]:.3g}", facts])),
                    short=" · ".join(filter(None, [f"{values[j]:.3g}", facts])),  # the card names the Scores
                    source_size=heatmaps.image_size,
                )
                if saved is not None:
                    out[label].append(saved)
        return out

    def _cascade(self, scores: Any) -> list[dict]:
        """A sanity check's cascade for its first image: the original overlay, then the overlay of the map after
        each randomisation step (at most :data:`CASCADE_STEPS`, evenly spaced), from the maps ``sanity_check``
        kept in ``source["randomised"]`` (nothing is recomputed)."""
        source = getattr(scores, "source", None) or {}
        heatmaps, randomised = source.get("heatmaps"), source.get("randomised")
        if heatmaps is None or randomised is None or heatmaps.images is None or self.image_dir is None or not len(heatmaps):
            return []
        steps = len(randomised)
        picked = sorted({round(k * (steps - 1) / (CASCADE_STEPS - 1)) for k in range(CASCADE_STEPS)}) if steps > CASCADE_STEPS \
            else list(range(steps))
        correlations = source.get("correlations")
        layers = list(scores.ids) if scores.ids is not None else [str(k + 1) for k in range(steps)]
        title = str(heatmaps.ids[0])
        shots = [self._save(lambda: self._overlay(heatmaps, 0), title=title, source_size=heatmaps.image_size,
                            caption=" · ".join(filter(None, ["original", _image_facts(heatmaps, 0)])), short="original")]
        for k in picked:
            rho = None if correlations is None else float(np.asarray(correlations)[k, 0])
            said = "" if rho is None or not np.isfinite(rho) else f"ρ = {rho:.2f}"
            caption = f"step {k + 1}: {layers[k]} randomised" + (f", {said} with the original map" if said else "")
            shots.append(self._save(lambda k=k: _overlay(heatmaps, 0, raw=randomised[k]), title=title, caption=caption,
                                    short=" · ".join(filter(None, [said, f"{k + 1}. {layers[k]}"])),
                                    source_size=heatmaps.image_size))
        return [shot for shot in shots if shot is not None]

    def _note_subject(self, subject: object) -> None:
        if subject is None or id(subject) in self._subjects:
            return
        self._subjects.add(id(subject))
        device = getattr(subject, "device", None)
        if device is not None and self._subject_device is None:
            self._subject_device = str(device)
        described = model_identity(subject)
        if described is not None:
            self._models.setdefault(str(described.get("sha256")), described)

    def _save(self, render: Callable[[], np.ndarray], *, title: str, caption: str, short: str | None = None,
              thumbnail_side: int = THUMBNAIL_SIDE, source_size: tuple[int, int] | None = None) -> dict | None:
        """Render the image (at most :data:`EVIDENCE_SIDE` px) and write it and its thumbnail as JPEGs;
        return the record. ``source_size``: the ``(H, W)`` the image stands for, if ``render`` drew it smaller.
        ``short``: what the thumbnail's one caption line says first, when not ``caption`` (which the lightbox shows).

        Nothing is rendered without an image folder or past the per-test limit (``None``).
        """
        if self.image_dir is None:
            return None
        if self._written >= IMAGES_PER_TEST:
            self._dropped += 1
            return None
        from cnnaudit.render import thumbnail

        image = render()
        source_height, source_width = source_size or image.shape[:2]
        image = thumbnail(image, EVIDENCE_SIDE)
        self._written += 1
        stem = f"{self._prefix}-{self._written:03d}"
        full = f"{stem}.jpg"
        full_bytes = _write_jpeg(image, self.image_dir / full, quality=90)
        small = thumbnail(image, thumbnail_side)
        if small is image:  # no larger than a thumbnail: one file serves as both
            thumb, thumb_bytes = full, full_bytes
        else:
            thumb = f"{stem}.t.jpg"
            thumb_bytes = _write_jpeg(small, self.image_dir / thumb, quality=80)
        return {
            "id": stem,
            "title": title,
            "caption": caption,
            **({"short": short} if short is not None else {}),
            "file": full,
            "thumb": thumb,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "source_width": int(source_width),
            "source_height": int(source_height),
            "thumb_width": int(small.shape[1]),
            "thumb_height": int(small.shape[0]),
            "thumb_bytes": thumb_bytes,
        }


_OBSERVERS: dict[str, Callable[[EvidenceRecorder, Any], None]] = {
    "View": lambda recorder, view: recorder.image(view.name, view.image),
    "Heatmaps": EvidenceRecorder._observe_heatmaps,
    "Scores": EvidenceRecorder._observe_scores,
    "Difference": EvidenceRecorder._observe_difference,
    "Visualizations": EvidenceRecorder._observe_visualizations,
}


# ---- small helpers ---------------------------------------------------------------------------------
def evidence_size(size: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` shrunk (aspect kept) so that the longer side is at most :data:`EVIDENCE_SIDE`."""
    scale = min(1.0, EVIDENCE_SIDE / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _overlay(heatmaps: Any, i: int, raw: Any = None) -> np.ndarray:
    """Overlay of map ``i`` alone, drawn at :func:`evidence_size`: ``bilinear(relu(raw_i))`` at that size
    over max (as ``Heatmaps.maps`` at input size, which it equals for images no larger) without computing
    all maps or a full-size one. ``raw``: another ``(h, w)`` map drawn over image ``i`` instead (a randomised one)."""
    import torch.nn.functional as F

    from cnnaudit.render import overlay

    size = evidence_size(heatmaps.image_size)
    signed = heatmaps.raw[i] if raw is None else raw
    mass = F.interpolate(signed[None, None].float().clamp(min=0), size=size, mode="bilinear", align_corners=False)
    mass = mass[0, 0].cpu().numpy()
    peak = mass.max()
    return overlay(heatmaps.image(i, size), mass / peak if peak > 0 else mass)


def _model_hint(heatmaps: Any) -> str:
    """``", model 1f130763"``: the start of the heatmaps' model hash, which tells two models' overlays apart."""
    identity = model_identity(getattr(heatmaps, "subject", None)) or {}
    return f", model {str(identity['sha256'])[:8]}" if identity.get("sha256") else ""


def _map_difference(sources: list[Any], index: list[int]) -> np.ndarray:
    """Map ``index[0]`` of ``sources[0]`` minus map ``index[1]`` of ``sources[1]``, each as its overlay scales it
    (``relu(raw)`` at evidence size over its maximum), over the first's image in grey."""
    import torch.nn.functional as F

    from cnnaudit.render import difference

    size = evidence_size(sources[0].image_size)
    maps = []
    for heatmaps, i in zip(sources, index, strict=True):
        mass = F.interpolate(heatmaps.raw[i : i + 1, None].clamp(min=0), size=size, mode="bilinear", align_corners=False)
        mass = mass[0, 0].cpu().numpy()
        peak = mass.max()
        maps.append(mass / peak if peak > 0 else mass)
    return difference(sources[0].image(index[0], size), maps[0] - maps[1])


def _outlined(image: np.ndarray, regions: Any, i: int) -> np.ndarray:
    """Overlay ``image`` of map ``i`` with the outline of its region (width about 1% of the image's side)."""
    from cnnaudit.render import outline

    if regions is None:
        return image
    mask = np.asarray(regions.mask(i, image.shape[:2]), dtype=bool)
    return outline(image, mask, width=max(1, min(image.shape[:2]) // 100))


def _heatmap_index(scores: Any, heatmaps: Any) -> Callable[[int], int | None]:
    """Map a position in ``scores`` to a heatmap index: ``source["index"]``, else by id, else positionally."""
    index = scores.source.get("index")
    if index is not None:
        return lambda j: int(index[j])
    ids = getattr(scores, "ids", None)
    if ids is not None and len(ids) == len(scores.values):
        where = {str(hid): i for i, hid in enumerate(heatmaps.ids)}
        return lambda j: where.get(str(ids[j]))
    if len(scores.values) == len(heatmaps):
        return lambda j: j
    return lambda j: None


def _image_facts(heatmaps: Any, i: int) -> str:
    """What a caption says about image ``i`` of ``heatmaps``, where known: ``"label doctor · predicted nurse ·
    target nurse · gender=female · pairing=counter"``.

    The label and the groups come from the ImageSet the maps were computed on; ``predicted`` is the model's
    class (``Heatmaps.predictions``), the target the class the map explains (``Heatmaps.targets``). A callable
    target (``-1``) and an unknown prediction are not named."""
    images = getattr(heatmaps, "images", None)
    facts = []
    labels = getattr(images, "labels", None)
    if labels is not None and i < len(labels) and labels[i] is not None:  # a COCO image of several categories: None
        facts.append(f"label {labels[i]}")
    classes = getattr(getattr(heatmaps, "subject", None), "classes", None)
    predictions = getattr(heatmaps, "predictions", None)
    for what, index in (("predicted", -1 if predictions is None else int(predictions[i])), ("target", int(heatmaps.targets[i]))):
        if index >= 0:
            facts.append(f"{what} {classes[index] if classes and index < len(classes) else index}")
    groups = getattr(images, "_groups", None)  # ImageSet's group columns (its public face is group(name))
    if isinstance(groups, dict):
        facts += [f"{name}={column[i]}" for name, column in groups.items() if i < len(column)]
    return " · ".join(facts)


def _write_jpeg(image: np.ndarray, path: Path, quality: int) -> int:
    """Write ``image`` as a JPEG file; returns its size in bytes."""
    import io

    from PIL import Image

    encoded = io.BytesIO()
    Image.fromarray(image).save(encoded, format="JPEG", quality=quality, subsampling=0)
    return path.write_bytes(encoded.getbuffer())


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    count = 2
    while f"{name}#{count}" in taken:
        count += 1
    return f"{name}#{count}"


def _ranges(channels: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    runs: list[list[int]] = []
    for c in channels:
        if runs and c == runs[-1][-1] + 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def _looks_like_image(obj: Any) -> bool:
    shape = getattr(obj, "shape", None)
    return shape is not None and len(shape) in (2, 3)


def _is_stored(scores: object) -> bool:
    """Whether ``scores`` was read from a baseline (``StoredScores``, ``StoredSummary``)."""
    return hasattr(scores, "nodeid") and hasattr(scores, "key")


def _outside_key(scores: object) -> str:
    """How a Scores that is not this test's own is named: ``baseline(<key>)`` if read from a baseline, else its name."""
    return f"baseline({scores.key})" if _is_stored(scores) else str(getattr(scores, "name", type(scores).__name__))


def _identity_of_source(scores: Any) -> dict | None:
    return model_identity(getattr((getattr(scores, "source", None) or {}).get("heatmaps"), "subject", None))


def model_identity(subject: object) -> dict | None:
    """``subject.identity()`` (model class, parameter count, state hash), or ``None`` for an object without one."""
    identity = getattr(subject, "identity", None)
    return identity() if callable(identity) else None
