"""``harness-clip``: the offline default image-text encoder, a small CLIP that the harness trains
on the dataset's own *training* items (no pretrained CLIP weights exist offline).

Only items that occur in the training part of the split (``split.train_sequences()``) and have
both a text and a readable image are used, for the tokenizer (a byte-level BPE trained on their
texts) as well as the model, so validation/test-only (cold) items never shape the encoder. The
model is a real ``transformers.CLIPModel`` built from a small ``CLIPConfig``, trained with CLIP's
symmetric InfoNCE loss for a few seeded epochs, saved with ``save_pretrained`` into the cache and
loaded back through the same ``from_pretrained`` path as any real checkpoint, then applied to all
items. Its results are labelled :data:`LABEL` everywhere, never as a pretrained CLIP.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data.dataset import Dataset
from ..errors import ConfigError
from ..io import atomic_write_json, build_dir_once, stable_hash
from .inputs import load_image

log = logging.getLogger(__name__)

NAME = "harness-clip"
LABEL = "harness-clip (trained on this dataset's training items; not a pretrained CLIP)"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


@dataclass(frozen=True)
class Recipe:
    """Architecture and training settings (all part of the cache key)."""

    version: int = 1
    width: int = 64  # hidden size of both towers and of the joint embedding
    layers: int = 2
    heads: int = 4
    patches: int = 4  # patches per image side (patch size = image size / patches)
    image_size: int | None = None  # None: 32 px if the training images' median short side
    # is at most 48 px (the synthetic dataset), else 64 px (e.g. posters)
    max_length: int = 32  # text tokens
    vocab_size: int = 2000
    steps: int = 120  # optimisation steps, rounded up to whole epochs ...
    min_epochs: int = 3  # ... of at least this many
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05


DEFAULT_RECIPE = Recipe()

def training_items(split) -> np.ndarray:
    """Sorted ids of the items in the training part of the split (never held-out targets)."""
    seqs = [s for s in split.train_sequences() if len(s)]
    items = np.unique(np.concatenate(seqs)) if seqs else np.zeros(0, dtype=np.int64)
    return items[items > 0]


def fingerprint(data: Dataset, split, seed: int, recipe: Recipe) -> dict:
    """What decides the trained weights: the recipe, the dataset content, the split, the seed."""
    return {"recipe": asdict(recipe), "dataset": data.content_hash, "split": split.checksum,
            "seed": seed}


def ensure_checkpoint(data: Dataset, split, seed: int, cache_root: Path, device: str = "cpu",
                      recipe: Recipe = DEFAULT_RECIPE, progress: bool = False) -> Path:
    """The trained checkpoint folder in the cache, training it first if it is not there."""
    fp = fingerprint(data, split, seed, recipe)
    target = Path(cache_root) / "checkpoints" / f"{NAME}-{stable_hash(fp)}"

    def build(tmp: Path) -> None:
        train_checkpoint(data, training_items(split), recipe, seed, tmp, device, progress)
        atomic_write_json(tmp / "harness.json", {"label": LABEL, **fp})

    return build_dir_once(target, build, marker="config.json")


def _training_pairs(data: Dataset, items: np.ndarray) -> tuple[list[int], list[str], list]:
    ids, texts, images = [], [], []
    for i in items.tolist():
        text = data.item_text(i).strip()
        if not text:
            continue
        image, _ = load_image(data.image_path(i))
        if image is not None:
            ids.append(i), texts.append(text), images.append(image)
    return ids, texts, images


def _train_tokenizer(texts: list[str], recipe: Recipe):
    """A byte-level BPE trained on the training texts, ``<s> text </s>`` (CLIP pools at EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=recipe.vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    pad, bos, eos = SPECIAL_TOKENS
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(t, tok.token_to_id(t)) for t in (bos, eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, bos_token=bos,
                                   eos_token=eos, model_max_length=recipe.max_length)


def _image_size(images: list, recipe: Recipe) -> int:
    if recipe.image_size is not None:
        return recipe.image_size
    return 32 if float(np.median([min(im.size) for im in images])) <= 48 else 64


def build_model(kind: str, texts: list[str], recipe: Recipe, image_size: int, seed: int):
    """A randomly initialised ``"clip"`` or ``"siglip"`` model sized by ``recipe``, with a BPE
    tokenizer trained on ``texts`` and a PIL image processor: (model, tokenizer, processor)."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessorPil,
        SiglipModel,
    )

    tokenizer = _train_tokenizer(texts, recipe)
    tower = {"hidden_size": recipe.width, "intermediate_size": 2 * recipe.width,
             "num_hidden_layers": recipe.layers, "num_attention_heads": recipe.heads}
    text = {**tower, "vocab_size": len(tokenizer), "max_position_embeddings": recipe.max_length,
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id}
    vision = {**tower, "image_size": image_size, "patch_size": image_size // recipe.patches}
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG state
        torch.manual_seed(seed)
        if kind == "clip":
            model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision,
                                         projection_dim=recipe.width))
        elif kind == "siglip":
            model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        else:
            raise ValueError(f"unknown model kind {kind!r}")
    if kind == "clip":
        processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                          crop_size={"height": image_size, "width": image_size})
    else:
        processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    return model, tokenizer, processor


def save_checkpoint(out: Path, model, tokenizer, processor) -> Path:
    """``save_pretrained`` the model, tokenizer and image processor into one folder."""
    from .models import quiet_transformers

    with quiet_transformers():
        model.cpu().save_pretrained(out)
        tokenizer.save_pretrained(out)
        processor.save_pretrained(out)
    return Path(out)


def random_checkpoint(out: Path, texts: list[str], kind: str = "clip",
                      recipe: Recipe = DEFAULT_RECIPE, image_size: int = 32,
                      seed: int = 0) -> Path:
    """An untrained model saved exactly like a real checkpoint (for tests and benchmarks of
    the ``from_pretrained`` path: no pretrained CLIP weights exist offline)."""
    return save_checkpoint(out, *build_model(kind, texts, recipe, image_size, seed))


def train_checkpoint(data: Dataset, items: np.ndarray, recipe: Recipe, seed: int, out: Path,
                     device: str = "cpu", progress: bool = False) -> Path:
    """Train the CLIP on the image-text pairs of ``items`` and save it into ``out``."""
    import torch

    t0 = time.perf_counter()
    ids, texts, images = _training_pairs(data, items)
    if len(ids) < 2:
        raise ConfigError(f"{NAME}: dataset {data.name!r} has {len(ids)} training items with both "
                          "a text and a readable image; it needs at least 2")
    size = _image_size(images, recipe)
    model, tokenizer, processor = build_model("clip", texts, recipe, size, seed)
    pixels = torch.cat([processor(images=images[s:s + 256], return_tensors="pt")["pixel_values"]
                        for s in range(0, len(images), 256)])
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=recipe.max_length,
                       return_tensors="pt")
    losses = _fit(model, tokens, pixels, recipe, seed, device, progress)
    save_checkpoint(out, model, tokenizer, processor)
    seconds = round(time.perf_counter() - t0, 2)
    log.info("%s: trained on %d items, %d epochs, loss %s -> %s in %.1f s", NAME, len(ids),
             len(losses), losses[0], losses[-1], seconds)
    atomic_write_json(out / "training.json", {"train_items": len(ids), "image_size": size,
                                              "epoch_losses": losses, "seconds": seconds})
    return out


def _fit(model, tokens, pixels, recipe: Recipe, seed: int, device: str,
         progress: bool) -> list[float]:
    """CLIP's symmetric InfoNCE (``return_loss=True``) with AdamW, a linear warm-up over the
    first tenth of the steps then cosine decay, for ``recipe.steps`` steps rounded up to whole
    epochs. Returns the mean loss of each epoch."""
    import math

    import torch
    from tqdm.auto import tqdm

    n = len(pixels)
    batches = -(-n // recipe.batch_size)
    epochs = max(recipe.min_epochs, -(-recipe.steps // batches))
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    total, warmup = epochs * batches, max(1, epochs * batches // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / total))))
    order = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    # Matrices this small gain nothing from threads and lose much when the cores are busy
    # (measured on 2 shared cores: 1.2 s per step with 2 threads, 0.08 s with 1).
    torch.set_num_threads(1)
    losses = []
    try:
        for _ in tqdm(range(epochs), desc=f"{NAME} training", unit="epoch",
                      disable=not progress):
            epoch_loss = 0.0
            for b in torch.randperm(n, generator=order).split(recipe.batch_size):
                if len(b) < 2:  # a contrastive batch needs negatives
                    continue
                loss = model(input_ids=tokens["input_ids"][b].to(device),
                             attention_mask=tokens["attention_mask"][b].to(device),
                             pixel_values=pixels[b].to(device), return_loss=True).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                epoch_loss += loss.item() * len(b)
            losses.append(round(epoch_loss / n, 4))
    finally:
        torch.set_num_threads(threads)
    return losses
