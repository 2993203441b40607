"""Harness-pretrained VLM stand-ins (methods/vlm2rec/pretrain.py): recipe names and keys, the
image/text schedule, determinism, the build-once cache, provenance and the linear probe."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from benchmark.errors import ConfigError
from methods.vlm2rec import pretrain
from methods.vlm2rec.pretrain import PretrainRecipe, parse_name
from methods.vlm2rec.tiny import TINY_MARKER, stand_in_kind

# a few seconds on one core: 3 optimisation steps on a 64-sample corpus
SMALL = "steps=3,batch=4,corpus_n=64,bag_len=2"


@pytest.fixture(autouse=True)
def _small_probe(monkeypatch):
    monkeypatch.setattr(pretrain, "PROBE_N", 0)  # the held-out probe is measured elsewhere


def test_parse_name_defaults_overrides_and_errors():
    assert parse_name("tiny-qwen2-vl") is None
    r = parse_name("pretrained-tiny-smolvlm")
    assert (r.family, r.size, r.image_pretrain_scale) == ("smolvlm", "tiny", 0.5)
    r = parse_name("pretrained-tiny-qwen2-vl:image_pretrain_scale=0.1,steps=40")
    assert r.image_pretrain_scale == 0.1 and r.steps == 40 and isinstance(r.steps, int)
    for bad in ("pretrained-huge-qwen2-vl", "pretrained-tiny-qwen2-vl:nope=1",
                "pretrained-tiny-qwen2-vl:steps=ten", "pretrained-tiny-qwen2-vl:family=x",
                "pretrained-tiny-qwen2-vl:image_pretrain_scale=1.5",
                "pretrained-tiny-qwen2-vl:vision=huge", "pretrained-tiny-qwen2-vl:steps"):
        with pytest.raises(ConfigError):
            parse_name(bad)


def test_recipe_key_changes_with_every_knob():
    base = PretrainRecipe()
    assert base.key() == PretrainRecipe().key()
    for change in ({"steps": 301}, {"image_pretrain_scale": 0.2}, {"corpus_seed": 1},
                   {"family": "smolvlm"}, {"batch": 16}, {"seed": 1}, {"vision": "tiny-wide"},
                   {"hard_colours": 2}, {"bag_len": 1}, {"partial_captions": 1}):
        assert PretrainRecipe(**change).key() != base.key(), change


@pytest.mark.parametrize("scale, expected", [(0.5, 50), (0.1, 10), (0.0, 0), (1.0, 100),
                                             (0.25, 25)])
def test_image_step_schedule_share(scale, expected):
    r = PretrainRecipe(image_pretrain_scale=scale, steps=100)
    sides = [r.image_step(s) for s in range(100)]
    assert sum(sides) == expected
    if 0 < scale < 1:  # spread out: no two image steps closer than 1/scale - 1 apart
        gaps = np.diff(np.flatnonzero(sides))
        assert gaps.min() >= int(1 / scale) - 1 if len(gaps) else True


def test_pretraining_is_deterministic_and_changes_the_weights(tmp_path):
    recipe = parse_name(f"pretrained-tiny-qwen2-vl:{SMALL}")
    a = pretrain.build_pretrained_checkpoint(recipe, tmp_path / "a")
    b = pretrain.build_pretrained_checkpoint(recipe, tmp_path / "b")
    wa, wb = (load_file(str(p / "model.safetensors")) for p in (a, b))
    assert wa.keys() == wb.keys()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    # the same recipe without training: the random stand-in differs from the pretrained one
    zero = parse_name("pretrained-tiny-qwen2-vl:steps=0,batch=4,corpus_n=64,bag_len=2")
    w0 = load_file(str(pretrain.build_pretrained_checkpoint(zero, tmp_path / "z")
                       / "model.safetensors"))
    changed = [k for k in wa if not np.array_equal(wa[k], w0[k])]
    assert any("visual" in k for k in changed) and any("layers" in k for k in changed)
    marker = json.loads((a / TINY_MARKER).read_text())
    assert marker["kind"] == "harness-pretrained" and marker["recipe_key"] == recipe.key()
    assert marker["image_steps"] + marker["text_steps"] == 3
    # the build's timing is kept out of the hashed files: identical weights, identical hash
    from benchmark.encoders.checkpoints import checkpoint_hash

    assert checkpoint_hash(a) == checkpoint_hash(b)
    assert pretrain.pretrain_cost(a)["pretrain_seconds"] >= 0


def test_resolve_builds_once_per_recipe(tmp_path, monkeypatch):
    calls = []
    real = pretrain.build_pretrained_checkpoint

    def counting(recipe, out_dir, **kw):
        calls.append(recipe.key())
        return real(recipe, out_dir, **kw)

    monkeypatch.setattr(pretrain, "build_pretrained_checkpoint", counting)
    name = f"pretrained-tiny-qwen2-vl:{SMALL}"
    first = pretrain.resolve_pretrained(name, tmp_path)
    again = pretrain.resolve_pretrained(name, tmp_path)  # same recipe: loads
    assert first == again and len(calls) == 1
    other = pretrain.resolve_pretrained(name + ",image_pretrain_scale=0.2", tmp_path)
    assert other != first and len(calls) == 2  # changed recipe: re-trains
    assert stand_in_kind(first) == "harness-pretrained"

    from methods.vlm2rec.model import resolve_vlm

    assert resolve_vlm(name, None, tmp_path) == first and len(calls) == 2
    from methods.vlm2rec.embedder import VLMEmbedder

    info = VLMEmbedder(first, lora=None, image_size=32).info()
    assert info["stand_in"] is True and info["stand_in_kind"] == "harness-pretrained"
    assert info["stand_in_recipe"]["steps"] == 3


def test_probe_branches_reads_each_branch_and_skips_unlabelled_items():
    # a stand-in embedder whose image branch is the one-hot colour and whose text branch is
    # noise: the image probe is perfect, the text probe of colour is a control near chance
    import torch

    from methods.vlm2rec.embedder import Branches

    rng = np.random.default_rng(0)
    n = 160
    color = np.arange(n) % 4
    color[::10] = -1  # unlabelled items take no part
    onehot = np.eye(4, 8)[np.where(color < 0, 0, color)] + 0.01 * rng.normal(size=(n, 8))
    noise = rng.normal(size=(n, 8))

    class Fake:
        training = False

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def encode_items(self, items, unimodal=True):
            idx = np.asarray(items)
            yes = torch.ones(len(idx), dtype=torch.bool)
            t, v = torch.as_tensor(noise[idx]), torch.as_tensor(onehot[idx])
            return Branches(t, yes, v, yes, t + v)

    train = np.arange(n) < n // 2
    out = pretrain.probe_branches(Fake(), list(range(n)), {"color": color}, train, ~train)
    assert out["image/color"] == 1.0 and out["chance/color"] == 0.25
    assert out["cross/text/color"] < 0.5


def test_tiny_checkpoint_vision_size(tmp_path):
    from transformers import AutoConfig

    from methods.vlm2rec.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint("qwen2-vl", tmp_path / "w", ["a red circle"], vision="tiny-wide")
    config = AutoConfig.from_pretrained(path)
    assert config.vision_config.embed_dim == 64 and config.vision_config.depth == 2
    assert json.loads((path / TINY_MARKER).read_text())["vision"] == "tiny-wide"
    assert stand_in_kind(path) == "random" and stand_in_kind(tmp_path) is None
    with pytest.raises(ValueError):
        build_tiny_checkpoint("qwen2-vl", tmp_path / "x", ["a"], vision="huge")


# ------------------------------------------------------------------ the items recipe (real data)

ITEMS = "pretrained-tiny-qwen2-vl:pretrain=items,steps=4,batch=4,bag_len=2"


@pytest.fixture(scope="module")
def items_world(tmp_path_factory):
    """A small catalogue with images and texts whose split leaves items outside training."""
    from benchmark.data.dataset import load_dataset
    from benchmark.data.synthetic import SyntheticConfig, generate_synthetic
    from benchmark.encoders.harness_clip import training_items
    from benchmark.split import make_split

    tmp = tmp_path_factory.mktemp("items")
    config = SyntheticConfig(n_users=40, n_items=40, seq_len=(5, 8), image_size=16,
                             missing_image_rate=0.2, missing_text_rate=0.1, seed=1,
                             cold_share=0.3, cold_target_rate=0.5)
    data = load_dataset(generate_synthetic(tmp / "data", config))
    split = make_split(data)
    train = set(training_items(split).tolist())
    held = [i for i in range(1, data.n_items) if i not in train]
    assert held and len(train) >= 8  # the leak test below needs both kinds
    return data, split, held, tmp


def _with_content(data, tmp, items, tag):
    """A copy of ``data`` where ``items`` have another text and another (noise) image."""
    import dataclasses

    from PIL import Image

    fields = {k: list(v) for k, v in data.item_fields.items()}
    rng = np.random.default_rng(sum(map(ord, tag)))  # fixed per tag
    for i in items:
        for name in ("title", "text"):
            if name in fields:
                fields[name][i] = f"zyxwq {tag} {i} unseen words"
        path = tmp / f"{tag}-{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
        fields["image"][i] = str(path)
    return dataclasses.replace(data, item_fields=fields)


def _files(path):
    weights = load_file(str(path / "model.safetensors"))
    return weights, (path / "tokenizer.json").read_text()


def test_items_recipe_is_deterministic_and_reads_training_items_only(items_world):
    data, split, held, tmp = items_world
    recipe = parse_name(ITEMS)
    a = pretrain.build_pretrained_checkpoint(recipe, tmp / "a", data=data, split=split)
    b = pretrain.build_pretrained_checkpoint(recipe, tmp / "b", data=data, split=split)
    (wa, ta), (wb, tb) = _files(a), _files(b)
    assert ta == tb and all(np.array_equal(wa[k], wb[k]) for k in wa)
    # every validation/test-only item's text and image replaced: not one bit changes (neither
    # the tokenizer nor a weight), so none of it entered pre-training
    other = _with_content(data, tmp, held, "held")
    wc, tc = _files(pretrain.build_pretrained_checkpoint(recipe, tmp / "c", data=other,
                                                         split=split))
    assert tc == ta and all(np.array_equal(wa[k], wc[k]) for k in wa)
    # the control: the same change on one training item does reach the weights
    warm = int(pretrain.pretrain_item_ids(recipe, split)[0][0])
    other = _with_content(data, tmp, [warm], "warm")
    wd, td = _files(pretrain.build_pretrained_checkpoint(recipe, tmp / "d", data=other,
                                                         split=split))
    assert td != ta and any(not np.array_equal(wa[k], wd[k]) for k in wa)
    marker = json.loads((a / TINY_MARKER).read_text())
    assert marker["kind"] == "harness-pretrained" and "training items" in marker["note"]
    assert marker["recipe"]["pretrain"] == "items" and "corpus_n" not in marker["recipe"]
    assert marker["pretrain_data"]["items"] == data.n_items - 1 - len(held)
    assert marker["image_steps"] == 2 and marker["text_steps"] == 2


def test_items_recipe_cache_key(items_world, monkeypatch):
    import dataclasses

    from benchmark.split import make_split
    from methods.vlm2rec.embedder import VLMEmbedder
    from methods.vlm2rec.model import resolve_vlm

    data, split, _, tmp = items_world
    cache = tmp / "cache"
    calls = []
    real = pretrain.build_pretrained_checkpoint

    def counting(recipe, out_dir, **kw):
        calls.append(recipe)
        return real(recipe, out_dir, **kw)

    monkeypatch.setattr(pretrain, "build_pretrained_checkpoint", counting)
    first = resolve_vlm(ITEMS, data, cache, split)
    assert resolve_vlm(ITEMS, data, cache, split) == first and len(calls) == 1  # loads
    assert resolve_vlm(ITEMS + ",word_dropout=0.5", data, cache, split) != first  # re-trains
    assert len(calls) == 2
    assert stand_in_kind(first) == "harness-pretrained" and "items-" in first.name
    info = VLMEmbedder(first, lora=None, image_size=32).info()
    assert info["stand_in"] and info["stand_in_recipe"]["pretrain"] == "items"
    # the key follows the dataset's content and the training item set, not the rest
    recipe = parse_name(ITEMS)
    key = recipe.key(data, split)
    changed = dataclasses.replace(data, manifest={**data.manifest, "content_hash": "other"})
    assert recipe.key(changed, split) != key
    temporal = make_split(data, "temporal")
    from benchmark.encoders.harness_clip import training_items

    assert set(training_items(temporal).tolist()) != set(training_items(split).tolist())
    assert recipe.key(data, temporal) != key
    with pytest.raises(ConfigError):  # the items recipe cannot be built without its split
        resolve_vlm(ITEMS, data, cache, None)


def test_items_recipe_reaches_the_model_through_build_model(items_world):
    from benchmark.lifecycle import build_model
    from benchmark.registry import get_model_spec

    data, split, _, tmp = items_world
    spec = get_model_spec("vlm2rec")
    params = spec.resolve("tiny", {"vlm": ITEMS, "max_text_tokens": 8})
    model = build_model(spec, params, data, tmp / "run", 0, "cpu", split,
                        cache_dir=tmp / "cache").model
    vlm = model.provenance()["vlm"]
    assert vlm["stand_in_kind"] == "harness-pretrained"
    assert vlm["stand_in_recipe"]["pretrain"] == "items"


def test_items_and_corpus_knobs_stay_apart_and_the_corpus_key_is_unchanged():
    for bad in ("pretrained-tiny-qwen2-vl:pretrain=web",
                "pretrained-tiny-qwen2-vl:pretrain=items,corpus_n=10",
                "pretrained-tiny-qwen2-vl:pretrain=items,hard_colours=2",
                "pretrained-tiny-qwen2-vl:word_dropout=0.1",
                "pretrained-tiny-qwen2-vl:pretrain=items,holdout=1.0"):
        with pytest.raises(ConfigError):
            parse_name(bad)
    # a corpus checkpoint built before the items recipe existed keeps its cache key (this
    # value was computed by that code; it changes only with PRETRAIN_VERSION or the corpus)
    old = "pretrained-tiny-qwen2-vl:steps=6,batch=4,corpus_n=64,bag_len=2,hard_colours=2," \
          "partial_captions=1"
    assert parse_name(old).key() == "0cd27e6ebdb30e5a"
    assert "pretrain" not in parse_name(old).spec()
    with pytest.raises(ConfigError):
        parse_name("pretrained-tiny-qwen2-vl:pretrain=items").key()  # needs data and split


def test_holdout_withholds_a_seeded_share_of_training_items(items_world):
    from benchmark.encoders.harness_clip import training_items

    _, split, _, _ = items_world
    train = training_items(split)
    used, withheld = pretrain.pretrain_item_ids(parse_name(ITEMS + ",holdout=0.25"), split)
    assert len(withheld) == round(0.25 * len(train)) and not set(used) & set(withheld)
    assert set(used) | set(withheld) == set(train.tolist())
    again = pretrain.pretrain_item_ids(parse_name(ITEMS + ",holdout=0.25,steps=9"), split)[1]
    assert np.array_equal(again, withheld)
    other = pretrain.pretrain_item_ids(parse_name(ITEMS + ",holdout=0.25,seed=1"), split)[1]
    assert not np.array_equal(other, withheld)
    assert len(pretrain.pretrain_item_ids(parse_name(ITEMS), split)[1]) == 0


def test_word_dropout_views_keep_a_word_and_drop_about_the_share():
    batches = pretrain._ItemBatches.__new__(pretrain._ItemBatches)
    batches.recipe = parse_name(ITEMS + ",word_dropout=0.5")
    batches.rng = np.random.default_rng(0)
    text = " ".join(f"w{i}" for i in range(200))
    kept = [len(batches._view(text).split()) for _ in range(20)]
    assert 80 < np.mean(kept) < 120
    assert all(batches._view("one") == "one" for _ in range(20))


def test_heldout_item_probes_on_hand_made_tables():
    from types import SimpleNamespace

    from benchmark.features import ModalityFeatures

    rng = np.random.default_rng(0)
    n = 401
    genres = ["Drama", "Comedy", "Action Drama", "Horror"]
    column = [""] + [genres[i % 4] for i in range(n - 1)]
    code = np.array([0] + [i % 4 for i in range(n - 1)])
    informative = np.eye(4)[code] + 0.05 * rng.normal(size=(n, 4))
    noise = rng.normal(size=(n, 4))
    present = np.ones(n, dtype=bool)
    present[0] = False
    tables = {"image": ModalityFeatures(informative.astype(np.float32), present, "t"),
              "text": ModalityFeatures(noise.astype(np.float32), present, "t")}
    data = SimpleNamespace(item_fields={"class": column})
    ids = np.arange(1, n)
    out = pretrain.heldout_item_probes(tables, data, ids[:300], ids[300:])
    assert out["label/image"] > 0.95 and abs(out["label/text"] - 0.5) < 0.1
    assert set(out["labels/image"]) == {"Action", "Comedy", "Drama", "Horror"}
    # retrieval: the same vectors on both sides find themselves; unrelated ones do not
    same = {"image": tables["image"], "text": ModalityFeatures(
        informative.astype(np.float32) + 1e-3 * noise.astype(np.float32), present, "t")}
    assert pretrain.heldout_item_probes(same, data, ids[:300], ids[300:],
                                        labels_field="none")["retrieval/image->text@1"] == 1.0
    assert out["retrieval/image->text@1"] < 0.1 and out["chance/retrieval@10"] == 0.1


def test_heldout_label_probe_is_fair_to_a_rare_weakly_visible_label():
    # one item in eight is "Horror" and the image feature shows it weakly (d' = 1): a balanced
    # probe reaches ~0.69 balanced accuracy; an unbalanced one would say "no" almost everywhere
    # (~0.53)
    from types import SimpleNamespace

    from benchmark.features import ModalityFeatures

    rng = np.random.default_rng(1)
    n = 1601
    horror = np.r_[False, rng.random(n - 1) < 0.125]
    x = (horror[:, None] + rng.normal(size=(n, 1))).astype(np.float32)
    present = np.r_[False, np.ones(n - 1, dtype=bool)]
    tables = {m: ModalityFeatures(x, present, "t") for m in ("image", "text")}
    data = SimpleNamespace(item_fields={"class": ["Horror" if h else "" for h in horror]})
    ids = np.arange(1, n)
    out = pretrain.heldout_item_probes(tables, data, ids[:1200], ids[1200:])
    assert out["labels/image"] == ["Horror"] and 0.62 < out["label/image"] < 0.76


def test_fast_vlm_recipe_starts_from_the_harness_clip_tower_by_default():
    r = parse_name("pretrained-tiny-fast-vlm")
    assert r.initial_vision() == "harness-clip" and r.spec()["vision_init"] == "harness-clip"
    random_tower = parse_name("pretrained-tiny-fast-vlm:vision_init=random")
    assert random_tower.initial_vision() == "random" and "vision_init" not in random_tower.spec()
    assert random_tower.key() != r.key()
    # the ViT families keep their keys (vision_init resolves to random and is not named)
    assert parse_name("pretrained-tiny-qwen2-vl:vision_init=random").key() == PretrainRecipe().key()
    for bad in ("pretrained-tiny-qwen2-vl:vision_init=harness-clip",
                "pretrained-tiny-fast-vlm:vision_init=imagenet",
                "pretrained-tiny-fast-vlm:pretrain=items,vision_init=harness-clip"):
        with pytest.raises(ConfigError):
            parse_name(bad)
    assert parse_name("pretrained-tiny-fast-vlm:pretrain=items").initial_vision() == "random"


def test_fast_vlm_pretraining_keeps_the_harness_clip_tower_and_trains_the_rest(tmp_path,
                                                                                monkeypatch):
    """The tower is the harness-clip corpus checkpoint's EfficientNet, built into the cache
    (the one the content baselines read), frozen while the projector and the language model
    learn; the build is deterministic."""
    from dataclasses import replace

    from benchmark.encoders import harness_clip

    monkeypatch.setattr(harness_clip, "CORPUS_RECIPE", replace(
        harness_clip.CORPUS_RECIPE, width=32, heads=2, steps=4, batch_size=16, corpus_size=64))
    recipe = parse_name(f"pretrained-tiny-fast-vlm:{SMALL}")
    cache = tmp_path / "cache"
    a = pretrain.build_pretrained_checkpoint(recipe, tmp_path / "a", cache_dir=cache)
    b = pretrain.build_pretrained_checkpoint(recipe, tmp_path / "b", cache_dir=cache)
    clip_dir = next((cache / "checkpoints").glob("harness-clip-*"))
    clip = load_file(str(clip_dir / "model.safetensors"))
    wa, wb = (load_file(str(p / "model.safetensors")) for p in (a, b))
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    tower = {k.split("vision_tower.", 1)[1]: v for k, v in wa.items() if "vision_tower." in k}
    assert tower and all(np.array_equal(v, clip[f"vision_model.{k}"]) for k, v in tower.items())
    zero = pretrain.build_pretrained_checkpoint(
        parse_name("pretrained-tiny-fast-vlm:steps=0,batch=4,corpus_n=64,bag_len=2"),
        tmp_path / "z", cache_dir=cache)
    w0 = load_file(str(zero / "model.safetensors"))
    changed = [k for k in wa if not np.array_equal(wa[k], w0[k])]
    assert any("multi_modal_projector" in k for k in changed)
    assert any("language_model" in k for k in changed)
    assert not any("vision_tower" in k for k in changed)
    marker = json.loads((a / TINY_MARKER).read_text())
    assert marker["vision_tower"]["vision_init_checkpoint"] == clip_dir.name
    assert marker["recipe"]["vision_init"] == "harness-clip"
    with pytest.raises(ConfigError):  # the tower is built in a cache: one is needed
        pretrain.build_pretrained_checkpoint(recipe, tmp_path / "c")


def test_a_name_without_pretrain_means_the_items_recipe_off_the_synthetic_world(items_world,
                                                                               monkeypatch):
    """The corpus covers the synthetic world only: elsewhere ``pretrained-tiny-<family>`` is
    pre-trained on the dataset's training items (an explicit ``pretrain=corpus`` is kept)."""
    import dataclasses

    data, split, _, tmp = items_world
    real_world = dataclasses.replace(data, manifest={**data.manifest, "source": {}})
    recipes = []
    monkeypatch.setattr(pretrain, "build_pretrained_checkpoint",
                        lambda recipe, out_dir, **kw: recipes.append(recipe) or
                        (out_dir / "config.json").write_text("{}"))
    cache = tmp / "auto-cache"
    name = "pretrained-tiny-fast-vlm:steps=2,batch=4,bag_len=2"
    items = pretrain.resolve_pretrained(name, cache, real_world, split)
    corpus = pretrain.resolve_pretrained(name, cache, data, split)  # the synthetic world
    explicit = pretrain.resolve_pretrained(name + ",pretrain=corpus", cache, real_world, split)
    assert [r.pretrain for r in recipes] == ["items", "corpus"]  # the third is the second
    assert "items-" in items.name and "items-" not in corpus.name and explicit == corpus
    assert recipes[0].initial_vision() == "random"  # the items recipe's tower starts random
