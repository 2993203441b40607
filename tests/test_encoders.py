"""Content encoders and their cache: MiniLM text embeddings, CLIP/SigLIP checkpoints loaded through
``from_pretrained``, missing inputs as masks, cache keys, and the harness-trained CLIP."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmark.data.dataset import load_dataset, write_dataset
from benchmark.encoders import (
    EncodeSettings,
    harness_clip,
    models,
    prepare_features,
    resolve_encoder,
)
from benchmark.encoders.checkpoints import checkpoint_hash, resolve_checkpoint
from benchmark.errors import ConfigError
from benchmark.split import make_split

TEXTS = {
    "a": "red cotton t-shirt for men",
    "b": "men's red cotton tee shirt",
    "c": "stainless steel chef knife for the kitchen",
    "d": "",  # no text: missing, never encoded
    "e": "wireless bluetooth headphones with noise cancelling",
}


def _png(path: Path, rgb: tuple[int, int, int], size: int = 24) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), rgb).save(path)


def make_dataset(root: Path, texts: dict[str, str] = TEXTS) -> Path:
    """Five items: a, b, e have images; c's image file is missing; d's image is corrupt."""
    _png(root / "images/a.png", (220, 30, 30))
    _png(root / "images/b.png", (200, 40, 40))
    _png(root / "images/e.png", (30, 30, 220))
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "images/d.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    images = {"a": "images/a.png", "b": "images/b.png", "c": "images/c.png",
              "d": "images/d.png", "e": "images/e.png"}
    rows = [(f"u{u}", item, float(10 * u + k)) for u in range(4)
            for k, item in enumerate("abcde"[u % 2:] + "abcde"[:u % 2])]
    return write_dataset(root, "toy", rows,
                         [(i, texts[i], texts[i], images[i]) for i in "abcde"])


@pytest.fixture
def toy(tmp_path: Path):
    data = load_dataset(make_dataset(tmp_path / "toy"))
    return data, make_split(data)


def save_tiny_checkpoint(folder: Path, kind: str = "clip", seed: int = 0) -> Path:
    """A random tiny CLIP/SigLIP saved like a real checkpoint: weights, config, tokenizer (a
    byte-level BPE trained offline) and a PIL image processor."""
    recipe = harness_clip.Recipe(width=32, heads=2, vocab_size=300, max_length=16)
    return harness_clip.random_checkpoint(folder, list(TEXTS.values()) * 3, kind, recipe,
                                          image_size=32, seed=seed)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-clip")


class Spy:
    """Counts calls of ``models.encode_items`` and records what each batch encodes."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        self.batches: list[int] = []
        original, encode = models.encode_items, models._Encoder.encode

        def encode_items(encoder, modality, *args, **kwargs):
            self.calls.append(modality)
            return original(encoder, modality, *args, **kwargs)

        def batch(encoder, modality, inputs):
            self.batches.append(len(inputs))
            return encode(encoder, modality, inputs)

        monkeypatch.setattr(models, "encode_items", encode_items)
        monkeypatch.setattr(models._Encoder, "encode", batch)


def test_minilm_embeddings(toy, tmp_path):
    data, split = toy
    feats = prepare_features(data, split, {"text": "all-MiniLM-L6-v2"}, tmp_path / "cache")
    text = feats["text"]
    assert text.encoder == "sentence-transformers/all-MiniLM-L6-v2"
    assert text.values.shape == (data.n_items, 384) and text.values.dtype == np.float32
    row = {tok: i for i, tok in enumerate(data.item_tokens)}
    present = [row[t] for t in "abce"]
    assert np.allclose(np.linalg.norm(text.values[present], axis=1), 1.0, atol=1e-5)
    d = row["d"]  # empty text: missing, zeros, counted
    assert not text.present[d] and not text.values[d].any() and not text.present[0]
    assert text.missing_count() == 1 and text.meta["missing"] == {"no text": 1}
    v = text.values
    assert v[row["a"]] @ v[row["b"]] > v[row["a"]] @ v[row["c"]] + 0.3
    assert v[row["a"]] @ v[row["b"]] > v[row["a"]] @ v[row["e"]] + 0.3
    # both names of the packaged model resolve to the same checkpoint and cache entry
    assert resolve_checkpoint("sentence-transformers/all-MiniLM-L6-v2") == \
        resolve_checkpoint("all-MiniLM-L6-v2")


@pytest.mark.parametrize("kind", ["minilm", "clip", "siglip"])
def test_text_batches_tokenise_once_by_length_and_match_single_texts(kind, tmp_path,
                                                                      monkeypatch):
    """Texts are tokenised in one call, encoded once per distinct text in batches of
    non-increasing token count, and every embedding equals the text encoded alone (the old
    one-tokenizer-call-per-batch path with a batch of one) within float tolerance."""
    import torch

    path = (resolve_checkpoint("all-MiniLM-L6-v2") if kind == "minilm"
            else save_tiny_checkpoint(tmp_path / kind, kind))
    encoder = models.load_encoder(path, "cpu", EncodeSettings())
    words = ["red", "cotton", "shirt", "steel", "knife", "wireless", "headphones", "mug",
             "blue", "kitchen"]
    texts = [" ".join(words[(3 * i) % 10:] + words[:i % 7]) for i in range(23)]
    texts[5] = texts[17] = texts[2]  # duplicates: encoded once, equal rows
    by_item = {i + 1: t for i, t in enumerate(texts)}
    by_item[9] = None  # missing: never encoded
    calls, widths = [], []
    tokenize, encode = type(encoder).tokenize, type(encoder).encode
    monkeypatch.setattr(type(encoder), "tokenize",
                        lambda self, xs: calls.append(len(xs)) or tokenize(self, xs))
    monkeypatch.setattr(type(encoder), "encode", lambda self, m, xs: widths.append(
        [len(x["input_ids"]) for x in xs]) or encode(self, m, xs))
    values, present = models.encode_items(encoder, "text", list(by_item), by_item.get,
                                          len(texts) + 1, batch_size=4)
    distinct = len({t for t in by_item.values() if t is not None})
    assert calls == [distinct] and sum(map(len, widths)) == distinct
    flat = [w for batch in widths for w in batch]
    assert flat == sorted(flat, reverse=True) and len(set(flat)) > 1
    assert present.tolist() == [False] + [by_item[i] is not None for i in range(1, 24)]
    assert not values[9].any() and np.array_equal(values[6], values[3])
    for item, text in by_item.items():
        if text is None:
            continue
        padding = getattr(encoder, "padding", True)
        alone = encoder.tokenizer([text], padding=padding, truncation=True,
                                  max_length=encoder.max_length, return_tensors="pt")
        alone = {k: v for k, v in alone.items() if k in encoder.token_keys}
        with torch.inference_mode():
            ref = (encoder.model(**alone).last_hidden_state.mean(1) if kind == "minilm"
                   else encoder.model.get_text_features(**alone))
        ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
        ref = torch.nn.functional.normalize(ref.float(), dim=-1)[0].numpy()
        np.testing.assert_allclose(values[item], ref, atol=2e-6)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_tiny_checkpoint_through_from_pretrained(toy, tmp_path, kind, monkeypatch):
    data, split = toy
    path = save_tiny_checkpoint(tmp_path / kind, kind)
    spy = Spy(monkeypatch)
    feats = prepare_features(data, split, {"text": str(path), "image": str(path)},
                             tmp_path / "cache")
    assert sorted(spy.calls) == ["image", "text"]
    image, text = feats["image"], feats["text"]
    row = {tok: i for i, tok in enumerate(data.item_tokens)}
    assert image.encoder == str(path)
    assert image.present.tolist() == [False, *[t in "abe" for t in data.item_tokens[1:]]]
    assert image.missing_count() == 2 and not image.values[row["c"]].any()
    assert sorted(image.meta["missing"]) == ["missing", "unreadable (UnidentifiedImageError)"]
    assert text.missing_count() == 1 and not text.present[row["d"]]
    ok = image.present
    assert np.allclose(np.linalg.norm(image.values[ok], axis=1), 1.0, atol=1e-5)
    assert np.isfinite(image.values).all() and np.isfinite(text.values).all()
    assert image.dim == text.dim
    # missing inputs never reach the encoder: 3 readable images, 4 non-empty texts
    assert sorted(spy.batches) == [3, 4]


def test_cache_reuse_and_key_changes(toy, tiny_clip, tmp_path, monkeypatch):
    data, split = toy
    cache = tmp_path / "cache"
    spy = Spy(monkeypatch)
    request = {"text": str(tiny_clip), "image": str(tiny_clip)}
    first = prepare_features(data, split, request, cache)
    assert len(spy.calls) == 2 and len(list((cache / "embeddings").glob("*.npz"))) == 2

    def no_load(*args, **kwargs):
        raise AssertionError("the encoder was loaded although every embedding is cached")

    with monkeypatch.context() as m:
        m.setattr(models, "load_encoder", no_load)
        again = prepare_features(data, split, request, cache)
    assert len(spy.calls) == 2
    for modality in request:
        assert np.array_equal(first[modality].values, again[modality].values)
        assert np.array_equal(first[modality].present, again[modality].present)
        assert again[modality].encoder == first[modality].encoder
        assert again[modality].meta["key"] == first[modality].meta["key"]

    # other preprocessing -> re-encode (text only: image settings unchanged)
    prepare_features(data, split, request, cache, settings=EncodeSettings(max_length=8))
    assert spy.calls[2:] == ["text"]
    # a perturbation -> re-encode, never the clean embeddings
    drop = {"name": "drop", "rate": 1.0, "modalities": ["image"]}
    perturbed = prepare_features(data, split, {"image": str(tiny_clip)}, cache, perturbation=drop)
    assert spy.calls[3:] == ["image"]
    assert perturbed["image"].missing_count() == data.n_items - 1
    assert perturbed["image"].meta["missing"]["removed by perturbation"] == 3
    # other checkpoint content (other weights, same folder) -> re-encode
    save_tiny_checkpoint(tiny_clip, seed=1)
    prepare_features(data, split, {"image": str(tiny_clip)}, cache)
    assert spy.calls[4:] == ["image"]
    # other dataset content -> re-encode
    changed = load_dataset(make_dataset(tmp_path / "toy2", {**TEXTS, "a": "a blue mug"}))
    assert changed.content_hash != data.content_hash
    prepare_features(changed, make_split(changed), {"text": str(tiny_clip)}, cache)
    assert spy.calls[5:] == ["text"]


def test_checkpoint_hash_follows_content(tiny_clip, tmp_path):
    before = checkpoint_hash(tiny_clip)
    assert checkpoint_hash(tiny_clip) == before
    import shutil

    copy = shutil.copytree(tiny_clip, tmp_path / "copy")
    assert checkpoint_hash(copy) == before  # content, not location
    (copy / "tokenizer_config.json").write_text("{}")
    assert checkpoint_hash(copy) != before


def test_corrupt_cache_file_is_recomputed(toy, tiny_clip, tmp_path):
    data, split = toy
    feats = prepare_features(data, split, {"text": str(tiny_clip)}, tmp_path / "cache")
    path = tmp_path / "cache" / "embeddings" / f"{feats['text'].meta['key']}.npz"
    path.write_bytes(b"truncated")
    again = prepare_features(data, split, {"text": str(tiny_clip)}, tmp_path / "cache")
    assert np.array_equal(again["text"].values, feats["text"].values)


def test_user_errors(toy, tmp_path):
    data, split = toy
    with pytest.raises(ConfigError, match="text-only"):
        prepare_features(data, split, {"image": "all-MiniLM-L6-v2"}, tmp_path)
    with pytest.raises(ConfigError, match="modality"):
        prepare_features(data, split, {"audio": "all-MiniLM-L6-v2"}, tmp_path)
    with pytest.raises(ConfigError, match="Hugging Face hub"):
        prepare_features(data, split, {"text": "no-such-org/no-such-model"}, tmp_path)
    with pytest.raises(ConfigError, match="perturbation"):
        prepare_features(data, split, {"text": "all-MiniLM-L6-v2"}, tmp_path,
                         perturbation={"name": "nope"})
    with pytest.raises(ConfigError, match="split"):
        prepare_features(data, None, {"image": "harness-clip"}, tmp_path)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from benchmark.data.synthetic import SyntheticConfig, generate_synthetic

    root = generate_synthetic(tmp_path_factory.mktemp("synthetic"),
                              SyntheticConfig(n_users=150, n_items=120, seed=3))
    data = load_dataset(root)
    return data, make_split(data)


def test_harness_clip_trains_on_training_items_only(synthetic, tmp_path, monkeypatch):
    data, split = synthetic
    seen: list[np.ndarray] = []
    train = harness_clip.train_checkpoint

    def spy(data, items, *args, **kwargs):
        seen.append(np.asarray(items))
        return train(data, items, *args, **kwargs)

    monkeypatch.setattr(harness_clip, "train_checkpoint", spy)
    monkeypatch.setattr(harness_clip, "ITEMS_RECIPE", harness_clip.Recipe(steps=60))
    request = {"image": "harness-clip-items", "text": "harness-clip-items"}
    feats = prepare_features(data, split, request, tmp_path / "cache", seed=0)
    assert len(seen) == 1  # trained once for both modalities
    trained = set(seen[0].tolist())
    in_training = {int(i) for s in split.train_sequences() for i in s}
    cold = {i for i in range(1, data.n_items) if data.item_fields["cold"][i] > 0}
    targets = {int(split.sequences[u][p]) for c in (split.valid, split.test)
               for u, p in zip(c.user, c.pos)}
    assert trained == in_training
    assert cold & targets and not cold & trained  # held-out-only (cold) items never trained on
    image = feats["image"]
    assert image.encoder == harness_clip.ITEMS_LABEL and "not a pretrained CLIP" in image.encoder
    assert image.present[1:].all() and image.values.shape[1] == harness_clip.Recipe().width
    # the trained CLIP's image embeddings group the (visual-only) colours: 1-NN accuracy
    colors = np.array(data.item_fields["color"][1:])
    x = image.values[1:]
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    accuracy = float((colors[sim.argmax(1)] == colors).mean())
    chance = float(sum((np.unique(colors, return_counts=True)[1] / len(colors)) ** 2))
    assert accuracy > 2 * chance, (accuracy, chance)
    trained_on = next((tmp_path / "cache" / "checkpoints").glob("harness-clip-*"))
    losses = json.loads((trained_on / "training.json").read_text())["epoch_losses"]
    assert losses[-1] < losses[0] - 0.5
    assert json.loads((trained_on / "harness.json").read_text())["split"] == split.checksum
    # cached: a second call neither trains nor encodes; another seed trains again
    prepare_features(data, split, request, tmp_path / "cache", seed=0)
    assert len(seen) == 1
    prepare_features(data, split, {"image": "harness-clip-items"}, tmp_path / "cache", seed=1)
    assert len(seen) == 2


def test_harness_clip_is_deterministic(synthetic, tmp_path, monkeypatch):
    data, split = synthetic
    monkeypatch.setattr(harness_clip, "ITEMS_RECIPE", harness_clip.Recipe(steps=10))
    a = prepare_features(data, split, {"image": "harness-clip-items"}, tmp_path / "a", seed=5)
    b = prepare_features(data, split, {"image": "harness-clip-items"}, tmp_path / "b", seed=5)
    assert np.array_equal(a["image"].values, b["image"].values)


TINY_CORPUS = replace(harness_clip.CORPUS_RECIPE, width=32, heads=2, steps=12, batch_size=32,
                      corpus_size=96, conv_widths=(8, 16), conv_depths=(1, 1))


def test_harness_clip_is_corpus_pretrained_on_the_synthetic_world(synthetic, toy, tmp_path,
                                                                  monkeypatch):
    """On the synthetic world ``harness-clip`` is pre-trained on the rendered corpus: never on
    the catalogue (no items, no split, no seed in its identity), once for every run, saved and
    loaded as a real CLIPModel; elsewhere it is the train-items recipe."""
    from benchmark.data.synthetic import SyntheticConfig, generate_synthetic

    data, split = synthetic
    pretrained: list[Path] = []
    pretrain = harness_clip.pretrain_checkpoint

    def spy(recipe, out, *args, **kwargs):
        pretrained.append(out)
        return pretrain(recipe, out, *args, **kwargs)

    def no_catalogue(*args, **kwargs):
        raise AssertionError("the corpus recipe must not train on the catalogue")

    monkeypatch.setattr(harness_clip, "pretrain_checkpoint", spy)
    monkeypatch.setattr(harness_clip, "train_checkpoint", no_catalogue)
    monkeypatch.setattr(harness_clip, "CORPUS_RECIPE", TINY_CORPUS)
    request = {"image": "harness-clip", "text": "harness-clip"}
    feats = prepare_features(data, split, request, tmp_path / "cache", seed=0)
    assert feats["image"].encoder == harness_clip.LABEL
    assert "stand-in for a web-pretrained CLIP" in harness_clip.LABEL
    assert feats["text"].present[1:].all() and feats["image"].values.shape[1] == 32
    folder = next((tmp_path / "cache" / "checkpoints").glob("harness-clip-*"))
    config = json.loads((folder / "config.json").read_text())
    # a CNN image tower and the CLIP text tower in transformers' own dual-encoder class
    assert config["architectures"] == ["VisionTextDualEncoderModel"]
    assert config["vision_config"]["model_type"] == "efficientnet"
    assert config["text_config"]["model_type"] == "clip_text_model"
    # CLIP pools text at EOS only when eos_token_id != 2 (else at the highest token id)
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["text_config"]["eos_token_id"] == 1 and tokenizer["eos_token"] == "</s>"
    harness = json.loads((folder / "harness.json").read_text())
    assert set(harness) == {"label", "recipe", "corpus"}  # no dataset, split or seed
    assert harness["recipe"]["pretrain"] == "corpus" and harness["corpus"]["n"] == 96
    training = json.loads((folder / "training.json").read_text())
    assert training["corpus"] == {"version": 2, "n": 96, "seed": 0, "image_size": 32}
    # another seed, another world: the same pre-trained checkpoint (one pre-training)
    other = load_dataset(generate_synthetic(tmp_path / "other",
                                            SyntheticConfig(n_users=60, n_items=80, seed=9)))
    prepare_features(other, make_split(other), {"image": "harness-clip"}, tmp_path / "cache",
                     seed=4)
    prepare_features(data, split, {"image": "harness-clip-corpus"}, tmp_path / "cache", seed=2)
    assert len(pretrained) == 1
    # a dataset that is not the synthetic world: the train-items recipe
    monkeypatch.setattr(harness_clip, "train_checkpoint", lambda *a, **k: None)
    toy_data, toy_split = toy
    source = resolve_encoder("harness-clip", toy_data, toy_split, 0, tmp_path)
    assert source.label == harness_clip.ITEMS_LABEL and source.fingerprint["split"]
    assert resolve_encoder("harness-clip-corpus", toy_data, None, 0, tmp_path).label == \
        harness_clip.LABEL


def test_cnn_tower_starts_with_identity_batch_norms():
    """The dual encoder's initialisation draws batch-norm scales like weights (N(0, 0.02)),
    which leaves the pooled image features ~1e-17: the CNN tower resets them to the identity."""
    import torch

    model, _, _ = harness_clip.build_model("clip", ["a red circle"] * 4, TINY_CORPUS, 32, 0)
    norms = [m for m in model.vision_model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(bool((m.weight == 1).all()) for m in norms)
    with torch.no_grad():
        out = model.get_image_features(pixel_values=torch.randn(4, 3, 32, 32))
    features = out if isinstance(out, torch.Tensor) else out.pooler_output
    assert features.shape == (4, 32) and float(features.std(0).mean()) > 1e-3


def test_corpus_pretraining_is_deterministic(tmp_path):
    a = harness_clip.pretrain_checkpoint(TINY_CORPUS, tmp_path / "a")
    b = harness_clip.pretrain_checkpoint(TINY_CORPUS, tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    losses = json.loads((a / "training.json").read_text())["losses_per_tenth"]
    assert len(losses) == 12 and all(np.isfinite(losses))


def test_corpus_recipe_key_follows_recipe_and_corpus(synthetic, monkeypatch):
    """The pre-trained checkpoint's identity (its cache folder and the embeddings' key) changes
    with the recipe and with the corpus generator, never with the dataset, split or seed."""
    from benchmark.data import corpus

    data, split = synthetic
    base = harness_clip.fingerprint(data, split, 0, TINY_CORPUS)
    assert harness_clip.fingerprint(None, None, 7, TINY_CORPUS) == base
    assert harness_clip.fingerprint(data, split, 0, replace(TINY_CORPUS, corpus_seed=1)) != base
    assert harness_clip.fingerprint(data, split, 0, replace(TINY_CORPUS, steps=13)) != base
    assert harness_clip.fingerprint(data, split, 0, replace(TINY_CORPUS, vision="vit")) != base
    assert harness_clip.fingerprint(data, split, 0, replace(TINY_CORPUS, conv_depths=(1, 2))) != base
    monkeypatch.setattr(corpus, "CORPUS_VERSION", corpus.CORPUS_VERSION + 1)
    assert harness_clip.fingerprint(data, split, 0, TINY_CORPUS) != base
