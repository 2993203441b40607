"""Harness-pretrained VLM stand-ins: tiny VLMs whose two branches carry their modality.

A random stand-in (:mod:`methods.vlm2rec.tiny`) has nothing to protect: its vision tower is noise,
so an experiment about modality collapse cannot run on it. This module plays the part of web
pre-training, offline and in minutes on one CPU core: it builds the same tiny checkpoint, then
fully fine-tunes it (vision tower and language model, no LoRA) on a captioned corpus rendered by
the synthetic world's generator under its own seed space (:mod:`benchmark.data.corpus`: images
of coloured shapes with captions naming them, product texts with brand and product words). The
corpus is disjoint from every catalogue: it never reads interactions, groups, coldness, splits
or items.

Objective, with the embedder's own pooling (last token, L2-normalised) and prompts:

- image side: symmetric InfoNCE between an image prompt and the text prompt of its caption
  (false negatives, same colour and shape, masked), so the image branch encodes colour and shape;
- text side: symmetric InfoNCE between two product texts of the same brand and product, so the
  text branch encodes brand and product;
- every other step of each side uses *bags*: a user prompt holding ``bag_len`` images against
  the user prompt listing their captions (and bags of texts against bags of other texts with the
  same labels), so the user prompts VLM2Rec uses are not out of distribution.

``image_pretrain_scale`` (the planted-imbalance knob) is the share of steps spent on the image
side: 0.5 is balanced; a small value leaves the image branch weak (the setting where contrastive
SFT is expected to collapse onto text).

On a real dataset the corpus covers neither the images nor the words, so the **items** recipe
(``pretrain=items``, the counterpart of ``harness-clip-items``) pre-trains the same backbone with
the same objective code on the dataset's own *training* items (items with a training interaction
in the split; never a validation/test-only item, never an interaction): image side, an item's
image prompt <-> the item-text prompt of its own text; text side, two word-dropout views of an
item's text. Its tokenizer is trained on those items' texts only.

Names: ``pretrained-<size>-<family>`` with optional recipe overrides after a colon, e.g.
``pretrained-tiny-qwen2-vl:image_pretrain_scale=0.1,steps=400`` or
``pretrained-tiny-qwen2-vl:pretrain=items``. The checkpoint is built once into
``<cache>/checkpoints/`` under a key of the whole recipe (a changed recipe re-trains, the same
recipe loads; the items recipe's key adds the dataset's content hash and the split's training
item set) and its ``harness_tiny.json`` says ``kind: "harness-pretrained"``.

:func:`probe_branches` measures what each branch carries (linear probes, train on warm items,
test on cold ones): the "other modality degrades" claim made measurable before and after SFT.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.errors import ConfigError

PRETRAIN_VERSION = 1  # bump when the objective, schedule, corpus or item use change
PRETRAINED_PREFIX = "pretrained-"
PRETRAINED_NAME = re.compile(
    r"pretrained-(tiny|small)-(qwen2-vl|qwen2\.5-vl|smolvlm|idefics3|fast-vlm)(?::(.*))?")
STAND_IN_KIND = "harness-pretrained"
PRETRAIN_LOG = "pretrain_log.jsonl"  # cost + step log (not hashed: see build_pretrained_...)
_PROBE_CORPUS_SEED_OFFSET = 1_000_003  # the held-out probe corpus: another corpus seed
PROBE_N = 512  # held-out corpus samples per modality for the marker's probes


SOURCES = ("corpus", "items")  # what a stand-in is pre-trained on
VISION_INITS = ("random", "harness-clip")
#: families whose corpus recipe starts from the harness-clip image tower (its EfficientNet is
#: fast-vlm's tower; the ViT families' towers have another shape)
VISION_INIT_DEFAULT = {"fast-vlm": "harness-clip"}
#: recipe knobs that apply to one source only
_ONLY = {"corpus": ("corpus_n", "corpus_seed", "hard_colours", "partial_captions"),
         "items": ("word_dropout", "holdout")}


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that decides a harness-pretrained stand-in (its cache key).

    ``image_pretrain_scale``: share of the optimisation steps on the image side (image prompt
    <-> caption prompt); the rest go to the text side (text <-> text of the same brand+product).
    ``bag_len`` > 1: every other step of each side embeds bags of that many images / texts in
    the user prompts instead of single items. ``pretrain``: ``"corpus"`` (the rendered corpus)
    or ``"items"`` (the dataset's training items); the knobs of the other source must stay at
    their defaults and are not part of the key.
    """

    pretrain: str = "corpus"
    family: str = "qwen2-vl"
    size: str = "tiny"
    vision: str = ""  # the vision tower's size (tiny.VISION_SIZES); "": the one of ``size``
    steps: int = 600
    batch: int = 32
    learning_rate: float = 3e-3
    warmup: float = 0.05
    tau: float = 0.05
    image_pretrain_scale: float = 0.5
    bag_len: int = 3
    hard_colours: int = 0  # > 0: single-image batches hold this many colours (shape must tell)
    partial_captions: int = 0  # 1: half the single-image steps pair images with the corpus's
    # shape-only or colour-only captions (a direct signal for each attribute); 0: full only
    corpus_n: int = 2048
    corpus_seed: int = 0
    image_size: int = 32
    max_text_tokens: int = 32
    seed: int = 0
    word_dropout: float = 0.3  # items: share of words dropped from each of two text views
    holdout: float = 0.0  # items: share of the training items withheld from pre-training
    # (seeded; for held-out probes of what pre-training generalises, never for a benchmark run)
    vision_init: str = ""  # "random", or "harness-clip": the image tower of the harness-clip
    # corpus recipe (a contrastively pre-trained CLIP image encoder, as real VLMs are built on),
    # then kept frozen; "": the family's default (VISION_INIT_DEFAULT)

    def __post_init__(self) -> None:
        from .tiny import FAMILIES, SIZES, VISION_SIZES

        if self.family not in FAMILIES:
            raise ConfigError(f"pretrain: family {self.family!r} not in {FAMILIES}")
        if self.size not in SIZES:
            raise ConfigError(f"pretrain: size {self.size!r} not in {SIZES}")
        if self.vision and self.vision not in VISION_SIZES:
            raise ConfigError(f"pretrain: vision {self.vision!r} not in {VISION_SIZES}")
        if not 0.0 <= self.image_pretrain_scale <= 1.0:
            raise ConfigError(f"pretrain: image_pretrain_scale={self.image_pretrain_scale} "
                              "must be in [0, 1]")
        for name in ("steps", "corpus_seed", "seed", "hard_colours", "partial_captions"):
            if getattr(self, name) < 0:
                raise ConfigError(f"pretrain: {name}={getattr(self, name)} must be >= 0")
        for name in ("batch", "bag_len", "corpus_n", "max_text_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pretrain: {name}={getattr(self, name)} must be >= 1")
        if self.batch < 2:
            raise ConfigError("pretrain: batch must be >= 2 (in-batch negatives)")
        if self.learning_rate <= 0 or self.tau <= 0 or not 0 <= self.warmup < 1:
            raise ConfigError("pretrain: learning_rate and tau must be > 0, warmup in [0, 1)")
        if self.pretrain not in SOURCES:
            raise ConfigError(f"pretrain: pretrain={self.pretrain!r} not in {SOURCES}")
        if not 0 <= self.word_dropout < 1 or not 0 <= self.holdout < 1:
            raise ConfigError("pretrain: word_dropout and holdout must be in [0, 1)")
        if self.vision_init not in ("", *VISION_INITS):
            raise ConfigError(f"pretrain: vision_init={self.vision_init!r} not in {VISION_INITS}")
        if self.initial_vision() == "harness-clip" and (
                self.family != "fast-vlm" or self.pretrain != "corpus" or self.vision):
            raise ConfigError("pretrain: vision_init=harness-clip needs family fast-vlm, its "
                              "default vision tower and pretrain=corpus (the harness-clip "
                              "corpus recipe's EfficientNet)")
        defaults = {f.name: f.default for f in fields(self)}
        other = self._other_source()
        for name in _ONLY[other]:
            if getattr(self, name) != defaults[name]:
                raise ConfigError(f"pretrain: {name} applies to pretrain={other} only")

    def _other_source(self) -> str:
        return SOURCES[1 - SOURCES.index(self.pretrain)]

    def initial_vision(self) -> str:
        """Where the vision tower starts: ``vision_init``, or the family's default for the
        corpus recipe (random for the items recipe: no harness-clip tower of that shape)."""
        if self.vision_init:
            return self.vision_init
        default = VISION_INIT_DEFAULT.get(self.family, "random")
        return default if self.pretrain == "corpus" and not self.vision else "random"

    def spec(self) -> dict[str, Any]:
        """The fields that decide the weights: the other source's knobs are left out (so a
        corpus checkpoint keeps the key and marker it had before the items recipe existed), and
        the vision tower's start is resolved and named only when it is not random (same)."""
        drop = _ONLY[self._other_source()] + (("pretrain",) if self.pretrain == "corpus" else ())
        out = {k: v for k, v in asdict(self).items() if k not in drop and k != "vision_init"}
        if self.initial_vision() != "random":
            out["vision_init"] = self.initial_vision()
        return out

    def key(self, data=None, split=None) -> str:
        """Stable hash of the recipe, its data (the corpus identity; for the items recipe the
        dataset's content hash and the split's training item set) and the code version."""
        from benchmark.data.corpus import corpus_fingerprint
        from benchmark.io import stable_hash

        if self.pretrain == "corpus":
            source = {"corpus": corpus_fingerprint(self.corpus_n, self.corpus_seed,
                                                   self.image_size)}
        else:
            source = items_fingerprint(data, split)
        if self.initial_vision() == "harness-clip":
            from benchmark.encoders import harness_clip

            source["vision_tower"] = harness_clip.fingerprint(None, None, 0,
                                                              harness_clip.CORPUS_RECIPE)
        return stable_hash({"version": PRETRAIN_VERSION, **self.spec(), **source})

    def image_step(self, step: int) -> bool:
        """Whether optimisation step ``step`` is on the image side: a deterministic schedule
        that spreads ``round(steps * scale)`` image steps evenly."""
        s = self.image_pretrain_scale
        return math.floor((step + 1) * s + 1e-9) > math.floor(step * s + 1e-9)


def parse_name(name: str) -> PretrainRecipe | None:
    """The recipe a ``pretrained-<size>-<family>[:key=value,...]`` name asks for (None for any
    other name); ConfigError on an unknown key or a bad value."""
    match = PRETRAINED_NAME.fullmatch(name)
    if match is None:
        if name.startswith(PRETRAINED_PREFIX):
            raise ConfigError(f"vlm {name!r}: expected pretrained-<tiny|small>-<family>"
                              "[:key=value,...]")
        return None
    size, family, rest = match.groups()
    types = {f.name: f.type for f in fields(PretrainRecipe)}
    overrides: dict[str, Any] = {}
    for part in filter(None, (rest or "").split(",")):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in types or key in ("family", "size"):
            allowed = sorted(set(types) - {"family", "size"})
            raise ConfigError(f"vlm {name!r}: bad override {part!r} (key=value, keys: "
                              f"{', '.join(allowed)})")
        cast = {"float": float, "int": int, "str": str}[str(types[key])]
        try:
            overrides[key] = cast(value)
        except ValueError:
            raise ConfigError(f"vlm {name!r}: {key}={value!r} is not a {cast.__name__}") from None
    return PretrainRecipe(family=family, size=size, **overrides)


def resolve_pretrained(name: str, cache_dir: Path, data=None, split=None) -> Path:
    """The checkpoint folder of a ``pretrained-...`` name, built once into
    ``<cache_dir>/checkpoints/``: for the corpus recipe independent of any dataset; for the
    items recipe one per (recipe, dataset content, training item set of ``split``). A name
    without ``pretrain=`` means the corpus recipe on the synthetic world (or with no dataset)
    and the items recipe on any other dataset."""
    from benchmark.encoders.harness_clip import is_synthetic
    from benchmark.io import build_dir_once

    recipe = parse_name(name)
    if recipe is None:
        raise ConfigError(f"{name!r} is not a pretrained-<size>-<family> stand-in name")
    if (data is not None and recipe.pretrain == "corpus" and "pretrain=" not in name
            and not is_synthetic(data)):
        # the corpus covers the synthetic world's images and words only: on any other dataset
        # the name means the items recipe, as ``harness-clip`` does
        recipe = replace(recipe, pretrain="items")
    source = "" if recipe.pretrain == "corpus" else f"{recipe.pretrain}-"
    target = Path(cache_dir) / "checkpoints" / (
        f"pretrained-{recipe.size}-{recipe.family}-{source}{recipe.key(data, split)}")
    return build_dir_once(
        target, lambda tmp: build_pretrained_checkpoint(recipe, tmp, data=data, split=split,
                                                        cache_dir=cache_dir),
        marker="config.json")


# ----------------------------------------------------------------------------- training items

@dataclass
class PretrainItems:
    """What the items recipe reads: the dataset's training items (``split``'s training
    sequences), less the ``holdout`` share withheld; the others' content is never loaded."""

    ids: np.ndarray  # item ids pre-trained on (sorted)
    withheld: np.ndarray  # training items withheld by ``holdout`` (sorted; usually empty)
    texts: list[str | None]  # item text per id (``model.item_text``: what VLM2Rec reads)
    images: list[Any]  # RGB PIL image per id, None where missing or unreadable


def _need_split(data, split) -> None:
    if data is None or split is None:
        raise ConfigError("pretrain=items pre-trains on the dataset's training items: it needs "
                          "the dataset and its split")


def items_fingerprint(data, split) -> dict:
    """The items recipe's data identity: the dataset's content hash (texts and image bytes)
    and the split's training item set (not its interactions: nothing else is read)."""
    from benchmark.encoders.harness_clip import training_items
    from benchmark.io import stable_hash

    _need_split(data, split)
    return {"dataset": data.content_hash,
            "train_items": stable_hash(training_items(split).tolist())}


def pretrain_item_ids(recipe: PretrainRecipe, split) -> tuple[np.ndarray, np.ndarray]:
    """(pre-trained, withheld) item ids: the split's training items, ``recipe.holdout`` of them
    withheld by a permutation seeded by ``recipe.seed``."""
    from benchmark.encoders.harness_clip import training_items

    train = training_items(split)
    rng = np.random.default_rng(np.random.SeedSequence(recipe.seed, spawn_key=(11,)))
    withheld = rng.permutation(train)[:round(recipe.holdout * len(train))]
    return np.setdiff1d(train, withheld), np.sort(withheld)


def load_pretrain_items(recipe: PretrainRecipe, data, split) -> PretrainItems:
    """Texts and images of the items the items recipe pre-trains on (clean content: a
    perturbation tests the recommender, not the backbone's pre-training data)."""
    from benchmark.encoders.inputs import load_image

    from .model import item_text

    _need_split(data, split)
    ids, withheld = pretrain_item_ids(recipe, split)
    texts = [item_text(data, int(i)) for i in ids]
    images = [load_image(data.image_path(int(i)))[0] for i in ids]
    return PretrainItems(ids, withheld, texts, images)


# ------------------------------------------------------------------------------- pretraining

def _lr(step: int, recipe: PretrainRecipe) -> float:
    """Linear warmup then cosine decay to 0 (a multiplier of the base rate)."""
    warm = max(1, round(recipe.warmup * recipe.steps))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, recipe.steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class _Encoder:
    """Prompts -> pooled embeddings with gradients through the whole backbone (the embedder's
    own image cache assumes a frozen vision tower, so images go through it here directly)."""

    def __init__(self, emb, pixels: list[Any]):
        self.emb, self.pixels = emb, pixels

    def images(self, bags: list[list[int]]):
        """One prompt per bag of corpus image indices (item prompt for a single image)."""
        flat = [i for bag in bags for i in bag]
        feats = self.emb.family.encode_images(self.emb._core, [self.pixels[i] for i in flat])
        payloads, k = [], 0
        for bag in bags:
            payloads.append(feats[k:k + len(bag)])
            k += len(bag)
        rows = [self.emb.tokens.images(0 if len(bag) == 1 else len(bag)) for bag in bags]
        return self.emb._embed(rows, payloads)

    def texts(self, bags: list[list[str]]):
        """One prompt per bag of texts (item prompt for a single text)."""
        cleaned = [[t for t in self.emb._texts(bag) if t] for bag in bags]
        tok = self.emb.tokens
        rows = [tok.item_text(bag[0]) if len(bag) == 1 else tok.user_text(bag)
                for bag in cleaned]
        return self.emb._embed(rows, [[] for _ in bags])


def _symmetric_nce(a, b, tau: float, labels) -> Any:
    from .losses import info_nce

    return 0.5 * (info_nce(a, b, tau, labels) + info_nce(b, a, tau, labels))


class _CorpusBatches:
    """The corpus recipe's batches. Image side: image prompts against caption prompts (single
    items: full captions, or with ``partial_captions`` a cycle of full, shape-only, full,
    colour-only; ``hard_colours`` restricts single-image batches to a few colours). Text side:
    product texts against other texts of the same brand and product. Keys: the labels that make
    two rows false negatives of each other."""

    def __init__(self, emb, corpus, recipe: PretrainRecipe, rng: np.random.Generator):
        self.corpus, self.recipe, self.rng = corpus, recipe, rng
        self.enc = _Encoder(emb, emb.family.preprocess(corpus.pil_images()))
        n_shapes = int(corpus.shape.max()) + 1
        n_products = int(corpus.product.max()) + 1
        self.image_label = corpus.color * n_shapes + corpus.shape
        self.text_label = corpus.brand * n_products + corpus.product
        self.by_text_label = {int(k): np.flatnonzero(self.text_label == k)
                              for k in np.unique(self.text_label)}
        self.singles = 0

    def __call__(self, side: str, k: int):
        corpus, recipe, rng, enc = self.corpus, self.recipe, self.rng, self.enc
        pool = np.arange(len(corpus))
        if side == "image" and k == 1 and recipe.hard_colours > 0:
            # hard negatives: with few colours in the batch, colour alone cannot tell the
            # images apart and the contrastive loss has to learn shape too
            keep = rng.choice(int(corpus.color.max()) + 1, size=recipe.hard_colours,
                              replace=False)
            pool = np.flatnonzero(np.isin(corpus.color, keep))
        idx = pool[rng.choice(len(pool), size=(recipe.batch, k),
                              replace=recipe.batch * k > len(pool))]
        if side == "text":
            partner = np.array([[rng.choice(self.by_text_label[int(self.text_label[i])])
                                 for i in row] for row in idx])
            a = enc.texts([[corpus.texts[i] for i in row] for row in idx])
            b = enc.texts([[corpus.texts[i] for i in row] for row in partner])
            return a, b, self.text_label[idx], {}
        # single-image steps cycle full, shape-only, full, colour-only captions
        kind = "full"
        if k == 1 and recipe.partial_captions:
            kind = ("full", "shape", "full", "color")[self.singles % 4]
        if k == 1:
            self.singles += 1
        captions, keys = {"full": (corpus.captions, self.image_label),
                          "shape": (corpus.shape_captions, corpus.shape),
                          "color": (corpus.color_captions, corpus.color)}[kind]
        a = enc.images([list(map(int, row)) for row in idx])
        b = enc.texts([[captions[i] for i in row] for row in idx])
        return a, b, keys[idx], {"captions": kind}


class _ItemBatches:
    """The items recipe's batches. Image side: an item's image prompt against the item-text
    prompt of its own text (items with both). Text side: two word-dropout views of an item's
    text (items with a text). Keys: item ids (the same item twice is a false negative)."""

    def __init__(self, emb, items: PretrainItems, recipe: PretrainRecipe,
                 rng: np.random.Generator):
        self.items, self.recipe, self.rng = items, recipe, rng
        self.text_rows = np.array([j for j, t in enumerate(items.texts) if t], dtype=np.int64)
        self.image_rows = np.array([j for j in self.text_rows if items.images[j] is not None],
                                   dtype=np.int64)
        if recipe.image_pretrain_scale > 0 and len(self.image_rows) < 2:
            raise ConfigError(f"pretrain=items: {len(self.image_rows)} training items have a "
                              "text and a readable image; the image side needs at least 2 "
                              "(or image_pretrain_scale=0)")
        if recipe.image_pretrain_scale < 1 and len(self.text_rows) < 2:
            raise ConfigError(f"pretrain=items: {len(self.text_rows)} training items have a "
                              "text; the text side needs at least 2")
        # pixels of the image rows, in their order (the encoder indexes into this list)
        self.enc = _Encoder(emb, emb.family.preprocess(
            [items.images[j] for j in self.image_rows]) if len(self.image_rows) else [])

    def _view(self, text: str) -> str:
        """``text`` with each word dropped with probability ``word_dropout`` (one kept)."""
        words = text.split()
        keep = self.rng.random(len(words)) >= self.recipe.word_dropout
        if not keep.any():
            keep[self.rng.integers(len(words))] = True
        return " ".join(w for w, k in zip(words, keep) if k)

    def __call__(self, side: str, k: int):
        recipe, rng, texts = self.recipe, self.rng, self.items.texts
        pool = self.image_rows if side == "image" else self.text_rows
        pos = rng.choice(len(pool), size=(recipe.batch, k), replace=recipe.batch * k > len(pool))
        rows = pool[pos]
        if side == "image":
            a = self.enc.images([list(map(int, r)) for r in pos])
            b = self.enc.texts([[texts[j] for j in r] for r in rows])
        else:
            a = self.enc.texts([[self._view(texts[j]) for j in r] for r in rows])
            b = self.enc.texts([[self._view(texts[j]) for j in r] for r in rows])
        return a, b, self.items.ids[rows], {}


def _row_keys(keys: np.ndarray) -> np.ndarray:
    """One integer per row of a (B, k) key array, equal exactly where the rows are equal (two
    equal labels, or bags of equal labels, are false negatives)."""
    return np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)


def _train(emb, make_batches: Callable, recipe: PretrainRecipe,
           on_step: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Full fine-tuning of ``emb``'s backbone, less a pre-trained vision tower: each step takes
    a batch of the scheduled side (``make_batches(emb, rng)(side, k)`` -> embeddings a, b, keys,
    log fields) and its symmetric InfoNCE; the one objective of every recipe. Returns the step
    log."""
    import torch

    rng = np.random.default_rng(np.random.SeedSequence(recipe.seed, spawn_key=(7,)))
    batches = make_batches(emb, rng)
    frozen = set() if recipe.initial_vision() == "random" else {
        id(p) for p in _vision_tower(emb).parameters()}  # a pre-trained tower stays as it is
    params = [p for p in emb.backbone.parameters() if id(p) not in frozen]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr(s, recipe))
    emb.train()
    log: list[dict] = []
    counts = {"image": 0, "text": 0}
    for step in range(recipe.steps):
        side = "image" if recipe.image_step(step) else "text"
        # alternate single items and bags within each side
        k = recipe.bag_len if recipe.bag_len > 1 and counts[side] % 2 == 1 else 1
        counts[side] += 1
        a, b, keys, extra = batches(side, k)
        labels = torch.as_tensor(_row_keys(np.asarray(keys).reshape(recipe.batch, k)),
                                 device=a.device)
        loss = _symmetric_nce(a, b, recipe.tau, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        row = {"step": step, "side": side, "bag": k, "loss": float(loss.detach()), **extra}
        log.append(row)
        if on_step is not None:
            on_step(step, row)
    emb.eval()
    for p in params:
        p.requires_grad_(False)
    return log


CORPUS_NOTE = ("Stand-in pre-trained by the harness (methods.vlm2rec.pretrain) on a captioned "
               "corpus of coloured shapes and product texts rendered by the synthetic world's "
               "generator under its own seeds, disjoint from every catalogue; NOT a real "
               "web-pretrained VLM.")
ITEMS_NOTE = ("Stand-in pre-trained by the harness (methods.vlm2rec.pretrain) on this dataset's "
              "training items (image <-> item text, two word-dropout views of an item text; "
              "never a validation/test-only item, never an interaction); NOT a real "
              "web-pretrained VLM.")


def _vision_tower(emb):
    """The backbone's vision tower module (FastVLM / LLaVA: ``vision_tower``; Qwen: ``visual``)."""
    core = emb._core
    return getattr(core, "vision_tower", None) or core.visual


def init_vision_from_harness_clip(emb, cache_dir: Path | None) -> dict:
    """Load the harness-clip corpus recipe's image tower (built into ``cache_dir`` if absent:
    the same checkpoint the content baselines read) into ``emb``'s vision tower and freeze it.
    Returns what was loaded (for the marker)."""
    from transformers import AutoModel

    from benchmark.encoders import harness_clip
    from benchmark.encoders.models import quiet_transformers

    if cache_dir is None:
        raise ConfigError("pretrain: vision_init=harness-clip needs a cache folder (the "
                          "harness-clip checkpoint is built there)")
    path = harness_clip.ensure_checkpoint(None, None, 0, Path(cache_dir),
                                          recipe=harness_clip.CORPUS_RECIPE)
    with quiet_transformers():
        clip = AutoModel.from_pretrained(path)
    tower = _vision_tower(emb)
    tower.load_state_dict(clip.vision_model.state_dict())
    tower.requires_grad_(False)
    tower.eval()
    return {"vision_init": "harness-clip", "vision_init_checkpoint": path.name}


def build_pretrained_checkpoint(recipe: PretrainRecipe, out_dir: Path,
                                on_step: Callable[[int, dict], None] | None = None,
                                data=None, split=None, cache_dir: Path | None = None) -> Path:
    """Build the random ``recipe.family`` stand-in, pre-train it and save it back at
    ``out_dir`` through ``save_pretrained``. Corpus recipe: tokenizer trained on the corpus
    texts and captions, the marker records held-out corpus probes. Items recipe (needs ``data``
    and ``split``): tokenizer trained on the training items' texts, the marker records what
    was read. The marker records the recipe; the cost goes to ``pretrain_log.jsonl``."""
    import torch

    from .embedder import VLMEmbedder
    from .tiny import TINY_MARKER, build_tiny_checkpoint

    out_dir = Path(out_dir)
    if recipe.pretrain == "corpus":
        from benchmark.data.corpus import render_corpus

        corpus = render_corpus(recipe.corpus_n, recipe.corpus_seed, recipe.image_size)
        texts = corpus.texts + corpus.captions
        source: dict[str, Any] = {}

        def make_batches(emb, rng):
            return _CorpusBatches(emb, corpus, recipe, rng)

        def probe(emb):
            return corpus_probe(emb, recipe)
    else:
        items = load_pretrain_items(recipe, data, split)
        texts = [t for t in items.texts if t]  # the training items' words only
        source = {"pretrain_data": {
            **items_fingerprint(data, split), "items": len(items.ids),
            "items_with_text": len(texts),
            "items_with_image": sum(im is not None for im in items.images),
            "withheld_items": len(items.withheld)}}

        def make_batches(emb, rng):
            return _ItemBatches(emb, items, recipe, rng)

        def probe(emb):
            return None
    build_tiny_checkpoint(recipe.family, out_dir, texts, seed=recipe.seed, size=recipe.size,
                          vision=recipe.vision or None)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(recipe.seed)
        emb = VLMEmbedder(out_dir, lora=None, image_size=recipe.image_size,
                          max_text_tokens=recipe.max_text_tokens)
        if recipe.initial_vision() == "harness-clip":
            source["vision_tower"] = init_vision_from_harness_clip(emb, cache_dir)
        before = probe(emb)
        steps = _train(emb, make_batches, recipe, on_step)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    emb.backbone.save_pretrained(out_dir)
    emb.clear_image_cache()
    after = probe(emb)
    marker = json.loads((out_dir / TINY_MARKER).read_text())
    n_image = sum(r["side"] == "image" for r in steps)
    tail = max(1, len(steps) // 10)
    marker.update({
        "kind": STAND_IN_KIND,
        "pretrained": STAND_IN_KIND,
        "note": CORPUS_NOTE if recipe.pretrain == "corpus" else ITEMS_NOTE,
        "recipe": recipe.spec(),
        "recipe_key": recipe.key(data, split),
        **source,
        "image_steps": n_image,
        "text_steps": len(steps) - n_image,
        "final_loss": {side: float(np.mean([r["loss"] for r in steps if r["side"] == side][-tail:]))
                       for side in ("image", "text") if any(r["side"] == side for r in steps)},
    })
    if before is not None:
        marker.update({"corpus_probe_before": before, "corpus_probe_after": after})
    (out_dir / TINY_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    # the cost varies from build to build, so it stays out of the hashed checkpoint files
    # (``benchmark.encoders.checkpoints.checkpoint_hash`` reads *.json): identical weights
    # keep one checkpoint hash, hence one VLM2Rec stage key
    cost = {"pretrain_seconds": round(seconds, 2), "pretrain_cpu_seconds": round(cpu_seconds, 2),
            "torch_threads": torch.get_num_threads()}
    (out_dir / PRETRAIN_LOG).write_text("".join(json.dumps(r) + "\n" for r in [cost, *steps]))
    return out_dir


def pretrain_cost(path: str | Path) -> dict:
    """The cost of a harness-pretrained checkpoint's pre-training (seconds, CPU seconds,
    threads), from its ``pretrain_log.jsonl``; {} if absent."""
    log = Path(path) / PRETRAIN_LOG
    if not log.is_file():
        return {}
    with open(log) as f:
        return json.loads(f.readline())


# ------------------------------------------------------------------------------------ probes

#: Which branch each attribute is probed from, and the cross probes (controls near chance).
PROBES = {"image": ("color", "shape"), "text": ("brand", "product")}
CROSS_PROBES = {"image": ("brand",), "text": ("color",)}


def _branch_features(emb, contents: list) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(features, present) of the text and image branches of items, in eval mode, batched."""
    import torch

    was_training = emb.training
    emb.eval()
    out: dict[str, list] = {"text": [], "image": []}
    with torch.no_grad():
        for s in range(0, len(contents), 256):
            b = emb.encode_items(contents[s:s + 256], unimodal=True)
            for m, chunks in out.items():
                chunks.append((getattr(b, m).float().cpu().numpy(),
                               getattr(b, f"{m}_present").cpu().numpy()))
    emb.train(was_training)
    return {m: (np.concatenate([f for f, _ in v]), np.concatenate([p for _, p in v]))
            for m, v in out.items()}


def probe_branches(emb, contents: list, labels: dict[str, np.ndarray],
                   train: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Linear-probe accuracies of each branch of ``emb`` on items ``contents`` (the probe is
    :func:`benchmark.encoders.probes.fit_predict`).

    ``labels``: attribute name -> integer code per item (``color``, ``shape``, ``brand``,
    ``product``; missing ones are skipped; -1 marks an item without a label); ``train`` /
    ``test``: boolean masks over the items. Returns ``{"image/color": acc, ...,
    "chance/color": 1/n_classes, "cross/image/brand": ...}``; a probe only uses items whose
    branch is present.
    """
    from benchmark.encoders.probes import fit_predict

    feats = _branch_features(emb, contents)
    out: dict[str, float] = {}
    for table, prefix in ((PROBES, ""), (CROSS_PROBES, "cross/")):
        for branch, attrs in table.items():
            x, present = feats[branch]
            for attr in attrs:
                if attr not in labels:
                    continue
                y = np.asarray(labels[attr])
                known = y >= 0
                tr, te = train & present & known, test & present & known
                n_classes = int(y[known].max()) + 1
                if tr.sum() < 2 or not te.any():
                    continue
                pred = fit_predict(x[tr], y[tr], x[te], n_classes)
                out[f"{prefix}{branch}/{attr}"] = float(np.mean(pred == y[te]))
                out[f"chance/{attr}"] = 1.0 / len(np.unique(y[known]))
    return out


def corpus_probe(emb, recipe: PretrainRecipe, n: int | None = None) -> dict[str, float]:
    """Branch probes on a held-out corpus (another corpus seed; first half trains, second
    half tests): what pre-training taught each branch, without any catalogue."""
    from benchmark.data.corpus import render_corpus

    from .embedder import ItemContent

    n = PROBE_N if n is None else n
    if n < 2:  # no held-out probe (tests)
        return {}
    held = render_corpus(n, recipe.corpus_seed + _PROBE_CORPUS_SEED_OFFSET, recipe.image_size)
    images = [_ArrayImage(a, f"probe-{held.seed}-{i}") for i, a in enumerate(held.images)]
    # an item holds an image or a text, never both: the corpus's images and texts are
    # independent samples
    contents = ([ItemContent(text=None, image=im) for im in images]
                + [ItemContent(text=t, image=None) for t in held.texts])
    none = np.full(n, -1, dtype=np.int64)  # no label: the other modality's samples
    labels = {"color": np.r_[held.color, none], "shape": np.r_[held.shape, none],
              "brand": np.r_[none, held.brand], "product": np.r_[none, held.product]}
    half = np.r_[np.arange(n) < n // 2, np.arange(n) < n // 2]
    result = probe_branches(emb, contents, labels, half, ~half)
    emb.clear_image_cache()  # probe images are not part of any catalogue
    return {k: v for k, v in result.items() if not k.startswith("cross/")}


class _ArrayImage:
    """An in-memory image the embedder can open (its cache key is ``str()``)."""

    def __init__(self, pixels: np.ndarray, key: str):
        self.pixels, self.key = pixels, key

    def open(self):
        from PIL import Image

        return Image.fromarray(self.pixels)

    def __str__(self) -> str:
        return self.key


def branch_tables(emb, data) -> dict:
    """The items' text- and image-branch embeddings of ``emb`` (item prompts) as
    ``benchmark.features.ModalityFeatures`` (rows by item id, row 0 and missing rows zero)."""
    from benchmark.features import ModalityFeatures

    from .model import item_contents

    feats = _branch_features(emb, item_contents(data)[1:])
    out = {}
    for m, (values, present) in feats.items():
        values = np.concatenate([np.zeros((1, values.shape[1]), np.float32), values])
        present = np.concatenate([[False], present])
        values[~present] = 0.0
        out[m] = ModalityFeatures(values, present, encoder=f"vlm2rec {m} branch")
    return out


def probe_dataset(emb, data, split) -> dict[str, dict]:
    """Branch probes of ``emb`` on a dataset's items, before or after fine-tuning:
    :func:`benchmark.encoders.probes.probe_features` (trained on warm items, tested on cold
    ones) on :func:`branch_tables`; {} without the hidden attribute columns.

    For a trained :class:`~methods.vlm2rec.model.VLM2Rec` the same is
    ``probe_features(data, split, model.modality_tables())``."""
    from benchmark.encoders.probes import probe_features

    return probe_features(data, split, branch_tables(emb, data))


def heldout_item_probes(tables: dict, data, train_ids: np.ndarray, test_ids: np.ndarray,
                        labels_field: str = "class", min_positives: int = 10) -> dict:
    """What each branch generalises to items outside ``train_ids`` (e.g. the items a
    ``holdout`` recipe withheld from pre-training), on a real dataset without hidden columns.

    ``tables``: :func:`branch_tables` (or a trained model's ``modality_tables()``).
    ``label/<branch>``: macro balanced accuracy (chance 0.5) of one binary linear probe
    (:func:`benchmark.encoders.probes.fit_predict` on a class-balanced subsample of the train
    items, seeded) per value of the whitespace-separated
    multi-label column ``labels_field`` (ml-100k's genres), fitted on ``train_ids``, tested on
    ``test_ids``, over the values with at least ``min_positives`` positives among the train
    and 3 among the test items (``labels/<branch>`` lists them). ``retrieval/image->text@k``: share of
    the test items (both branches present) whose own text-branch embedding is among the k
    nearest (cosine) of its image-branch embedding, chance k / n."""
    from benchmark.encoders.probes import fit_predict

    out: dict[str, Any] = {}
    train_ids, test_ids = np.asarray(train_ids), np.asarray(test_ids)
    column = data.item_fields.get(labels_field)
    if column is not None:
        sets = [set(str(v or "").split()) for v in column]
        values = sorted(set().union(*(sets[i] for i in train_ids)))
        for branch in ("image", "text"):
            feats = tables[branch]
            tr = train_ids[feats.present[train_ids]]
            te = test_ids[feats.present[test_ids]]
            scores, used = [], []
            for value in values:
                y_tr = np.array([value in sets[i] for i in tr], dtype=np.int64)
                y_te = np.array([value in sets[i] for i in te], dtype=np.int64)
                if min(y_tr.sum(), (1 - y_tr).sum()) < min_positives or \
                        min(y_te.sum(), (1 - y_te).sum()) < 3:
                    continue
                # fitted on a class-balanced subsample: an unweighted probe of a rare genre
                # predicts "no" everywhere (balanced accuracy 0.5 whatever the features carry)
                fit = _balanced(y_tr, np.random.default_rng(0))
                pred = fit_predict(feats.values[tr[fit]], y_tr[fit], feats.values[te], 2)
                scores.append(0.5 * (np.mean(pred[y_te == 1] == 1)
                                     + np.mean(pred[y_te == 0] == 0)))
                used.append(value)
            if scores:
                out[f"label/{branch}"] = round(float(np.mean(scores)), 4)
                out[f"labels/{branch}"] = used
    both = test_ids[tables["image"].present[test_ids] & tables["text"].present[test_ids]]
    if len(both) >= 2:
        unit = [tables[m].values[both] / np.maximum(
            np.linalg.norm(tables[m].values[both], axis=1, keepdims=True), 1e-12)
            for m in ("image", "text")]
        sims = unit[0] @ unit[1].T
        # rank of each item's own text among all test texts (0 = nearest)
        rank = (sims > np.diag(sims)[:, None]).sum(1)
        for k in (1, 10):
            out[f"retrieval/image->text@{k}"] = round(float(np.mean(rank < k)), 4)
            out[f"chance/retrieval@{k}"] = round(min(1.0, k / len(both)), 4)
        out["retrieval_items"] = len(both)
    return out


def _balanced(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of all minority-class rows of binary ``y`` and as many majority rows (sorted)."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    small, large = (pos, neg) if len(pos) <= len(neg) else (neg, pos)
    return np.sort(np.r_[small, rng.choice(large, size=len(small), replace=False)])
