"""The demo: a nurse/doctor-style shortcut benchmark and two small CNNs trained on it locally.

It retells the bias case of the Grad-CAM paper (section 6.3) with data made from images that ship
with scikit-image, so it runs on a fresh machine with no downloads::

    import cnnaudit as ca
    from cnnaudit import demo

    people = demo.make_people(200, split="test")         # labels, regions "tools"/"face", group "gender"
    biased = ca.Subject(demo.trained_model("biased"), layer="features", classes=demo.CLASSES)
    nurses = people.where(label="nurse")
    biased.gradcam(nurses, target="nurse").mass_in(nurses.region("face")).mean()   # ~0.7: reads hair

``trained_model`` trains in seconds on a CPU the first time and loads from the user's cache after.
See :mod:`cnnaudit.demo.data` for how the images are made and :mod:`cnnaudit.demo.models` for the
models and the cache.
"""

from __future__ import annotations

from cnnaudit.demo.data import CLASSES, GENDERS, SPLITS, STEREOTYPE, People, SceneSpec, make_people, synthesize
from cnnaudit.demo.models import VARIANTS, PeopleCNN, TrainSpec, cache_dir, cache_path, train_model, trained_model

__all__ = [
    "CLASSES",
    "GENDERS",
    "SPLITS",
    "STEREOTYPE",
    "VARIANTS",
    "People",
    "PeopleCNN",
    "SceneSpec",
    "TrainSpec",
    "cache_dir",
    "cache_path",
    "make_people",
    "synthesize",
    "train_model",
    "trained_model",
]
