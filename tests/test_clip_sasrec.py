"""Frozen CLIP + SASRec: shapes and gradients, missing modalities, the projected item table,
RecBole's Trainer and learning on a tiny learnable problem."""

from __future__ import annotations

import math

import pytest
import torch
from mm_helpers import (
    EMPTY_ITEM,
    build,
    prefix_interaction,
    random_features,
    recbole_epoch,
    recbole_pipeline,
    small_batch,
)

from benchmark.data.dataset import load_dataset
from benchmark.errors import ConfigError
from benchmark.evaluation import Evaluator
from benchmark.split import make_split
from benchmark.training import Trainer


def _model(tiny_dataset, tmp_path, monkeypatch, **overrides):
    data = load_dataset(tiny_dataset)
    dims = {"image_dim": 10, "text_dim": 10} if overrides.get("fusion") == "mean" else {}
    model, params = build(monkeypatch, "clip_sasrec", data, tmp_path / "run",
                          random_features(data.n_items, **dims),
                          overrides={"MAX_ITEM_LIST_LENGTH": 8, **overrides})
    return model, params, data


@pytest.mark.parametrize("overrides", [{}, {"fusion": "mean"}, {"use_id": True}])
@pytest.mark.parametrize("mode", ["prefix", "all_positions"])
def test_forward_backward_and_full_sort(tiny_dataset, tmp_path, monkeypatch, overrides, mode):
    model, params, data = _model(tiny_dataset, tmp_path, monkeypatch, **overrides)
    assert any(n.startswith("item_embedding.id_") for n, _ in model.named_parameters()) \
        == bool(overrides.get("use_id"))
    seq, lengths, target, targets = small_batch(data.n_items, params["MAX_ITEM_LIST_LENGTH"])
    model.train()
    loss = (model.calculate_loss(prefix_interaction(model, seq, lengths, target))
            if mode == "prefix" else model.all_positions_loss(seq, targets))
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(prefix_interaction(model, seq, lengths, target))
    assert scores.shape == (len(seq), data.n_items)
    assert torch.isfinite(scores).all()


def test_item_table_is_each_item_projected(tiny_dataset, tmp_path, monkeypatch):
    model, _, data = _model(tiny_dataset, tmp_path, monkeypatch)
    emb = model.item_embedding
    with torch.no_grad():
        table = emb.weight
        ids = torch.tensor([[1, 2], [EMPTY_ITEM, data.n_items - 1]])
        assert torch.allclose(emb(ids), table[ids], atol=1e-6)
        assert torch.equal(table[0], torch.zeros_like(table[0]))
        # concat: [image or the learned missing-image vector; text] -> linear
        x = torch.cat([emb.image_values[2], emb.text_values[2]])
        assert torch.allclose(table[2], emb.projection(x), atol=1e-6)
        x = torch.cat([emb.missing_image, emb.text_values[1]])
        assert not emb.image_present[1]
        assert torch.allclose(table[1], emb.projection(x), atol=1e-6)


def test_missing_modality_values_are_never_read(tiny_dataset, tmp_path, monkeypatch):
    for fusion in ("concat", "mean"):
        model, _, _ = _model(tiny_dataset, tmp_path, monkeypatch, fusion=fusion)
        emb = model.item_embedding
        with torch.no_grad():
            before = emb.weight.clone()
            emb.image_values[~emb.image_present] = 7.0
            emb.text_values[EMPTY_ITEM] = -7.0
            assert torch.allclose(before, emb.weight)
            if fusion == "mean":  # the present modality only
                assert torch.allclose(before[1], emb.projection(emb.text_values[1]), atol=1e-6)
                assert torch.allclose(before[EMPTY_ITEM], emb.projection(emb.missing_content),
                                      atol=1e-6)


def test_mean_fusion_needs_one_feature_size(tiny_dataset, tmp_path, monkeypatch):
    data = load_dataset(tiny_dataset)
    with pytest.raises(ConfigError, match="one size"):
        build(monkeypatch, "clip_sasrec", data, tmp_path / "run", random_features(data.n_items),
              overrides={"fusion": "mean"})


def test_trains_under_recbole_trainer(tmp_path):
    from baselines.clip_sasrec import CLIPSASRec

    config, train = recbole_pipeline(tmp_path, CLIPSASRec, "clip_sasrec",
                                     {"MAX_ITEM_LIST_LENGTH": 8})
    train._dataset.item_features = random_features(train._dataset.num("item_id"))
    loss, changed = recbole_epoch(config, CLIPSASRec(config, train._dataset), train,
                                  tmp_path / "run")
    assert math.isfinite(loss) and any(changed)


def test_learns_a_tiny_problem_beyond_chance(tiny_dataset, tmp_path, monkeypatch):
    data = load_dataset(tiny_dataset)
    split = make_split(data)
    model, params = build(monkeypatch, "clip_sasrec", data, tmp_path / "run",
                          random_features(data.n_items, identity=True),
                          overrides={"MAX_ITEM_LIST_LENGTH": 8, "batch_size": 16, "epochs": 10,
                                     "patience": 10, "learning_rate": 3e-3})
    ev = Evaluator(split, data.n_items, params["MAX_ITEM_LIST_LENGTH"])
    trainer = Trainer(model, params, split, ev, 0, progress=False)
    trainer.fit()
    # the next item is 2-4 ids ahead of the last one: chance hr@10 is about 10/60
    assert trainer.evaluate("test").metrics["hr@10"] > 0.5
