"""Item content features handed to content-based models.

A model that reads content declares, in its registry entry, which modalities it needs and which
parameter names the encoder of each (``ModelSpec.features``, e.g. ``{"text": "text_encoder"}``).
Before the model is built, the runner calls :func:`prepare_features`, which runs each encoder once
per (encoder, checkpoint, preprocessing, dataset content) and caches the result on disk; the model
then finds the features on its dataset object as ``dataset.item_features[modality]``.

A missing modality (no text, no image entry, an unreadable image) is a *mask*, never a zero
vector fed through an encoder: ``present[i]`` is False and ``values[i]`` is all zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ModalityFeatures:
    values: np.ndarray  # (n_items, dim) float32, rows by internal item id; row 0 (padding) zeros
    present: np.ndarray  # (n_items,) bool; False where the modality is missing; row 0 False
    encoder: str = ""  # the encoder's name, as recorded in results ("harness-trained" if so)
    meta: dict = field(default_factory=dict)  # provenance: cache key, checkpoint hash, settings,
    # missing-input reasons (``benchmark.encoders``); JSON-serialisable

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    def missing_count(self) -> int:
        return int((~self.present[1:]).sum())


ItemFeatures = dict[str, ModalityFeatures]
