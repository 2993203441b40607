"""Item inputs of the encoders (texts, decoded images) and input perturbations.

An item whose input is missing (empty text, no image entry, an image that does not decode, or an
input a perturbation removed) gets None here, and the encoder never sees it: its features are
marked absent (``present`` False, zeros), not computed from a blank input.

A perturbation is a JSON spec ``{"name": ..., "rate": r, "seed": s, **params}`` naming an entry
of :data:`PERTURBATIONS`: a modality and a function ``(value, rng, params, ctx) -> value or
None`` applied to the clean input of the selected items. The selected items are exactly
``round(r * (n_items - 1))`` items, the first of a permutation of all items seeded by ``s`` alone
(so every model sees the same items perturbed, and the items of a lower rate are a subset of
those of a higher one). ``rng`` is seeded by (``s``, item), so a perturbed input does not depend
on batching or item order. The spec is part of the embedding cache key. Perturbations apply to
the inputs being encoded only: a harness-trained encoder is trained on clean inputs (its
checkpoint is shared by clean and perturbed runs).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.dataset import Dataset, open_image
from ..errors import ConfigError

NO_TEXT = "no text"
NO_IMAGE = "no image entry"
DROPPED = "removed by perturbation"


@dataclass(frozen=True)
class Perturbation:
    """One registered perturbation: the modality it acts on and the function applied."""

    modality: str  # "image" or "text"; "drop" may name several through params["modalities"]
    apply: Callable[[Any, np.random.Generator, dict, Context], Any]
    doc: str


@dataclass(frozen=True)
class Context:
    """What a perturbation may read besides the input: the dataset and the item's id."""

    data: Dataset
    item: int


def _drop(value: Any, rng: np.random.Generator, params: dict, ctx: Context) -> Any:
    return None


def _gaussian(image: Any, rng: np.random.Generator, params: dict, ctx: Context) -> Any:
    from PIL import Image

    sigma = float(params.get("sigma", 50.0))  # in pixel units (0-255)
    pixels = np.asarray(image, dtype=np.float32)
    noisy = pixels + rng.normal(0.0, sigma, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), mode="RGB")


def _blur(image: Any, rng: np.random.Generator, params: dict, ctx: Context) -> Any:
    from PIL import ImageFilter

    radius = float(params.get("radius", max(1.0, min(image.size) / 8)))
    return image.filter(ImageFilter.GaussianBlur(radius))


def _jpeg(image: Any, rng: np.random.Generator, params: dict, ctx: Context) -> Any:
    from PIL import Image

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(params.get("quality", 5)))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def _swap(image: Any, rng: np.random.Generator, params: dict, ctx: Context) -> Any:
    n = ctx.data.n_items
    if n < 3:
        return image
    other = int(rng.integers(1, n - 1))
    other += other >= ctx.item  # uniform over the other items
    swapped, _ = load_image(ctx.data.image_path(other))
    return swapped  # None when the other item has no image: the input goes missing


def _word_dropout(text: str, rng: np.random.Generator, params: dict,
                  ctx: Context) -> str | None:
    words = text.split()
    kept = [w for w in words if rng.random() >= float(params.get("p", 0.5))]
    return " ".join(kept) or None


def _shuffle(text: str, rng: np.random.Generator, params: dict, ctx: Context) -> str:
    words = text.split()
    return " ".join(words[i] for i in rng.permutation(len(words)))


def _typos(text: str, rng: np.random.Generator, params: dict, ctx: Context) -> str:
    p = float(params.get("p", 0.3))  # per word: one character replaced, dropped or swapped
    out = []
    for w in text.split():
        if len(w) > 1 and rng.random() < p:
            i = int(rng.integers(len(w) - 1))
            op = int(rng.integers(3))
            if op == 0:
                w = w[:i] + chr(ord("a") + int(rng.integers(26))) + w[i + 1:]
            elif op == 1:
                w = w[:i] + w[i + 1:]
            else:
                w = w[:i] + w[i + 1] + w[i] + w[i + 2:]
        out.append(w)
    return " ".join(out)


PERTURBATIONS: dict[str, Perturbation] = {
    "drop": Perturbation("*", _drop, "the input goes missing (params: modalities, default all)"),
    "drop_image": Perturbation("image", _drop, "the image goes missing"),
    "drop_text": Perturbation("text", _drop, "the text goes missing"),
    "image_noise": Perturbation("image", _gaussian, "additive Gaussian pixel noise (sigma=50)"),
    "image_blur": Perturbation("image", _blur, "Gaussian blur (radius: 1/8 of the short side)"),
    "image_jpeg": Perturbation("image", _jpeg, "JPEG re-encoding (quality=5)"),
    "modality_swap": Perturbation("image", _swap, "the image of another random item"),
    "word_dropout": Perturbation("text", _word_dropout, "each word dropped with p=0.5"),
    "word_shuffle": Perturbation("text", _shuffle, "the words in random order"),
    "typos": Perturbation("text", _typos, "a character edit in each word with p=0.3"),
}


def check_perturbation(spec: dict | None) -> None:
    """Refuse an unknown perturbation before any work is done."""
    if spec is None:
        return
    if not isinstance(spec, dict) or spec.get("name") not in PERTURBATIONS:
        raise ConfigError(f"unknown perturbation {spec!r} (known: {', '.join(PERTURBATIONS)})")
    rate = spec.get("rate", 0.0)
    if not isinstance(rate, (int, float)) or not 0.0 <= float(rate) <= 1.0:
        raise ConfigError(f"perturbation rate must be in [0, 1], got {rate!r}")


def target_modalities(spec: dict) -> tuple[str, ...]:
    """The modalities a perturbation spec acts on."""
    entry = PERTURBATIONS[spec["name"]]
    if entry.modality == "*":
        return tuple(spec.get("modalities", ("text", "image")))
    return (entry.modality,)


def selected_items(n_items: int, rate: float, seed: int) -> np.ndarray:
    """The ``round(rate * (n_items - 1))`` items a perturbation touches (internal ids, sorted);
    a seeded permutation's prefix, so a lower rate's items are a subset of a higher rate's."""
    order = np.random.default_rng([int(seed), 0x5EED]).permutation(np.arange(1, n_items))
    return np.sort(order[:round(float(rate) * (n_items - 1))])


def load_image(path: Path | None) -> tuple[Any, str | None]:
    """(RGB PIL image, None), or (None, reason) for a missing or undecodable image."""
    if path is None:
        return None, NO_IMAGE
    image, problem = open_image(path)
    return (None, problem) if image is None else (image.convert("RGB"), None)


def perturbed(spec: dict, data: Dataset, item: int, value: Any) -> Any:
    """The perturbation ``spec`` applied to one item's clean input (an RGB image or a text);
    None when it removes the input. The caller checks the item is selected."""
    rng = np.random.default_rng([int(spec.get("seed", 0)), item])
    return PERTURBATIONS[spec["name"]].apply(value, rng, spec, Context(data, item))


class ItemInputs:
    """Loads one modality's input of each item, applies the perturbation and records why
    inputs are missing (``reasons``: reason -> count)."""

    def __init__(self, data: Dataset, modality: str, perturbation: dict | None = None):
        check_perturbation(perturbation)
        self.data, self.modality, self.perturbation = data, modality, perturbation
        self.reasons: dict[str, int] = {}
        self.selected: set[int] = set()
        if perturbation is not None and modality in target_modalities(perturbation):
            self.selected = set(selected_items(data.n_items, perturbation.get("rate", 0.0),
                                               perturbation.get("seed", 0)).tolist())

    def __call__(self, item: int) -> Any:
        if self.modality == "text":
            text = self.data.item_text(item).strip()
            value, reason = (text, None) if text else (None, NO_TEXT)
        else:
            value, reason = load_image(self.data.image_path(item))
        if value is not None and item in self.selected:
            value = perturbed(self.perturbation, self.data, item, value)
            reason = DROPPED if value is None else None
        if reason is not None:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        return value


@dataclass(frozen=True, eq=False)
class PerturbedImage:
    """An item's image under a perturbation, decoded and perturbed only when opened: for an
    encoder that reads image files itself (VLM2Rec) and caches what it encoded by ``str()``."""

    path: Path
    spec: dict
    data: Dataset
    item: int

    def __str__(self) -> str:
        params = ",".join(f"{k}={self.spec[k]}" for k in sorted(self.spec))
        return f"{self.path}#perturbed[{params}]"

    def open(self) -> Any:
        """The perturbed RGB image, or None (unreadable file, or removed by the perturbation)."""
        image, _ = load_image(self.path)
        return None if image is None else perturbed(self.spec, self.data, self.item, image)


def perturbed_content(data: Dataset, spec: dict | None, texts: list, images: list
                      ) -> tuple[list, list]:
    """Per-item raw content (texts, image paths; index = item id) under a perturbation, for a
    model that reads raw content itself: a selected item's text is perturbed now (cheap), its
    image becomes a :class:`PerturbedImage` (None when the perturbation drops it)."""
    check_perturbation(spec)
    if spec is None:
        return texts, images
    texts, images = list(texts), list(images)
    chosen = selected_items(data.n_items, spec.get("rate", 0.0), spec.get("seed", 0)).tolist()
    modalities = target_modalities(spec)
    for item in chosen:
        if "text" in modalities and texts[item]:
            texts[item] = perturbed(spec, data, item, texts[item])
        if "image" in modalities and images[item] is not None:
            dropped = PERTURBATIONS[spec["name"]].apply is _drop
            images[item] = None if dropped else PerturbedImage(images[item], spec, data, item)
    return texts, images
