"""The synthetic dataset: determinism, knobs, and that each signal is learnable only from its source.

No training here: the checks use oracles that know one item attribute (what a model of that
modality could learn at best) and simple classifiers on the written images and texts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.data.dataset import Dataset, load_dataset
from benchmark.data.synthetic import (
    BRANDS,
    COLORS,
    PRODUCTS,
    RULES,
    SHAPES,
    SIGNALS,
    START,
    SyntheticConfig,
    generate_synthetic,
)
from benchmark.errors import ConfigError

SMALL = SyntheticConfig(n_users=200, n_items=120, seq_len=(5, 10), image_size=16)
K = 10


@pytest.fixture(scope="module")
def default(tmp_path_factory) -> Dataset:
    return load_dataset(generate_synthetic(tmp_path_factory.mktemp("default"), SyntheticConfig()))


def sequences(ds: Dataset) -> list[list[tuple[int, str]]]:
    """Each user's (item, signal) pairs in time order."""
    order = np.lexsort((ds.timestamp, ds.user))
    seqs: dict[int, list[tuple[int, str]]] = {}
    for k in order:
        seqs.setdefault(int(ds.user[k]), []).append((int(ds.item[k]), ds.inter_fields["signal"][k]))
    return list(seqs.values())


def codes(ds: Dataset, *names: str) -> np.ndarray:
    """Integer code per internal item id of the combination of item fields (-1 for padding)."""
    values = list(zip(*(ds.item_fields[n] for n in names)))
    index = {v: i for i, v in enumerate(sorted(set(values[1:])))}
    return np.array([-1] + [index[v] for v in values[1:]])


def cold_mask(ds: Dataset) -> np.ndarray:
    return np.array([v == 1.0 for v in ds.item_fields["cold"]])


def test_cases_per_signal_and_coldness(default):
    cold = cold_mask(default)
    cells = Counter((seq[-1][1], bool(cold[seq[-1][0]])) for seq in sequences(default))
    for rule in RULES:
        for is_cold in (False, True):
            assert cells[rule, is_cold] >= 150, (rule, is_cold, cells)


def targets_per_item(ds: Dataset) -> tuple[float, float]:
    """Mean number of validation/test targets per cold item and per warm item."""
    counts = np.zeros(ds.n_items)
    for seq in sequences(ds):
        for item, _ in seq[-2:]:
            counts[item] += 1
    cold = cold_mask(ds)
    return counts[cold].mean(), counts[1:][~cold[1:]].mean()


def test_cold_and_warm_items_are_targets_equally_often(default, tmp_path):
    # the default calibration: a "never trained first" prior gains nothing overall
    cold, warm = targets_per_item(default)
    assert 0.9 < cold / warm < 1.1, (cold, warm)
    # an explicit rate above the cold share over-represents cold targets, as the knob says:
    # expected ratio (0.7 / 0.3) / ((1 - 0.7) / (1 - 0.3)) = 5.4, less the pool fallbacks
    over = load_dataset(generate_synthetic(tmp_path, replace(SMALL, cold_target_rate=0.7)))
    cold, warm = targets_per_item(over)
    assert cold / warm > 3, (cold, warm)


def test_default_target_rate_is_the_cold_share():
    assert SyntheticConfig().target_cold_rate == SyntheticConfig().n_cold / 500 == 0.4
    assert SyntheticConfig(cold_target_rate=0.5).target_cold_rate == 0.5
    assert SyntheticConfig(cold_target_rate=1).cold_target_rate == 1.0  # coerced like the rest


def test_process_invariants(default):
    cold = cold_mask(default)
    lo, hi = SyntheticConfig().seq_len
    trained = set()
    for seq in sequences(default):
        items = [i for i, _ in seq]
        assert lo <= len(seq) <= hi
        assert len(set(items)) == len(items), "an item repeated within a user"
        assert seq[0][1] == START and all(s in RULES for _, s in seq[1:])
        assert not cold[items[:-2]].any(), "a cold item in a training position"
        trained.update(items[:-2])
    warm = set(np.flatnonzero(~cold)) - {0}
    assert warm <= trained, "every warm item is in some training position"
    assert set(default.inter_fields["signal"]) <= set(SIGNALS)


def test_labels_name_the_rule_that_generated_the_item(default):
    window = SyntheticConfig().window
    key = {"visual": codes(default, "color", "shape"),
           "textual": codes(default, "brand", "product"),
           "collaborative": codes(default, "group")}
    for seq in sequences(default):
        for pos, (item, signal) in enumerate(seq):
            if signal in key:
                recent = [i for i, _ in seq[max(0, pos - window):pos]]
                assert key[signal][item] in key[signal][recent]


def oracle_hr(key: np.ndarray, history: list[int], target: int, window: int) -> float:
    """Expected HR@K (random tie-break) of scoring items by 'shares key with a recent item'."""
    score = np.isin(key, key[history[-window:]]).astype(float)
    score[0] = score[history] = -np.inf
    above, tied = (score > score[target]).sum(), (score == score[target]).sum()
    return float(np.clip((K - above) / tied, 0.0, 1.0))


def test_each_signal_is_rankable_only_from_its_own_attribute(default):
    window = SyntheticConfig().window
    oracles = {"visual": codes(default, "color", "shape"),
               "textual": codes(default, "brand", "product"),
               "collaborative": codes(default, "group")}
    cold = cold_mask(default)
    chance = K / (default.n_items - 1 - SyntheticConfig().seq_len[1])  # an upper bound
    for rule in RULES:
        for is_cold in (False, True):
            cases = [seq for seq in sequences(default)
                     if seq[-1][1] == rule and cold[seq[-1][0]] == is_cold]
            for name, key in oracles.items():
                hr = np.mean([oracle_hr(key, [i for i, _ in seq[:-1]], seq[-1][0], window)
                              for seq in cases])
                if name == rule:
                    assert hr > 10 * chance, (rule, is_cold, name, hr)
                else:
                    assert hr < 2 * chance, (rule, is_cold, name, hr)


def nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Accuracy on odd rows of class centroids fit on even rows; ``x`` is rows x [positions x]
    features, giving one accuracy per position."""
    train = np.arange(len(y)) % 2 == 0
    classes = np.unique(y)
    centroids = np.stack([x[train & (y == c)].mean(0) for c in classes])
    pred = classes[((x[~train][:, None] - centroids[None]) ** 2).sum(-1).argmin(1)]
    return (pred == y[~train].reshape(-1, *[1] * (pred.ndim - 1))).mean(0)


def images(ds: Dataset) -> np.ndarray:
    return np.stack([np.asarray(Image.open(ds.image_path(i)), dtype=np.float64)
                     for i in range(1, ds.n_items)])


def test_images_show_colour_and_shape_but_not_text_attributes(default):
    pixels = images(default)
    n, size = len(pixels), pixels.shape[1]
    label = {f: np.array(default.item_fields[f][1:]) for f in ("color", "shape", "brand", "product")}
    flat = pixels.reshape(n, -1)
    assert nearest_centroid_accuracy(flat, label["color"]) > 2.4 / len(COLORS)
    assert nearest_centroid_accuracy(flat, label["brand"]) < 1.6 / len(BRANDS)
    assert nearest_centroid_accuracy(flat, label["product"]) < 1.6 / len(PRODUCTS)
    # position jitter: no single pixel reads the colour reliably
    per_pixel = nearest_centroid_accuracy(pixels.reshape(n, size * size, 3), label["color"])
    assert per_pixel.max() < 0.7

    # the shape is in the image: translation-invariant features of the saturated region suffice
    def shape_features(mask: np.ndarray) -> list[float]:
        ys, xs = np.nonzero(mask)
        h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
        cy, cx = round(ys.mean()), round(xs.mean())
        return [len(ys) / (h * w), float(not mask[cy - 1:cy + 2, cx - 1:cx + 2].any()),
                min(h, w) / max(h, w)]

    saturated = pixels.max(-1) - pixels.min(-1) > 60
    features = np.array([shape_features(m) for m in saturated])
    features = (features - features.mean(0)) / features.std(0)
    assert nearest_centroid_accuracy(features, label["shape"]) > 2.4 / len(SHAPES)


def words_of(ds: Dataset, field: str) -> list[set[str]]:
    return [set(v.split()) for v in ds.item_fields[field][1:]]


def test_text_names_brand_and_product_never_colour_or_shape(default):
    visual_words = set(COLORS) | set(SHAPES)
    for field in ("title", "text"):
        for i, words in enumerate(words_of(default, field), start=1):
            assert {default.item_fields["brand"][i], default.item_fields["product"][i]} <= words
            assert not words & visual_words


def test_redundancy_names_the_colour_in_that_share_of_items(tmp_path):
    ds = load_dataset(generate_synthetic(tmp_path, replace(SMALL, redundancy=0.4)))
    for field in ("title", "text"):
        named = [ds.item_fields["color"][i] in words
                 for i, words in enumerate(words_of(ds, field), start=1)]
        assert sum(named) == round(0.4 * SMALL.n_items)
        assert not any(words & set(SHAPES) for words in words_of(ds, field))


def permutation_p_value(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> float:
    """P(mutual information of a shuffled pair >= the observed one)."""
    def mi(x: np.ndarray, y: np.ndarray) -> float:
        joint = np.zeros((x.max() + 1, y.max() + 1))
        np.add.at(joint, (x, y), 1)
        joint /= joint.sum()
        outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
        nz = joint > 0
        return float((joint[nz] * np.log(joint[nz] / outer[nz])).sum())

    observed = mi(a, b)
    null = [mi(rng.permutation(a), b) for _ in range(200)]
    return (1 + sum(m >= observed for m in null)) / 201


def test_attributes_are_independent(default):
    rng = np.random.default_rng(0)
    attr = {f: codes(default, f)[1:] for f in ("color", "shape", "brand", "product", "group")}
    attr["cold"] = cold_mask(default)[1:].astype(int)
    names = list(attr)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert permutation_p_value(attr[a], attr[b], rng) > 0.005, (a, b)


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_knobs_give_byte_identical_files(tmp_path):
    a = folder_bytes(generate_synthetic(tmp_path / "a", SMALL))
    b = folder_bytes(generate_synthetic(tmp_path / "b", SMALL))
    assert a == b
    hashes = {load_dataset(tmp_path / d).content_hash for d in ("a", "b")}
    assert len(hashes) == 1
    other = load_dataset(generate_synthetic(tmp_path / "c", replace(SMALL, seed=1)))
    assert other.content_hash not in hashes


def test_presentation_knobs_leave_interactions_unchanged(tmp_path):
    base = generate_synthetic(tmp_path / "base", SMALL)
    varied = generate_synthetic(tmp_path / "varied", replace(
        SMALL, redundancy=0.5, missing_image_rate=0.3, missing_text_rate=0.3, image_size=24))
    inter = "synthetic.inter"
    assert (base / inter).read_bytes() == (varied / inter).read_bytes()


def test_missing_rates_are_exact_and_recorded(tmp_path):
    config = replace(SMALL, missing_image_rate=0.2, missing_text_rate=0.1)
    ds = load_dataset(generate_synthetic(tmp_path, config))
    coverage = ds.manifest["coverage"]
    assert coverage["items_with_readable_image"] == SMALL.n_items - 24
    assert coverage["items_with_text"] == SMALL.n_items - 12
    assert coverage["image_problems"] == {"no image entry": 24}
    assert len(list((tmp_path / "images").glob("*.png"))) == SMALL.n_items - 24
    assert sum(ds.item_text(i) == "" for i in range(1, ds.n_items)) == 12


def test_manifest_records_the_config(tmp_path):
    ds = load_dataset(generate_synthetic(tmp_path, SMALL))
    source = ds.manifest["source"]
    assert source["generator"] == "synthetic"
    assert SyntheticConfig(**source["config"]) == SMALL


def test_key_is_stable_and_tracks_the_knobs():
    assert SyntheticConfig().key() == SyntheticConfig().key()
    assert SyntheticConfig(seq_len=[8, 20]).key() == SyntheticConfig().key()
    assert SyntheticConfig(zipf=1).key() == SyntheticConfig().key()
    keys = {SyntheticConfig(seed=s).key() for s in range(5)} | {SyntheticConfig(s_v=0.3).key()}
    keys |= {SyntheticConfig(cold_target_rate=0.4).key()}  # the same process, a different knob
    assert len(keys) == 7
    assert len(SyntheticConfig().key()) == 12


@pytest.mark.parametrize("knobs, message", [
    ({"cold_share": 1.2}, "cold_share=1.2 must be in [0, 1]"),
    ({"missing_image_rate": -0.1}, "missing_image_rate=-0.1 must be in [0, 1]"),
    ({"missing_text_rate": 2.0}, "missing_text_rate=2.0 must be in [0, 1]"),
    ({"redundancy": 1.5}, "redundancy=1.5 must be in [0, 1]"),
    ({"cold_target_rate": 1.5}, "cold_target_rate=1.5 must be in [0, 1]"),
    ({"cold_target_rate": "half"}, "cold_target_rate='half' must be a number"),
    ({"s_v": 0.5, "s_t": 0.4, "s_cf": 0.3}, "s_v + s_t + s_cf = 1.2 must be at most 1"),
    ({"n_items": 40, "cold_share": 0.6}, "leaves 16 warm items, fewer than the longest sequence"),
    ({"seq_len": (2, 5)}, "seq_len=(2, 5) must be (min, max)"),
    ({"seq_len": (9, 8)}, "seq_len=(9, 8) must be (min, max)"),
    ({"seq_len": 8}, "seq_len=8 must be (min, max)"),
    ({"n_users": 100.0}, "n_users=100.0 must be an integer"),
    ({"s_v": "high"}, "s_v='high' must be a number"),
    ({"n_users": 0}, "n_users=0 must be >= 1"),
    ({"image_size": 8}, "image_size=8 must be >= 16"),
])
def test_bad_knobs_raise_one_line_config_errors(knobs, message):
    with pytest.raises(ConfigError) as err:
        SyntheticConfig(**knobs)
    assert message in str(err.value) and "\n" not in str(err.value)
