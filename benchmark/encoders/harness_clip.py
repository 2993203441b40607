"""``harness-clip``: the offline default image-text encoder, a small CLIP that the harness
trains itself (no pretrained CLIP weights exist offline). Two recipes:

- **corpus** (``harness-clip-corpus``; what ``harness-clip`` means on the synthetic world): the
  offline stand-in for a web-pretrained CLIP. Pre-trained on a captioned corpus that the
  synthetic world's own renderer draws under a separate seed space
  (:mod:`benchmark.data.corpus`), disjoint from every catalogue: CLIP's contrastive loss between
  images and captions that name their colour and shape, plus the same loss between two product
  texts of the same brand and product, so the text tower keeps brand and product words apart.
  The tokenizer is trained on the corpus's captions and texts (the synthetic vocabulary). The
  checkpoint depends on the recipe and the corpus only, never on a catalogue, its split, its
  hidden attribute columns or the run seed: one pre-training serves every run, like a
  downloaded checkpoint.
- **items** (``harness-clip-items``; what ``harness-clip`` means on any other dataset, where the
  corpus's shapes and invented words cover neither the images nor the vocabulary): trained on
  the dataset's own *training* items' image-text pairs (``split.train_sequences()``, items with a
  text and a readable image), tokenizer included, so cold items never shape it. On the synthetic
  world it can only memorise items (its image and text attributes are independent: there is
  nothing to align), which is why the corpus recipe exists.

Either way the model is a real transformers model (corpus: a ``VisionTextDualEncoderModel`` with
a small EfficientNet image tower and the CLIP text tower; items: a ``CLIPModel``),
saved with ``save_pretrained`` into the cache and loaded back through the same
``from_pretrained`` path as any real checkpoint, then applied to all items. Its features are
labelled :data:`LABEL` / :data:`ITEMS_LABEL` everywhere, never as a pretrained CLIP.
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
CORPUS_NAME = "harness-clip-corpus"
ITEMS_NAME = "harness-clip-items"
NAMES = (NAME, CORPUS_NAME, ITEMS_NAME)
LABEL = ("harness-clip (pre-trained by the harness on a rendered captioned corpus disjoint from "
         "the catalogue: an offline stand-in for a web-pretrained CLIP, not a pretrained CLIP)")
ITEMS_LABEL = "harness-clip (trained on this dataset's training items; not a pretrained CLIP)"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


@dataclass(frozen=True)
class Recipe:
    """Architecture and training settings (all part of the cache key)."""

    version: int = 2
    pretrain: str = "items"  # "items": the dataset's training items; "corpus": the corpus
    width: int = 64  # hidden size of both towers and of the joint embedding
    layers: int = 2
    heads: int = 4
    patches: int = 4  # patches per image side (patch size = image size / patches)
    image_size: int | None = None  # None: 32 px if the training images' median short side
    # is at most 48 px (the synthetic dataset), else 64 px (e.g. posters); corpus: 32 px
    max_length: int = 32  # text tokens
    vocab_size: int = 2000
    steps: int = 120  # optimisation steps, rounded up to whole epochs ...
    min_epochs: int = 3  # ... of at least this many
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    corpus_size: int = 0  # corpus recipe: captioned images (and as many product texts) ...
    corpus_seed: int = 0  # ... rendered under this corpus seed (benchmark.data.corpus)
    text_pairs: bool = False  # corpus recipe: also contrast two texts of one brand+product
    caption_mix: tuple[float, float, float] = (1.0, 0.0, 0.0)  # corpus recipe: P(an image is
    # paired with its full caption, its shape-only caption, its colour-only caption)
    vision: str = "vit"  # image tower: "vit" (a CLIPModel) or "cnn" (an EfficientNet in a
    # VisionTextDualEncoderModel with the CLIP text tower)
    conv_widths: tuple[int, ...] = (32, 64, 128)  # cnn: channels of each stage ...
    conv_depths: tuple[int, ...] = (1, 1, 1)  # ... and its number of blocks


ITEMS_RECIPE = Recipe()
# A CNN image tower (an EfficientNet): chosen on a held-out corpus (corpus seed 1), where a
# linear probe of its image features reads the shape at 0.98 against 0.44 for the tiny ViT
# (4 px patches) of the previous recipe at the same 600 steps; colour, brand and product ~1.0
# either way (docs/synthetic.md).
CORPUS_RECIPE = Recipe(pretrain="corpus", vision="cnn", steps=600, min_epochs=1, lr=1e-3,
                       corpus_size=4000, text_pairs=True,
                       caption_mix=(0.5, 0.35, 0.15))


def is_synthetic(data: Dataset) -> bool:
    """Whether ``data`` is the synthetic world (its manifest names the generator): the one
    dataset whose images and vocabulary the corpus covers."""
    return (data.manifest.get("source") or {}).get("generator") == "synthetic"


def recipe_for(name: str, data: Dataset) -> Recipe:
    """The recipe an encoder name means on ``data`` (``harness-clip``: corpus on the synthetic
    world, items elsewhere)."""
    if name == CORPUS_NAME or (name == NAME and is_synthetic(data)):
        return CORPUS_RECIPE
    return ITEMS_RECIPE


def label_of(recipe: Recipe) -> str:
    return LABEL if recipe.pretrain == "corpus" else ITEMS_LABEL


def training_items(split) -> np.ndarray:
    """Sorted ids of the items in the training part of the split (never held-out targets)."""
    seqs = [s for s in split.train_sequences() if len(s)]
    items = np.unique(np.concatenate(seqs)) if seqs else np.zeros(0, dtype=np.int64)
    return items[items > 0]


def fingerprint(data: Dataset, split, seed: int, recipe: Recipe) -> dict:
    """What decides the trained weights: the recipe and, for the corpus recipe, the corpus
    (its generator version included), for the items recipe the dataset content, the split and
    the seed."""
    if recipe.pretrain == "corpus":
        from ..data.corpus import corpus_fingerprint

        return {"recipe": asdict(recipe), "corpus": corpus_fingerprint(
            recipe.corpus_size, recipe.corpus_seed, _corpus_image_size(recipe))}
    return {"recipe": asdict(recipe), "dataset": data.content_hash, "split": split.checksum,
            "seed": seed}


def ensure_checkpoint(data: Dataset, split, seed: int, cache_root: Path, device: str = "cpu",
                      recipe: Recipe = ITEMS_RECIPE, progress: bool = False) -> Path:
    """The trained checkpoint folder in the cache, training it first if it is not there."""
    fp = fingerprint(data, split, seed, recipe)
    target = Path(cache_root) / "checkpoints" / f"{NAME}-{stable_hash(fp)}"

    def build(tmp: Path) -> None:
        if recipe.pretrain == "corpus":
            pretrain_checkpoint(recipe, tmp, device, progress)
        else:
            train_checkpoint(data, training_items(split), recipe, seed, tmp, device, progress)
        atomic_write_json(tmp / "harness.json", {"label": label_of(recipe), **fp})

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
    """A byte-level BPE trained on ``texts``, ``<s> text </s>`` (CLIP pools at EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    pad, bos, eos = SPECIAL_TOKENS
    # Ids in this order (pad 0, eos 1, bos 2): CLIPTextTransformer treats eos_token_id == 2 as
    # a legacy checkpoint and pools at the *highest token id* of each text instead of at EOS,
    # i.e. at one arbitrary word (measured: the product probe on synthetic texts fell to 0.57).
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=recipe.vocab_size, special_tokens=[pad, eos, bos], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(t, tok.token_to_id(t)) for t in (bos, eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, bos_token=bos,
                                   eos_token=eos, model_max_length=recipe.max_length)


def _corpus_image_size(recipe: Recipe) -> int:
    return recipe.image_size or 32  # the synthetic world's default image size


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
        if kind == "clip" and recipe.vision == "cnn":
            model = _cnn_dual_encoder(text, recipe, image_size)
        elif kind == "clip" and recipe.vision == "vit":
            model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision,
                                         projection_dim=recipe.width))
        elif kind == "siglip":
            model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        else:
            raise ValueError(f"unknown model kind {kind!r} or vision tower {recipe.vision!r}")
    if kind == "clip":
        processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                          crop_size={"height": image_size, "width": image_size})
    else:
        processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    return model, tokenizer, processor


def efficientnet_config(widths, depths, image_size: int, top_channels: int = 1280):
    """A small ``EfficientNetConfig``: a 3x3 stride-2 stem, one stage of MBConv blocks per
    ``widths`` entry (``depths`` blocks each, stride 2 from the second stage on), batch norm,
    a 1x1 top convolution to ``top_channels``. Its feature map is image_size / 2^len(widths)
    on a side (4 x 4 for 32 px and three stages). One definition for every harness image tower
    that must see shapes (this CLIP, the VLM2Rec stand-in ``fast-vlm``)."""
    from transformers import EfficientNetConfig

    widths, depths = list(widths), list(depths)
    if len(widths) != len(depths) or not widths:
        raise ConfigError(f"conv_widths {widths} and conv_depths {depths} must name the same "
                          "stages")
    n = len(widths)
    return EfficientNetConfig(
        num_channels=3, image_size=image_size, width_coefficient=1.0, depth_coefficient=1.0,
        in_channels=[32] + widths[:-1], out_channels=widths, strides=[1] + [2] * (n - 1),
        kernel_sizes=[3] * n, expand_ratios=[4] * n, num_block_repeats=depths,
        depthwise_padding=[], hidden_dim=top_channels, pooling_type="mean",
        dropout_rate=0.0, drop_connect_rate=0.0,
        # multimodal wrappers size their image projection by ``hidden_size``, which
        # EfficientNetConfig does not define: the features have the top conv's channels
        # (hidden_dim: the top batch norm's width; also a global pooling window).
        hidden_size=top_channels)


def reset_batch_norms(model) -> None:
    """Batch norms back to the identity. Multimodal wrappers' weight initialisation draws the
    batch norms' scales like linear weights (N(0, 0.02)): every block then shrinks its input
    fifty-fold and the pooled output is ~1e-17 (nothing trains)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()


def _cnn_dual_encoder(text: dict, recipe: Recipe, image_size: int):
    """A ``VisionTextDualEncoderModel``: a small EfficientNet image tower
    (:func:`efficientnet_config`; global average pooling) and the CLIP text tower, projected
    into one ``recipe.width`` space. Convolutions share their weights over positions, so a
    shape learnt in one place is known in every other: the tiny ViT needs far more steps for
    that (docs/synthetic.md)."""
    from transformers import CLIPTextConfig, VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    try:
        vision = efficientnet_config(recipe.conv_widths, recipe.conv_depths, image_size)
    except ConfigError as err:
        raise ConfigError(f"{NAME}: {err}") from None
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision, CLIPTextConfig(**text), projection_dim=recipe.width)
    model = VisionTextDualEncoderModel(config)
    reset_batch_norms(model.vision_model)
    return model


def save_checkpoint(out: Path, model, tokenizer, processor) -> Path:
    """``save_pretrained`` the model, tokenizer and image processor into one folder."""
    from .models import quiet_transformers

    with quiet_transformers():
        model.cpu().save_pretrained(out)
        tokenizer.save_pretrained(out)
        processor.save_pretrained(out)
    return Path(out)


def random_checkpoint(out: Path, texts: list[str], kind: str = "clip",
                      recipe: Recipe = ITEMS_RECIPE, image_size: int = 32,
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
    """CLIP's symmetric InfoNCE (``return_loss=True``) with :func:`_optimizer`, for
    ``recipe.steps`` steps rounded up to whole epochs. Returns the mean loss of each epoch."""
    import torch
    from tqdm.auto import tqdm

    n = len(pixels)
    batches = -(-n // recipe.batch_size)
    epochs = max(recipe.min_epochs, -(-recipe.steps // batches))
    model.to(device).train()
    opt, sched = _optimizer(model, recipe, epochs * batches)
    order = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see _optimizer
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


def _optimizer(model, recipe: Recipe, total: int):
    """AdamW with a linear warm-up over the first tenth of ``total`` steps, then cosine decay.

    Training runs on one thread: matrices this small gain nothing from threads and lose much
    when the cores are busy (measured on 2 shared cores: 1.2 s per step with 2 threads, 0.08 s
    with 1)."""
    import math

    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    warmup = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / total))))
    return opt, sched


def pretrain_checkpoint(recipe: Recipe, out: Path, device: str = "cpu",
                        progress: bool = False) -> Path:
    """Pre-train the CLIP on the captioned corpus of ``recipe`` (never on a catalogue) and save
    it into ``out``; the tokenizer is trained on the corpus's captions and product texts."""
    import torch

    from ..data.corpus import render_corpus
    from ..data.synthetic import PRODUCTS

    if recipe.pretrain != "corpus" or recipe.corpus_size < 2:
        raise ConfigError(f"{NAME}: a corpus recipe needs pretrain='corpus' and corpus_size >= 2")
    t0 = time.perf_counter()
    size = _corpus_image_size(recipe)
    corpus = render_corpus(recipe.corpus_size, recipe.corpus_seed, size)
    model, tokenizer, processor = build_model("clip", corpus.captions + corpus.texts, recipe,
                                              size, recipe.corpus_seed)
    images = corpus.pil_images()
    pixels = torch.cat([processor(images=images[s:s + 512], return_tensors="pt")["pixel_values"]
                        for s in range(0, len(images), 512)])

    def tokens(texts: list[str]) -> dict:
        return dict(tokenizer(texts, padding=True, truncation=True, max_length=recipe.max_length,
                              return_tensors="pt"))

    # Captions: rows [0, n) full, [n, 2n) shape only, [2n, 3n) colour only; -1 = not named.
    none = np.full(len(corpus), -1)
    captions = {"tokens": tokens(corpus.captions + corpus.shape_captions
                                 + corpus.color_captions),
                "color": torch.as_tensor(np.concatenate([corpus.color, none, corpus.color])),
                "shape": torch.as_tensor(np.concatenate([corpus.shape, corpus.shape, none]))}
    text_key = torch.as_tensor(corpus.brand * len(PRODUCTS) + corpus.product)
    losses = _fit_corpus(model, pixels, torch.as_tensor(corpus.color),
                         torch.as_tensor(corpus.shape), captions,
                         tokens(corpus.texts) if recipe.text_pairs else None, text_key,
                         recipe, device, progress)
    save_checkpoint(out, model, tokenizer, processor)
    seconds = round(time.perf_counter() - t0, 2)
    log.info("%s: pre-trained on a %d-sample corpus, %d steps, loss %s -> %s in %.1f s", NAME,
             len(corpus), recipe.steps, losses[0], losses[-1], seconds)
    atomic_write_json(out / "training.json", {
        "corpus": corpus.fingerprint(), "image_size": size, "losses_per_tenth": losses,
        "seconds": seconds})
    return out


def _soft_clip_loss(a, b, positive, scale):
    """CLIP's symmetric InfoNCE between rows of ``a`` and ``b`` (L2-normalised here), where
    ``positive[i, j]`` marks every matching pair (a uniform soft target over them), not only
    the diagonal: two samples that say the same thing are not negatives of each other."""
    import torch.nn.functional as F

    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = scale * a @ b.T
    target = positive.float()
    return 0.5 * (F.cross_entropy(logits, target / target.sum(1, keepdim=True))
                  + F.cross_entropy(logits.T, (target / target.sum(0, keepdim=True)).T))


def _features(out):
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output  # older versions


def _fit_corpus(model, pixels, color, shape, captions: dict, texts: dict | None, text_key,
                recipe: Recipe, device: str, progress: bool) -> list[float]:
    """``recipe.steps`` steps of the image<->caption loss (each image paired with its full,
    shape-only or colour-only caption by ``recipe.caption_mix``; a caption is a positive of
    every image it describes) plus, with ``texts``, the text<->text loss between a product
    text and another text of the same brand and product, with :func:`_optimizer`. Returns the
    mean loss of each tenth of the steps."""
    import torch
    from tqdm.auto import tqdm

    n, batch = len(pixels), min(recipe.batch_size, len(pixels))
    gen = torch.Generator().manual_seed(recipe.corpus_seed)
    mix = torch.tensor(recipe.caption_mix, dtype=torch.float64)
    # The members of each text's brand+product group, to draw a positive partner from.
    groups = {int(k): torch.nonzero(text_key == k).flatten() for k in text_key.unique()}
    model.to(device).train()
    opt, sched = _optimizer(model, recipe, recipe.steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see _optimizer
    order, cursor, losses, window = torch.randperm(n, generator=gen), 0, [], []

    def text_features(tok: dict, rows):
        return _features(model.get_text_features(
            input_ids=tok["input_ids"][rows].to(device),
            attention_mask=tok["attention_mask"][rows].to(device)))

    try:
        for step in tqdm(range(recipe.steps), desc=f"{NAME} pre-training", unit="step",
                         disable=not progress):
            if cursor + batch > n:  # a new epoch: a new order
                order, cursor = torch.randperm(n, generator=gen), 0
            b = order[cursor:cursor + batch]
            cursor += batch
            rows = torch.multinomial(mix, len(b), replacement=True, generator=gen) * n + b
            cc, cs = captions["color"][rows], captions["shape"][rows]
            positive = (((cc[None, :] == -1) | (cc[None, :] == color[b][:, None]))
                        & ((cs[None, :] == -1) | (cs[None, :] == shape[b][:, None])))
            scale = model.logit_scale.exp().clamp(max=100.0)
            img = _features(model.get_image_features(pixel_values=pixels[b].to(device)))
            loss = _soft_clip_loss(img, text_features(captions["tokens"], rows),
                                   positive.to(device), scale)
            if texts is not None:
                partner = torch.stack([
                    groups[int(k)][torch.randint(len(groups[int(k)]), (1,), generator=gen)][0]
                    for k in text_key[b]])
                key = text_key[b]
                loss = loss + _soft_clip_loss(text_features(texts, b),
                                              text_features(texts, partner),
                                              (key[:, None] == key[None, :]).to(device), scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            window.append(loss.item())
            if len(window) == max(1, recipe.steps // 10) or step == recipe.steps - 1:
                losses.append(round(float(np.mean(window)), 4))
                window = []
    finally:
        torch.set_num_threads(threads)
    return losses
