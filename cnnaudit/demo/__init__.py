"""The people benchmark: a nurse/doctor-style shortcut data set and two small CNNs trained on it locally.

``make_people(n, split)`` renders images from ``skimage.data`` textures and faces;
``trained_model("clean" | "biased")`` trains (seconds, on the CPU) or loads from the cache the model
learned from the balanced or the biased split. See :mod:`cnnaudit.demo.data` and
:mod:`cnnaudit.demo.models`.
"""

from __future__ import annotations

from cnnaudit.demo.data import CLASSES, GENDERS, SPLITS, SceneSpec, make_people, synthesize
from cnnaudit.demo.models import PeopleCNN, TrainSpec, cache_dir, train_model, trained_model

__all__ = [
    "CLASSES", "GENDERS", "SPLITS", "SceneSpec", "make_people", "synthesize",
    "PeopleCNN", "TrainSpec", "cache_dir", "train_model", "trained_model",
]
