"""The captioned pre-training corpus: deterministic, disjoint from any catalogue, labels right."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.data import corpus as corpus_module
from benchmark.data.corpus import (
    CAPTION_TEMPLATES,
    COLOR_TEMPLATES,
    SHAPE_TEMPLATES,
    render_corpus,
)
from benchmark.data.dataset import load_dataset
from benchmark.data.synthetic import (
    BRANDS,
    COLORS,
    FILLER,
    PRODUCTS,
    SHAPES,
    SyntheticConfig,
    generate_synthetic,
)
from benchmark.errors import ConfigError


def digest(c) -> str:
    h = hashlib.sha256(c.images.tobytes())
    for part in (c.captions, c.shape_captions, c.color_captions, c.texts):
        h.update("\n".join(part).encode())
    for arr in (c.color, c.shape, c.brand, c.product):
        h.update(arr.tobytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_corpus():
    a, b = render_corpus(60, seed=3, image_size=16), render_corpus(60, seed=3, image_size=16)
    assert digest(a) == digest(b)
    assert digest(a) != digest(render_corpus(60, seed=4, image_size=16))
    assert a.images.shape == (60, 16, 16, 3) and a.images.dtype == np.uint8


def test_labels_are_balanced_and_match_captions_and_texts():
    c = render_corpus(96, seed=0, image_size=16)
    colors = list(COLORS)
    # 96 samples: every colour 12 times, shape 16, brand 12, product 16 (balanced lists)
    assert np.bincount(c.color, minlength=8).tolist() == [12] * 8
    assert np.bincount(c.shape, minlength=6).tolist() == [16] * 6
    assert np.bincount(c.brand, minlength=8).tolist() == [12] * 8
    assert np.bincount(c.product, minlength=6).tolist() == [16] * 6
    for caption, col, shp in zip(c.captions, c.color, c.shape):
        assert caption in {t.format(color=colors[col], shape=SHAPES[shp])
                           for t in CAPTION_TEMPLATES}
    for caption, shp in zip(c.shape_captions, c.shape):
        assert caption in {t.format(shape=SHAPES[shp]) for t in SHAPE_TEMPLATES}
    for caption, col in zip(c.color_captions, c.color):
        assert caption in {t.format(color=colors[col]) for t in COLOR_TEMPLATES}
    vocabulary = set(BRANDS) | set(PRODUCTS) | set(FILLER)
    for text, brand, product in zip(c.texts, c.brand, c.product):
        words = text.split()
        assert words.count(BRANDS[brand]) == 1 and words.count(PRODUCTS[product]) == 1
        assert set(words) <= vocabulary  # never a colour or shape word in a product text
        assert not {w for w in words if w in BRANDS or w in PRODUCTS} - {BRANDS[brand],
                                                                         PRODUCTS[product]}


def test_images_show_their_colour():
    """The shape's pixels are the colour of the label: the colour nearest the image's most
    saturated pixels' mean is the labelled one for nearly every image."""
    c = render_corpus(80, seed=1, image_size=32)
    palette = np.array(list(COLORS.values()), dtype=np.float64)
    hits = 0
    for img, col in zip(c.images.astype(np.float64), c.color):
        flat = img.reshape(-1, 3)
        saturation = flat.max(1) - flat.min(1)
        top = flat[np.argsort(saturation)[-20:]].mean(0)
        hits += int(np.argmin(((palette - top) ** 2).sum(1)) == col)
    assert hits >= 72  # >= 90%: the renderer's jitter and noise blur a few


def test_disjoint_from_a_catalogue(tmp_path: Path, monkeypatch):
    """No corpus image equals a catalogue image rendered with the same seed, and rendering the
    corpus reads no file (so no interaction, split or item)."""
    config = SyntheticConfig(n_users=30, n_items=60, seq_len=(5, 8), image_size=16, seed=0)
    data = load_dataset(generate_synthetic(tmp_path / "cat", config))
    catalogue = {np.asarray(Image.open(data.image_path(i)).convert("RGB")).tobytes()
                 for i in range(1, data.n_items)}

    def no_reading(*args, **kwargs):
        raise AssertionError("the corpus must not read files")

    monkeypatch.setattr("builtins.open", no_reading)
    monkeypatch.setattr(Path, "read_text", no_reading)
    monkeypatch.setattr(Path, "read_bytes", no_reading)
    c = render_corpus(200, seed=0, image_size=16)
    monkeypatch.undo()
    assert not catalogue & {a.tobytes() for a in c.images}
    # The seed spaces differ by construction: a corpus stream is never a catalogue stream.
    corpus_root = corpus_module.corpus_seed_sequence(0)
    catalogue_streams = np.random.SeedSequence(0).spawn(5)
    keys = {tuple(s.spawn_key) for s in catalogue_streams}
    assert tuple(corpus_root.spawn_key) not in keys
    assert all(tuple(s.spawn_key)[:1] not in {(0,), (1,), (2,), (3,), (4,)}
               for s in corpus_root.spawn(4))


@pytest.mark.parametrize("kwargs", [{"n": 0, "seed": 0}, {"n": 5, "seed": -1},
                                    {"n": 5, "seed": 0, "image_size": 8}, {"n": 2.5, "seed": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigError, match="corpus:"):
        render_corpus(**kwargs)
