"""MMSRec: shapes and gradients, missing modalities, the item tower, RecBole's Trainer,
pre-training and learning on a tiny learnable problem."""

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


@pytest.fixture
def model_and_data(tiny_dataset, tmp_path, monkeypatch):
    data = load_dataset(tiny_dataset)
    model, params = build(monkeypatch, "mmsrec", data, tmp_path / "run",
                          random_features(data.n_items), overrides={"MAX_ITEM_LIST_LENGTH": 8})
    return model, params, data


def _assert_all_grads(model):
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name


def test_forward_backward_and_full_sort(model_and_data):
    model, params, data = model_and_data
    seq, lengths, target, _ = small_batch(data.n_items, params["MAX_ITEM_LIST_LENGTH"])
    inter = prefix_interaction(model, seq, lengths, target)
    model.train()
    loss = model.calculate_loss(inter)
    assert torch.isfinite(loss)
    loss.backward()
    _assert_all_grads(model)
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(inter)
        one = model.predict(_with_item(model, inter, target))
    assert scores.shape == (len(seq), data.n_items)
    assert torch.isfinite(scores).all()
    assert torch.allclose(one, scores[torch.arange(len(seq)), target])


def _with_item(model, inter, items):
    from recbole.data.interaction import Interaction

    return Interaction({**{k: inter[k] for k in inter.columns}, model.ITEM_ID: items})


def test_missing_modality_is_masked_not_a_zero_vector(model_and_data):
    model, _, _ = model_and_data
    model.eval()
    with torch.no_grad():
        before = model.item_table().clone()
        # the feature values of absent modalities must not matter at all
        model.image_values[~model.image_present] = 5.0
        model.text_values[EMPTY_ITEM] = -3.0
        model.train()
        model.eval()
        after = model.item_table()
    assert torch.allclose(before, after, atol=1e-6)
    assert torch.isfinite(after).all()
    with torch.no_grad():
        no_image = torch.tensor([[1]])  # odd ids have no image
        text_only = model.encode(no_image, torch.tensor([[False]]), visible=(False, True))
        assert torch.allclose(after[1], text_only[0, 0], atol=1e-6)
        # the item with nothing is the placeholder token: as if every modality were hidden
        nothing = model.encode(torch.tensor([[2]]), torch.tensor([[False]]), visible=(False, False))
        assert torch.allclose(after[EMPTY_ITEM], nothing[0, 0], atol=1e-6)


def test_item_tower_is_the_item_encoded_alone(model_and_data):
    model, _, data = model_and_data
    model.eval()
    with torch.no_grad():
        table = model.item_table()
        assert model.item_table() is table  # cached in eval mode
        for item in (1, 2, EMPTY_ITEM, data.n_items - 1):
            alone = model.encode(torch.tensor([[item]]), torch.tensor([[False]]))[0, 0]
            assert torch.allclose(table[item], alone, atol=1e-5)
        model.load_state_dict(model.state_dict())  # loading weights drops the cache too
        assert model._item_cache is None
        model.position_embedding.weight.add_(0.5)
        model.train()  # a weight change followed by train()/eval() drops the cache
        model.eval()
        assert not torch.allclose(model.item_table(), table)


def test_pretrain_loss_decreases(model_and_data):
    model, params, data = model_and_data
    seq, _, _, targets = small_batch(data.n_items, params["MAX_ITEM_LIST_LENGTH"], batch=8)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = model.pretrain_loss(seq, targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_trains_under_recbole_trainer(tmp_path):
    from baselines.mmsrec import MMSRec

    config, train = recbole_pipeline(tmp_path, MMSRec, "mmsrec", {"MAX_ITEM_LIST_LENGTH": 8})
    train._dataset.item_features = random_features(train._dataset.num("item_id"))
    loss, changed = recbole_epoch(config, MMSRec(config, train._dataset), train,
                                  tmp_path / "run")
    assert math.isfinite(loss) and any(changed)


def test_trains_on_prefixes_only(model_and_data):
    model, params, data = model_and_data
    split = make_split(data)
    ev = Evaluator(split, data.n_items, params["MAX_ITEM_LIST_LENGTH"])
    assert params["train_mode"] == "prefix"
    with pytest.raises(ConfigError, match="only train_mode=prefix"):
        Trainer(model, {**params, "train_mode": "all_positions"}, split, ev, 0, progress=False)


def test_learns_a_tiny_problem_beyond_chance(tiny_dataset, tmp_path, monkeypatch):
    data = load_dataset(tiny_dataset)
    split = make_split(data)
    model, params = build(monkeypatch, "mmsrec", data, tmp_path / "run",
                          random_features(data.n_items, identity=True),
                          overrides={"MAX_ITEM_LIST_LENGTH": 8, "batch_size": 16, "epochs": 10,
                                     "patience": 10, "learning_rate": 3e-3,
                                     "pretrain_epochs": 1,
                                     # 40 users: cloze targets inside the history mostly add noise
                                     "mask_ratio": 0.0})
    ev = Evaluator(split, data.n_items, params["MAX_ITEM_LIST_LENGTH"])
    trainer = Trainer(model, params, split, ev, 0, progress=False)
    outcome = trainer.fit()
    assert len(outcome.pretrain_losses) == 1
    # the next item is 2-4 ids ahead of the last one: chance hr@10 is about 10/60
    assert trainer.evaluate("test").metrics["hr@10"] > 0.35
