"""The people benchmark: a nurse/doctor-style shortcut data set built from real images in ``skimage.data``.

Every image is a ``size``x``size`` RGB scene in ``[0, 1]`` on a grey grass background
(``skimage.data.grass``) holding ``object_size``x``object_size`` objects at random, non-overlapping
positions: a head, and the tool of the image's class:

- the **tool**, which defines the class: ``"doctor"`` carries a plate of ``skimage.data.gravel``,
  ``"nurse"`` one of ``skimage.data.brick``. Both textures are standardised to the same mean and a
  faint contrast (``tool_contrast``) and tinted with the same random colours, so only the texture
  tells them apart: learnable, but slower to learn than the hair;
- a **head**: a real face from ``skimage.data.lfw_subset`` with a random skin tone and hair colour
  (palettes shared by both groups). The group attribute ``"gender"`` is drawn as hair length:
  ``"female"`` heads have long hair filling the head box around the face, ``"male"`` heads a 2-pixel
  crop above it. Hair is a large, saturated, easy cue: the shortcut a biased model takes.

Splits:

- ``"biased"``: scraped data. Every scene holds one tool; ``bias`` (default: all) of the nurses are
  female and of the doctors male, like the image-search data of the Grad-CAM paper (section 6.3). With
  5% or 2% of counter-examples, some training seeds learnt part of the tools as well within the
  14 epochs, and the biased model then passed some attention audits (measured on seeds 0-7);
- ``"balanced"``: curated data. Each (class, gender) cell holds a quarter of the one-tool scenes, and
  ``curated`` (default 30%) of the scenes show *both* tools (label ``"both"``) or *none*
  (``"none"``), half each, with balanced genders. Their targets are multi-hot (:attr:`People.targets`):
  with "both" scenes in the data, "no brick" no longer implies "doctor", so each class score has to
  be read from its own tool. Without them the two-class task can be solved by detecting one texture
  only, and the other class's heatmaps then spread over the whole scene ("no brick here") for some
  training seeds;
- ``"test"``: one tool per scene, balanced, from held-out faces (the last quarter of the identities)
  and held-out texture rows (the last quarter of each texture), so test images are never crops seen
  in training.

Boxes are ``(x0, y0, x1, y1)`` half-open pixel coordinates: region ``"tools"`` is the tool plate (both
plates in a "both" scene, none in a "none" scene), region ``"face"`` the head box (face and hair); all
are ``object_size`` wide, so mass fractions on them are comparable.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import skimage.data
import torch
from skimage.transform import rescale, resize

if TYPE_CHECKING:
    from cnnaudit.data import ImageSet

CLASSES: tuple[str, ...] = ("doctor", "nurse")
SCENES: tuple[str, ...] = CLASSES + ("both", "none")
"""Image labels: one tool (a class name), both tools, or none (the last two in the curated split only)."""
GENDERS: tuple[str, ...] = ("female", "male")
STEREOTYPE: dict[str, str] = {"doctor": "male", "nurse": "female"}
"""The gender each class goes with in the ``"biased"`` split."""
SPLITS: tuple[str, ...] = ("biased", "balanced", "test")

_HELD_OUT = 0.25  # share of face identities and texture rows kept for the test split
_TOOL_TEXTURES = {"doctor": ("gravel", 0.25), "nurse": ("brick", 0.25)}  # skimage.data name, scale
_TOOL_TINTS = np.array([[0.75, 0.85, 1.0], [0.75, 1.0, 0.8], [1.0, 1.0, 1.0], [1.0, 0.95, 0.7]], np.float32)
_SKIN_TONES = np.array([[1.0, 0.82, 0.68], [0.9, 0.68, 0.5], [0.62, 0.44, 0.3], [1.0, 0.88, 0.8]], np.float32)
_HAIR_COLOURS = np.array([[0.6, 0.25, 0.1], [0.45, 0.2, 0.08], [0.75, 0.4, 0.12]], np.float32)  # auburn, chestnut, copper


@dataclass(frozen=True)
class SceneSpec:
    """Geometry, tool contrast, association strength and the curated share of two-tool and no-tool
    scenes (part of the demo models' cache key)."""

    size: int = 64
    object_size: int = 24
    tool_contrast: float = 0.035
    bias: float = 1.0
    curated: float = 0.3

    def __post_init__(self) -> None:
        if self.object_size < 16 or 2 * self.object_size + 2 > self.size:
            raise ValueError(
                "SceneSpec needs object_size >= 16 and room for two objects side by side and two above each "
                f"other (2 * object_size + 2 <= size); got size={self.size}, object_size={self.object_size}"
            )
        if not 0.0 <= self.curated < 1.0:
            raise ValueError(f"SceneSpec.curated is the share of two-tool and no-tool scenes, in [0, 1); got {self.curated}")
        if not 0.5 <= self.bias <= 1.0:
            raise ValueError(f"SceneSpec.bias is the share of stereotyped images per class, in [0.5, 1]; got {self.bias}")


@dataclass(frozen=True, eq=False)
class People:
    """The arrays behind one split; :func:`make_people` wraps them into an ``ImageSet``."""

    images: torch.Tensor  # float32 (N,3,H,W) in [0,1]
    labels: np.ndarray  # object (N,): one of SCENES
    genders: np.ndarray  # object (N,): "female" | "male"
    tools: tuple[np.ndarray, ...]  # per image, int64 (k,4) boxes (x0, y0, x1, y1) of its k tools, in CLASSES order
    faces: np.ndarray  # int64 (N,4) boxes (x0, y0, x1, y1)
    ids: list[str]

    @property
    def targets(self) -> torch.Tensor:
        """float32 (N, 2) multi-hot: column ``c`` is 1 where the scene shows the tool of ``CLASSES[c]``."""
        shows = [[label in (cls, "both") for cls in CLASSES] for label in self.labels]
        return torch.tensor(shows, dtype=torch.float32).reshape(len(self.labels), len(CLASSES))

    @property
    def stereotyped(self) -> np.ndarray:
        """bool (N,): the image's gender is the one its class goes with in the biased split (False for
        "both" and "none" scenes)."""
        return np.array([STEREOTYPE.get(c) == g for c, g in zip(self.labels, self.genders)], dtype=bool)


def make_people(n: int, split: str = "test", seed: int = 0, spec: SceneSpec = SceneSpec()) -> ImageSet:
    """``n`` images of ``split`` as an ``ImageSet``: labels ``"doctor"``/``"nurse"`` (and ``"both"``/``"none"``
    in the curated split); regions ``"tools"`` and ``"face"``; groups ``"gender"`` (``"female"``/``"male"``)
    and ``"pairing"`` (``"stereotyped"`` where the gender is the one the biased split pairs with the
    class, else ``"counter"``).
    The same arguments always give identical images."""
    from cnnaudit.data import ImageSet

    people = synthesize(n, split, seed, spec)
    tools = [None if len(boxes) == 0 else boxes[0].tolist() if len(boxes) == 1 else boxes.tolist() for boxes in people.tools]
    return ImageSet(
        people.images,
        labels=list(people.labels),
        regions={"tools": tools, "face": people.faces.tolist()},
        groups={"gender": list(people.genders), "pairing": np.where(people.stereotyped, "stereotyped", "counter").tolist()},
        ids=people.ids,
    )


def synthesize(n: int, split: str = "test", seed: int = 0, spec: SceneSpec = SceneSpec()) -> People:
    """Render ``n`` images of ``split`` deterministically from ``(seed, split)`` (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if n < 4:
        raise ValueError(f"n must be at least 4 (one image per class and gender), got {n}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    curated = spec.curated if split == "balanced" else 0.0
    labels, genders = _assign(n, spec.bias if split == "biased" else 0.5, curated, rng)
    held_out = split == "test"
    images = np.empty((n, spec.size, spec.size, 3), np.float32)
    tools: list[np.ndarray] = []
    faces = np.empty((n, 4), np.int64)
    for i in range(n):
        classes = [cls for cls in CLASSES if labels[i] in (cls, "both")]
        boxes = _place(len(classes) + 1, spec, rng)
        faces[i], tools_i = boxes[-1], boxes[:-1].reshape(-1, 4)
        images[i] = _background(spec.size, rng)
        for cls, (x0, y0, x1, y1) in zip(classes, tools_i):
            images[i, y0:y1, x0:x1] = _tool(cls, spec, held_out, rng)
        _draw_head(images[i], faces[i], genders[i], held_out, rng)
        tools.append(tools_i)
    return People(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        labels=labels,
        genders=genders,
        tools=tuple(tools),
        faces=faces,
        ids=[f"{split}-{seed}-{i:05d}" for i in range(n)],
    )


def _assign(n: int, stereotyped_share: float, curated: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels and genders with exact cell counts, then shuffled: ``round(curated * n)`` "both" and "none"
    scenes (half each, the odd one "both"; genders alternating); of the one-tool scenes half per class
    (the odd one a doctor), ``round(share * class size)`` of each class stereotyped."""
    n_curated = int(round(curated * n))
    n_single = n - n_curated
    if n_single < 4:
        raise ValueError(f"n={n} leaves {n_single} one-tool scenes; need at least 4 (one per class and gender)")
    labels: list[str] = []
    genders: list[str] = []
    for k, cls in enumerate(CLASSES):
        n_cls = n_single // 2 + (n_single % 2 if k == 0 else 0)
        n_typical = int(round(stereotyped_share * n_cls))
        other = GENDERS[1 - GENDERS.index(STEREOTYPE[cls])]
        labels += [cls] * n_cls
        genders += [STEREOTYPE[cls]] * n_typical + [other] * (n_cls - n_typical)
    labels += ["both"] * (n_curated - n_curated // 2) + ["none"] * (n_curated // 2)
    genders += [GENDERS[i % 2] for i in range(n_curated - n_curated // 2)] + [GENDERS[i % 2] for i in range(n_curated // 2)]
    order = rng.permutation(n)
    return np.array(labels, dtype=object)[order], np.array(genders, dtype=object)[order]


def _place(k: int, spec: SceneSpec, rng: np.random.Generator) -> np.ndarray:
    """``k`` (1 to 3) random ``object_size`` boxes inside the image, each pair at least 2 px apart
    along x or y, as int64 ``(k, 4)``."""
    s = spec.object_size
    while True:
        x = rng.integers(0, spec.size - s + 1, size=k)
        y = rng.integers(0, spec.size - s + 1, size=k)
        if all(abs(int(x[i]) - int(x[j])) >= s + 2 or abs(int(y[i]) - int(y[j])) >= s + 2
               for i in range(k) for j in range(i + 1, k)):
            return np.stack([x, y, x + s, y + s], axis=1).astype(np.int64)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A grey crop of ``skimage.data.grass`` at half scale, brightness in [0.3, 0.5]."""
    crop = _crop(_texture("grass", 0.5), size, rng, rows=(0.0, 1.0))
    grey = rng.uniform(0.3, 0.5) + 0.35 * (crop - 0.5)
    return np.repeat(grey[..., None], 3, axis=2).clip(0, 1)


def _tool(label: str, spec: SceneSpec, held_out: bool, rng: np.random.Generator) -> np.ndarray:
    """The class's texture: a random crop, rotated by a multiple of 90 degrees, standardised to
    ``0.6 + tool_contrast * z`` (z-scored pixels) and tinted."""
    name, scale = _TOOL_TEXTURES[label]
    patch = np.rot90(_crop(_texture(name, scale), spec.object_size, rng, rows=_rows(held_out)), k=int(rng.integers(4)))
    z = (patch - patch.mean()) / max(float(patch.std()), 1e-6)
    return (0.6 + spec.tool_contrast * z).clip(0, 1)[..., None] * _TOOL_TINTS[rng.integers(len(_TOOL_TINTS))]


def _draw_head(image: np.ndarray, box: np.ndarray, gender: str, held_out: bool, rng: np.random.Generator) -> None:
    """Paint a head into ``box`` (in place): a face ``s/2`` wide and ``0.7 s`` tall at the bottom
    centre; hair filling the rest of the box for "female", a 2-px crop above the face for "male"."""
    x0, y0, x1, _ = (int(v) for v in box)
    s = x1 - x0
    fh, fw = round(0.7 * s), s // 2
    fx, fy = (s - fw) // 2, s - fh
    hair = np.zeros((s, s), bool)
    if gender == "female":
        hair[:] = True
    else:
        hair[fy - 2 : fy, fx : fx + fw] = True
    hair[fy:, fx : fx + fw] = False
    strands = _crop(_texture("grass", 1.0), s, rng, rows=_rows(held_out))
    colour = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))]
    head = image[y0 : y0 + s, x0 : x0 + s]
    head[hair] = ((0.7 + 0.6 * (strands[..., None] - 0.5)) * colour)[hair]
    faces = _faces(held_out)
    face = resize(faces[rng.integers(len(faces))], (fh, fw), anti_aliasing=True)
    tone = _SKIN_TONES[rng.integers(len(_SKIN_TONES))]
    head[fy:, fx : fx + fw] = (0.25 + 0.9 * face[..., None]) * tone
    np.clip(head, 0, 1, out=head)


def _rows(held_out: bool) -> tuple[float, float]:
    """The fraction of a texture's rows a split draws from."""
    return (1.0 - _HELD_OUT, 1.0) if held_out else (0.0, 1.0 - _HELD_OUT)


def _crop(texture: np.ndarray, s: int, rng: np.random.Generator, rows: tuple[float, float]) -> np.ndarray:
    """A random ``s``x``s`` crop lying within the fraction ``rows`` of the texture's height."""
    top, bottom = int(rows[0] * texture.shape[0]), int(rows[1] * texture.shape[0])
    y = int(rng.integers(top, bottom - s + 1))
    x = int(rng.integers(0, texture.shape[1] - s + 1))
    return texture[y : y + s, x : x + s]


@functools.cache
def _texture(name: str, scale: float) -> np.ndarray:
    """A grey ``skimage.data`` image as float32 in [0,1], rescaled by ``scale`` (antialiased)."""
    grey = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
    return grey if scale == 1.0 else rescale(grey, scale, anti_aliasing=True).astype(np.float32)


@functools.cache
def _faces(held_out: bool) -> np.ndarray:
    """The 100 faces of ``skimage.data.lfw_subset`` (its first half), split by index."""
    faces = skimage.data.lfw_subset()[:100].astype(np.float32)
    cut = int(len(faces) * (1.0 - _HELD_OUT))
    return faces[cut:] if held_out else faces[:cut]
