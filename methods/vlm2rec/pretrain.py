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

Names: ``pretrained-<size>-<family>`` with optional recipe overrides after a colon, e.g.
``pretrained-tiny-qwen2-vl:image_pretrain_scale=0.1,steps=400``. The checkpoint is built once
into ``<cache>/checkpoints/`` under a key of the whole recipe (a changed recipe re-trains, the
same recipe loads) and its ``harness_tiny.json`` says ``kind: "harness-pretrained"``.

:func:`probe_branches` measures what each branch carries (linear probes, train on warm items,
test on cold ones): the "other modality degrades" claim made measurable before and after SFT.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.errors import ConfigError

PRETRAIN_VERSION = 1  # bump when the objective, schedule or corpus use change
PRETRAINED_PREFIX = "pretrained-"
PRETRAINED_NAME = re.compile(
    r"pretrained-(tiny|small)-(qwen2-vl|qwen2\.5-vl|smolvlm|idefics3)(?::(.*))?")
STAND_IN_KIND = "harness-pretrained"
PRETRAIN_LOG = "pretrain_log.jsonl"  # cost + step log (not hashed: see build_pretrained_...)
_PROBE_CORPUS_SEED_OFFSET = 1_000_003  # the held-out probe corpus: another corpus seed
PROBE_N = 512  # held-out corpus samples per modality for the marker's probes


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that decides a harness-pretrained stand-in (its cache key).

    ``image_pretrain_scale``: share of the optimisation steps on the image side (image prompt
    <-> caption prompt); the rest go to the text side (text <-> text of the same brand+product).
    ``bag_len`` > 1: every other step of each side embeds bags of that many images / texts in
    the user prompts instead of single items.
    """

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

    def key(self) -> str:
        """Stable hash of the recipe, the corpus identity and the code versions."""
        from benchmark.data.corpus import corpus_fingerprint
        from benchmark.io import stable_hash

        return stable_hash({"version": PRETRAIN_VERSION, **asdict(self),
                            "corpus": corpus_fingerprint(self.corpus_n, self.corpus_seed,
                                                         self.image_size)})

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


def resolve_pretrained(name: str, cache_dir: Path) -> Path:
    """The checkpoint folder of a ``pretrained-...`` name, built once into
    ``<cache_dir>/checkpoints/`` (independent of any dataset: the corpus is its own)."""
    from benchmark.io import build_dir_once

    recipe = parse_name(name)
    if recipe is None:
        raise ConfigError(f"{name!r} is not a pretrained-<size>-<family> stand-in name")
    target = Path(cache_dir) / "checkpoints" / (
        f"pretrained-{recipe.size}-{recipe.family}-{recipe.key()}")
    return build_dir_once(target, lambda tmp: build_pretrained_checkpoint(recipe, tmp),
                          marker="config.json")


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


def _train(emb, corpus, recipe: PretrainRecipe,
           on_step: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Full fine-tuning of ``emb``'s backbone on the corpus; returns the step log."""
    import torch

    rng = np.random.default_rng(np.random.SeedSequence(recipe.seed, spawn_key=(7,)))
    enc = _Encoder(emb, emb.family.preprocess(corpus.pil_images()))
    n_shapes = int(corpus.shape.max()) + 1
    n_products = int(corpus.product.max()) + 1
    image_label = corpus.color * n_shapes + corpus.shape
    text_label = corpus.brand * n_products + corpus.product
    by_text_label = {int(k): np.flatnonzero(text_label == k) for k in np.unique(text_label)}

    params = [p for p in emb.backbone.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr(s, recipe))
    emb.train()
    log: list[dict] = []
    n, counts, singles = len(corpus), {"image": 0, "text": 0}, 0
    for step in range(recipe.steps):
        side = "image" if recipe.image_step(step) else "text"
        # alternate single items and bags within each side
        k = recipe.bag_len if recipe.bag_len > 1 and counts[side] % 2 == 1 else 1
        counts[side] += 1
        pool = np.arange(n)
        if side == "image" and k == 1 and recipe.hard_colours > 0:
            # hard negatives: with few colours in the batch, colour alone cannot tell the
            # images apart and the contrastive loss has to learn shape too
            keep = rng.choice(int(corpus.color.max()) + 1, size=recipe.hard_colours,
                              replace=False)
            pool = np.flatnonzero(np.isin(corpus.color, keep))
        idx = pool[rng.choice(len(pool), size=(recipe.batch, k),
                              replace=recipe.batch * k > len(pool))]
        if side == "image":
            # single-image steps cycle full, shape-only, full, colour-only captions
            kind = "full"
            if k == 1 and recipe.partial_captions:
                kind = ("full", "shape", "full", "color")[singles % 4]
            if k == 1:
                singles += 1
            captions, keys = {"full": (corpus.captions, image_label),
                              "shape": (corpus.shape_captions, corpus.shape),
                              "color": (corpus.color_captions, corpus.color)}[kind]
            a = enc.images([list(map(int, row)) for row in idx])
            b = enc.texts([[captions[i] for i in row] for row in idx])
            keys = keys[idx]
        else:
            partner = np.array([[rng.choice(by_text_label[int(text_label[i])]) for i in row]
                                for row in idx])
            a = enc.texts([[corpus.texts[i] for i in row] for row in idx])
            b = enc.texts([[corpus.texts[i] for i in row] for row in partner])
            keys = text_label[idx]
        # equal labels (or equal label bags) are false negatives
        base = int(keys.max()) + 1
        flat_keys = (keys * base ** np.arange(k)).sum(1) if k > 1 else keys[:, 0]
        labels = torch.as_tensor(flat_keys, device=a.device)
        loss = _symmetric_nce(a, b, recipe.tau, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        row = {"step": step, "side": side, "bag": k, "loss": float(loss.detach())}
        if side == "image":
            row["captions"] = kind
        log.append(row)
        if on_step is not None:
            on_step(step, row)
    emb.eval()
    for p in params:
        p.requires_grad_(False)
    return log


def build_pretrained_checkpoint(recipe: PretrainRecipe, out_dir: Path,
                                on_step: Callable[[int, dict], None] | None = None) -> Path:
    """Build the random ``recipe.family`` stand-in (tokenizer trained on the corpus texts and
    captions), pre-train it on the corpus and save it back at ``out_dir`` through
    ``save_pretrained``; the marker records the recipe, the cost and held-out corpus probes."""
    import torch

    from benchmark.data.corpus import render_corpus

    from .embedder import VLMEmbedder
    from .tiny import TINY_MARKER, build_tiny_checkpoint

    out_dir = Path(out_dir)
    corpus = render_corpus(recipe.corpus_n, recipe.corpus_seed, recipe.image_size)
    build_tiny_checkpoint(recipe.family, out_dir, corpus.texts + corpus.captions,
                          seed=recipe.seed, size=recipe.size, vision=recipe.vision or None)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(recipe.seed)
        emb = VLMEmbedder(out_dir, lora=None, image_size=recipe.image_size,
                          max_text_tokens=recipe.max_text_tokens)
        before = corpus_probe(emb, recipe)
        steps = _train(emb, corpus, recipe, on_step)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    emb.backbone.save_pretrained(out_dir)
    emb.clear_image_cache()
    after = corpus_probe(emb, recipe)
    marker = json.loads((out_dir / TINY_MARKER).read_text())
    n_image = sum(r["side"] == "image" for r in steps)
    tail = max(1, len(steps) // 10)
    marker.update({
        "kind": STAND_IN_KIND,
        "pretrained": STAND_IN_KIND,
        "note": "Stand-in pre-trained by the harness (methods.vlm2rec.pretrain) on a captioned "
                "corpus of coloured shapes and product texts rendered by the synthetic world's "
                "generator under its own seeds, disjoint from every catalogue; NOT a real "
                "web-pretrained VLM.",
        "recipe": asdict(recipe),
        "recipe_key": recipe.key(),
        "image_steps": n_image,
        "text_steps": len(steps) - n_image,
        "final_loss": {side: float(np.mean([r["loss"] for r in steps if r["side"] == side][-tail:]))
                       for side in ("image", "text") if any(r["side"] == side for r in steps)},
        "corpus_probe_before": before,
        "corpus_probe_after": after,
    })
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
