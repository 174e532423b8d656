"""Per-unit random streams: image ``k``'s randomness depends only on ``(seed, unit key)``.

That is what makes a batched run equal the one-at-a-time runs: no image draws from a stream
that another image has advanced.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

#: stream purposes, so initialisation, training transforms, robustness checks and the pixel ascent's noise
#: never share draws
INIT, TRANSFORMS, ROBUSTNESS, NOISE = 0, 1, 2, 3


def unit_generator(seed: int, key: int, purpose: int) -> torch.Generator:
    """A CPU generator seeded from ``SeedSequence([seed, key, purpose])``."""
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    state = np.random.SeedSequence([int(seed), int(key), int(purpose)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def unit_generators(seed: int, keys: Sequence[int], purpose: int) -> list[torch.Generator]:
    """One generator per unit key."""
    return [unit_generator(seed, key, purpose) for key in keys]
