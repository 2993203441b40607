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
