"""Constructed per-user cases for the modality verdicts (benchmark.diagnostics): the rule's
tests and the report's schema-2 diagnostics fixture read the same planted effects."""

from __future__ import annotations

import numpy as np


def planted_cases(effects: list[float], n: int = 200, seed: int = 0) -> dict[int, tuple]:
    """Per seed s: (clean, without) per-user metric vectors; removing the modality lowers a
    user's metric by ``effects[s]`` on average, with per-user noise (so every test has work to
    do); effect 0 gives identical vectors (an unread modality)."""
    rng = np.random.default_rng(seed)
    out = {}
    for s, effect in enumerate(effects):
        clean = rng.uniform(0.0, 0.6, n)
        if effect == 0:
            out[s] = (clean, clean.copy())
        else:
            out[s] = (clean, clean - effect + rng.normal(0.0, 0.1, n))
    return out
