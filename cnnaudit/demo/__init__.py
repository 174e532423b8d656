"""The demo: a nurse/doctor-style shortcut benchmark and two small CNNs trained on it locally.

It retells the bias case of the Grad-CAM paper (section 6.3) with data made from images that ship
with scikit-image, so it runs on a fresh machine with no downloads::

    import cnnaudit as ca
    from cnnaudit import demo

    people = demo.make_people(200, split="test")         # labels, regions "tools"/"face", group "gender"
    biased = ca.Subject(demo.shipped_model("biased"), layer="features", classes=demo.CLASSES)
    nurses = people.where(label="nurse")
    biased.gradcam(nurses, target="nurse").mass_in(nurses.region("face")).mean()   # ~0.7: reads hair

``shipped_model`` loads one of the three models that ship with the package (no training);
``trained_model`` trains any other configuration (under a minute on a CPU) and caches it. See
:mod:`cnnaudit.demo.data` for how the images are made, :mod:`cnnaudit.demo.models` for the models,
and :mod:`cnnaudit.demo.robustness` for the audited figures and their spread over training seeds.
"""

from __future__ import annotations

from cnnaudit.demo.data import CLASSES, GENDERS, SCENES, SPLITS, STEREOTYPE, People, SceneSpec, make_people, synthesize
from cnnaudit.demo.models import (
    SHIPPED,
    VARIANTS,
    PeopleCNN,
    Shipped,
    TrainSpec,
    cache_dir,
    cache_path,
    shipped_model,
    train_model,
    trained_model,
)

__all__ = [
    "CLASSES",
    "GENDERS",
    "SCENES",
    "SHIPPED",
    "SPLITS",
    "STEREOTYPE",
    "VARIANTS",
    "People",
    "PeopleCNN",
    "SceneSpec",
    "Shipped",
    "TrainSpec",
    "cache_dir",
    "cache_path",
    "make_people",
    "shipped_model",
    "synthesize",
    "train_model",
    "trained_model",
]
