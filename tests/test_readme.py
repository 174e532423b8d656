"""The README's model-family examples run as they are written, and say what they print."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def family_examples() -> list[str]:
    """The ```python blocks of the README's "Model families" section, in order."""
    text = README.read_text()
    section = text.split("## Model families", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_the_model_family_examples_run_and_print_what_their_comments_say(capsys):
    blocks = family_examples()
    assert len(blocks) == 6, "one setup block and one block per family"
    torch.manual_seed(0)
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == ["tokens 14x14 +1", "channels-last 7x7"]
    assert re.fullmatch(r"[0-2] of 2 images had no matching detection", printed[2])
    maps, vis = namespace["maps"], namespace["vis"]
    assert maps.maps.dtype == torch.float32 and tuple(maps.maps.shape) == (2, 256, 256)
    assert tuple(vis.images.shape) == (2, 1, 32, 32)
    person = namespace["person"]
    assert tuple(person.maps.shape) == (2, 224, 224) and person.layer == "backbone.layer4"
    assert namespace["resnet"].layer == "layer4" and namespace["vit"].layer.endswith("encoder_layer_11.ln_1")
