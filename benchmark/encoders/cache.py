"""The on-disk embedding cache: one ``.npz`` per (encoder, checkpoint, preprocessing, modality,
dataset content, perturbation).

The key is a hash of everything that decides the embeddings (see :func:`cache_key`); a changed
checkpoint file, preprocessing setting, dataset file or perturbation gives a new key, so stale
embeddings are never reused. Files are written atomically and read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np

from ..features import ModalityFeatures
from ..io import atomic_write, stable_hash

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the encoding code changes what it computes


def cache_key(*, encoder: str, checkpoint: str | dict, preprocessing: dict, modality: str,
              dataset: str, perturbation: dict | None) -> str:
    """Hash of what decides a modality's embeddings.

    ``checkpoint``: the checkpoint's content hash, or for a harness-trained encoder its
    training recipe, split checksum and seed; ``dataset``: the manifest's content hash;
    ``perturbation``: the input perturbation spec (None when the inputs are clean).
    """
    return stable_hash({"version": CACHE_VERSION, "encoder": encoder, "checkpoint": checkpoint,
                        "preprocessing": preprocessing, "modality": modality,
                        "dataset": dataset, "perturbation": perturbation}, length=32)


class EmbeddingCache:
    """Embeddings stored as ``<root>/embeddings/<key>.npz`` (values, present, meta JSON)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / "embeddings" / f"{key}.npz"

    def load(self, key: str) -> ModalityFeatures | None:
        """The cached features, or None when absent or unreadable (then they are recomputed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                values = z["values"].astype(np.float32, copy=False)
                present = z["present"].astype(bool, copy=False)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            # a truncated or foreign file: recompute rather than fail
            log.warning("embedding cache %s unreadable (%s): recomputing", path, e)
            return None
        return ModalityFeatures(values, present, meta.get("encoder", ""), meta)

    def save(self, key: str, features: ModalityFeatures) -> Path:
        meta = json.dumps({**features.meta, "encoder": features.encoder}, sort_keys=True)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez(f, values=features.values.astype(np.float32, copy=False),
                         present=features.present.astype(bool, copy=False),
                         meta=np.array(meta))

        return atomic_write(self.path(key), write)
