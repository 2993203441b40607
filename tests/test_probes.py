"""Linear probes of content features: warm-item training, cold-item accuracy, controls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmark.data.dataset import load_dataset, write_dataset
from benchmark.data.synthetic import SyntheticConfig, generate_synthetic
from benchmark.encoders.probes import fit_predict, probe_features, probe_metrics
from benchmark.features import ModalityFeatures
from benchmark.split import make_split


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    config = SyntheticConfig(n_users=200, n_items=150, seq_len=(5, 10), image_size=16, seed=2)
    data = load_dataset(generate_synthetic(tmp_path_factory.mktemp("world"), config))
    return data, make_split(data)


def one_hot(data, *attributes: str, noise: float = 0.0, seed: int = 0) -> ModalityFeatures:
    """Features that spell out ``attributes`` (one block of one-hots each), plus noise."""
    blocks = []
    for a in attributes:
        values = data.item_fields[a]
        classes = sorted(set(values[1:]))
        block = np.zeros((data.n_items, len(classes)), dtype=np.float32)
        for i in range(1, data.n_items):
            block[i, classes.index(values[i])] = 1.0
        blocks.append(block)
    x = np.concatenate(blocks, 1)
    x += noise * np.random.default_rng(seed).normal(size=x.shape).astype(np.float32)
    present = np.ones(data.n_items, dtype=bool)
    present[0] = False
    return ModalityFeatures(x, present, "oracle")


def test_fit_predict_hand_case():
    # 1-d, two classes split at 0: any logistic regression predicts by the sign
    x = np.array([[-3.0], [-2.0], [-1.0], [1.0], [2.0], [3.0]])
    y = np.array([0, 0, 0, 1, 1, 1])
    assert fit_predict(x, y, np.array([[-0.5], [0.4], [-10.0], [7.0]]), 2).tolist() == \
        [0, 1, 0, 1]


def test_probes_read_the_attribute_a_modality_carries(world):
    data, split = world
    features = {"image": one_hot(data, "color", "shape", noise=0.1),
                "text": one_hot(data, "brand", "product", noise=0.1, seed=1)}
    out = probe_features(data, split, features)
    assert set(out) == {f"{m}_{a}" for m in ("image", "text")
                        for a in ("color", "shape", "brand", "product")}
    for key in ("image_color", "image_shape", "text_brand", "text_product"):
        assert out[key]["accuracy"] == 1.0 and not out[key]["control"]
    # controls: the image spells out no brand (attributes are drawn independently)
    for key in ("image_brand", "image_product", "text_color", "text_shape"):
        assert out[key]["control"] and out[key]["accuracy"] < 3 * out[key]["chance"]
    assert out["image_color"]["chance"] == 0.125 and out["image_shape"]["chance"] == 0.1667
    warm = {int(i) for s in split.train_sequences() for i in s}
    assert out["image_color"]["train_items"] == len(warm)
    assert out["image_color"]["test_items"] == data.n_items - 1 - len(warm)
    # cold items are exactly those the generator made cold (never in a training position)
    cold = sum(1 for v in data.item_fields["cold"][1:] if v > 0)
    assert out["image_color"]["test_items"] >= cold
    assert probe_metrics(out)["probe_text_brand"] == 1.0
    assert probe_features(data, split, features) == out  # deterministic


def test_missing_items_and_no_attributes(world, tmp_path: Path):
    data, split = world
    image = one_hot(data, "color")
    cold = np.flatnonzero(split.train_item_counts(data.n_items) == 0)[1:]  # not padding
    image.present[cold[:5]] = False
    out = probe_features(data, split, {"image": image})
    assert set(out) == {"image_color", "image_shape", "image_brand", "image_product"}
    assert out["image_color"]["test_items"] == len(cold) - 5
    # a dataset without the hidden attribute columns: nothing to probe
    root = write_dataset(tmp_path / "plain", "plain",
                         [("u1", "a", 1.0), ("u1", "b", 2.0), ("u1", "c", 3.0)],
                         [(i, i, i, None) for i in "abc"])
    plain = load_dataset(root)
    x = ModalityFeatures(np.ones((4, 2), np.float32), np.array([False, True, True, True]))
    assert probe_features(plain, make_split(plain), {"image": x}) == {}
