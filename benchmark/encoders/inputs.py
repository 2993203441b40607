"""Item inputs of the encoders (texts, decoded images) and input perturbations.

An item whose input is missing (empty text, no image entry, an image that does not decode, or an
input a perturbation removed) gets None here, and the encoder never sees it: its features are
marked absent (``present`` False, zeros), not computed from a blank input.

A perturbation is a JSON spec ``{"name": ..., **params}`` naming an entry of
:data:`PERTURBATIONS`: a function ``(modality, item, value, rng, params) -> value or None``
applied to each clean input. ``rng`` is seeded by (``params["seed"]``, item), so a perturbed
input does not depend on batching or item order. The spec is part of the embedding cache key.
Perturbations apply to the inputs being encoded only: a harness-trained encoder is trained on
clean inputs (its checkpoint is shared by clean and perturbed runs).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data.dataset import Dataset, open_image
from ..errors import ConfigError

NO_TEXT = "no text"
NO_IMAGE = "no image entry"
DROPPED = "removed by perturbation"

Perturb = Callable[[str, int, Any, np.random.Generator, dict], Any]


def _drop(modality: str, item: int, value: Any, rng: np.random.Generator, params: dict) -> Any:
    """``{"name": "drop", "rate": r, "modalities": [...]}``: the input goes missing with
    probability r (in the listed modalities; all when omitted)."""
    if modality not in params.get("modalities", (modality,)):
        return value
    return None if rng.random() < float(params.get("rate", 0.0)) else value


PERTURBATIONS: dict[str, Perturb] = {"drop": _drop}


def check_perturbation(spec: dict | None) -> None:
    """Refuse an unknown perturbation before any work is done."""
    if spec is None:
        return
    if not isinstance(spec, dict) or spec.get("name") not in PERTURBATIONS:
        raise ConfigError(f"unknown perturbation {spec!r} (known: {', '.join(PERTURBATIONS)})")


def load_image(path: Path | None) -> tuple[Any, str | None]:
    """(RGB PIL image, None), or (None, reason) for a missing or undecodable image."""
    if path is None:
        return None, NO_IMAGE
    image, problem = open_image(path)
    return (None, problem) if image is None else (image.convert("RGB"), None)


class ItemInputs:
    """Loads one modality's input of each item, applies the perturbation and records why
    inputs are missing (``reasons``: reason -> count)."""

    def __init__(self, data: Dataset, modality: str, perturbation: dict | None = None):
        check_perturbation(perturbation)
        self.data, self.modality, self.perturbation = data, modality, perturbation
        self.reasons: dict[str, int] = {}

    def __call__(self, item: int) -> Any:
        if self.modality == "text":
            text = self.data.item_text(item).strip()
            value, reason = (text, None) if text else (None, NO_TEXT)
        else:
            value, reason = load_image(self.data.image_path(item))
        if value is not None and self.perturbation is not None:
            params = self.perturbation
            rng = np.random.default_rng([int(params.get("seed", 0)), item])
            value = PERTURBATIONS[params["name"]](self.modality, item, value, rng, params)
            reason = DROPPED if value is None else None
        if reason is not None:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        return value
