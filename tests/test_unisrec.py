"""UniSRec: adaptor shapes, both modes, missing text, RecBole's Trainer, pre-training, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_sequences
from mm_helpers import recbole_epoch

from benchmark.data.dataset import load_dataset, write_dataset
from benchmark.errors import ConfigError
from benchmark.features import ModalityFeatures
from benchmark.recbole_compat import DatasetView, recbole_config
from benchmark.registry import get_model_spec

SEED = 3


def text_features(n_items: int, dim: int = 16, missing: tuple[int, ...] = (),
                  seed: int = 0) -> dict[str, ModalityFeatures]:
    """Random text embeddings (row 0 padding); ``missing`` items have no text."""
    values = np.random.default_rng(seed).normal(size=(n_items, dim)).astype(np.float32)
    present = np.ones(n_items, dtype=bool)
    present[[0, *missing]] = False
    values[~present] = 0.0
    return {"text": ModalityFeatures(values, present, "random")}


def patch_features(monkeypatch, features: dict) -> None:
    """Make ``benchmark.encoders.prepare_features`` return ``features`` (no encoder runs)."""
    def fake(data, split, requests, cache_dir, device="cpu", progress=False, seed=0, **kwargs):
        assert requests == {"text": "all-MiniLM-L6-v2"}
        return features

    from benchmark import encoders

    monkeypatch.setattr(encoders, "prepare_features", fake)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("uni") / "uni", "uni",
                         random_sequences(n_users=40, n_items=60), [])
    return load_dataset(root)


def build(data, tmp_path, monkeypatch, features=None, **overrides):
    from benchmark.lifecycle import build_model

    patch_features(monkeypatch, features or text_features(data.n_items, missing=(5,)))
    spec = get_model_spec("unisrec")
    params = spec.resolve("tiny", {"MAX_ITEM_LIST_LENGTH": 8, **overrides})
    return build_model(spec, params, data, tmp_path / "run", SEED, "cpu", cache_dir=tmp_path).model


def batch(n_items: int, b: int = 6, length: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, n_items, (b, length), generator=g)
    lens = torch.randint(2, length + 1, (b,), generator=g)
    pad = torch.arange(length) >= lens.unsqueeze(1)
    tgt = torch.randint(1, n_items, (b, length), generator=g)
    return seq.masked_fill(pad, 0), tgt.masked_fill(pad, 0), lens


def interaction(model, seq, lens, target=None):
    from recbole.data.interaction import Interaction

    fields = {model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lens}
    if target is not None:
        fields[model.POS_ITEM_ID] = target
    return Interaction(fields)


# -- the adaptor ---------------------------------------------------------------------------------
def test_moe_adaptor_shapes_gates_and_whitening():
    from baselines.unisrec import MoEAdaptor

    torch.manual_seed(0)
    adaptor = MoEAdaptor(16, 8, n_experts=4, dropout=0.2)
    torch.nn.init.normal_(adaptor.bias)
    torch.nn.init.normal_(adaptor.w_gate)
    x = torch.randn(5, 7, 16)
    adaptor.train()
    gates = adaptor.gates(x)
    assert gates.shape == (5, 7, 4)
    assert torch.allclose(gates.sum(-1), torch.ones(5, 7), atol=1e-6)
    assert not torch.equal(gates, adaptor.gates(x))  # gating noise in training
    assert adaptor.experts(x).shape == (5, 7, 4, 8)
    assert adaptor(x).shape == (5, 7, 8)
    adaptor.eval()
    assert torch.equal(adaptor.gates(x), adaptor.gates(x))  # no noise, no dropout
    expected = torch.stack([(x - adaptor.bias[k]) @ adaptor.weight[k] for k in range(4)], dim=-2)
    assert torch.allclose(adaptor.experts(x), expected, atol=1e-5)  # PW_k(x) = (x - b_k) W_k
    mixed = (adaptor.gates(x).unsqueeze(-1) * expected).sum(-2)
    assert torch.allclose(adaptor(x), mixed, atol=1e-5)


# -- the model -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["inductive", "transductive"])
def test_forward_backward_both_modes(data, tmp_path, monkeypatch, mode):
    model = build(data, tmp_path, monkeypatch, mode=mode)
    has_id = mode == "transductive"
    assert (model.item_embedding is not None) == has_id
    assert any(k.startswith("item_embedding") for k in model.state_dict()) == has_id
    assert "text_embedding" not in model.state_dict()  # the frozen table stays out of checkpoints
    seq, tgt, lens = batch(data.n_items)
    model.train()
    for loss in (model.all_positions_loss(seq, tgt),
                 model.calculate_loss(interaction(model, seq, lens, tgt[:, 0]))):
        model.zero_grad()
        assert torch.isfinite(loss)
        loss.backward()
        no_grad = [n for n, p in model.named_parameters()
                   if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
        assert no_grad == []
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(interaction(model, seq, lens))
    assert scores.shape == (len(seq), data.n_items)
    assert torch.isfinite(scores).all()
    assert scores.abs().max() <= 1 / model.temperature + 1e-4  # cosine / temperature
    inter = interaction(model, seq, lens)
    inter.update(type(inter)({model.ITEM_ID: tgt[:, 0]}))
    with torch.no_grad():
        picked = model.predict(inter)  # RecBole's sampled evaluation path
    assert torch.allclose(picked, scores.gather(1, tgt[:, :1]).squeeze(1), atol=1e-5)


def test_missing_text_gets_a_learned_vector(data, tmp_path, monkeypatch):
    feats = text_features(data.n_items, missing=(2, 5, 9))
    model = build(data, tmp_path, monkeypatch, features=feats, mode="inductive")
    x = model.item_text()
    for i in (2, 5, 9):
        assert torch.equal(x[i], model.missing_text)
    assert torch.equal(x[0], torch.zeros_like(x[0]))  # padding untouched
    present = torch.from_numpy(feats["text"].values[feats["text"].present])
    assert torch.allclose(model.missing_text.detach(), present.mean(0))  # starts as the mean
    seq, tgt, lens = batch(data.n_items)
    seq[:, 0], tgt[:, 0] = 5, 9
    model.all_positions_loss(seq, tgt).backward()
    assert model.missing_text.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.isfinite(model.eval().full_sort_predict(interaction(model, seq, lens))).all()
    # no item without text: no extra parameter; no item with text at all: still no crash
    assert build(data, tmp_path, monkeypatch, features=text_features(data.n_items)).missing_text \
        is None
    none = text_features(data.n_items, missing=tuple(range(1, data.n_items)))
    model = build(data, tmp_path, monkeypatch, features=none, mode="inductive").eval()
    with torch.no_grad():
        assert torch.isfinite(model.full_sort_predict(interaction(model, seq, lens))).all()


def test_config_errors(data, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="mode"):
        build(data, tmp_path, monkeypatch, mode="both")
    with pytest.raises(ConfigError, match="rows"):
        build(data, tmp_path, monkeypatch, features=text_features(data.n_items - 1))
    from baselines.unisrec import UniSRec

    params = get_model_spec("unisrec").resolve("tiny")
    config = recbole_config(UniSRec, data.root, data.name, params, tmp_path / "run")
    with pytest.raises(ConfigError, match="text features"):
        UniSRec(config, DatasetView(data))


def test_trains_under_recbole_trainer(tmp_path):
    """RecBole's own pipeline: its dataset (with item_features attached), dataloader, Trainer."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from baselines.unisrec import UniSRec
    from benchmark.recbole_compat import recbole_workdir

    root = write_dataset(tmp_path / "rb", "rb", random_sequences(n_users=30, n_items=40), [])
    params = get_model_spec("unisrec").resolve("tiny", {"MAX_ITEM_LIST_LENGTH": 8})
    rb = {**params, "seed": SEED, "train_batch_size": 32, "reproducibility": True}
    config = recbole_config(UniSRec, root, "rb", rb, tmp_path / "run")
    with recbole_workdir(tmp_path / "run"):
        init_seed(SEED, True)
        train, _, _ = data_preparation(config, create_dataset(config))
        dataset = train._dataset
        dataset.item_features = text_features(dataset.item_num, missing=(3,))
        model = UniSRec(config, dataset)
    loss, changed = recbole_epoch(config, model, train, tmp_path / "run")
    assert np.isfinite(loss) and all(changed)


# -- pre-training ----------------------------------------------------------------------------------
def test_item_drop_keeps_order_and_first_item(data, tmp_path, monkeypatch):
    model = build(data, tmp_path, monkeypatch, item_drop_ratio=0.5)
    seq, _, lens = batch(data.n_items, b=20)
    aug, aug_len = model.item_drop(seq)
    for s, n, a, m in zip(seq.tolist(), lens.tolist(), aug.tolist(), aug_len.tolist()):
        assert 1 <= m <= n and a[0] == s[0] and all(v == 0 for v in a[m:])
        it = iter(s[:n])
        assert all(v in it for v in a[:m])  # a subsequence of the original


def test_pretrain_loss_decreases_and_freezes_encoder(data, tmp_path, monkeypatch):
    model = build(data, tmp_path, monkeypatch, mode="transductive", freeze_encoder=True)
    seq, tgt, _ = batch(data.n_items, b=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    model.train()
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = model.pretrain_loss(seq, tgt)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert model.item_embedding.weight.grad is None  # pre-training reads text only
    assert bool(model.pretrained)
    # fine-tuning a pre-trained model with freeze_encoder trains adaptor and ID embedding only
    model.zero_grad(set_to_none=True)
    model.all_positions_loss(seq, tgt).backward()
    assert all(p.grad is None for p in model.trm_encoder.parameters())
    assert model.position_embedding.weight.grad is None
    assert model.moe_adaptor.weight.grad is not None and model.item_embedding.weight.grad is not None


def test_learns_from_text_and_pretrain_stage_runs(tmp_path, monkeypatch):
    """Text that encodes item identity (one-hot): an inductive model beats chance by far."""
    from benchmark.evaluation import Evaluator
    from benchmark.lifecycle import build_model
    from benchmark.split import make_split
    from benchmark.training import Trainer

    root = write_dataset(tmp_path / "learn", "learn",
                         random_sequences(n_users=200, n_items=40, seed=1), [])
    data = load_dataset(root)
    values = np.eye(data.n_items, dtype=np.float32)
    values[0] = 0.0
    present = np.arange(data.n_items) > 0
    patch_features(monkeypatch, {"text": ModalityFeatures(values, present, "one-hot")})
    split = make_split(data)
    spec = get_model_spec("unisrec")
    params = spec.resolve("tiny", {"mode": "inductive", "MAX_ITEM_LIST_LENGTH": 10,
                                   "epochs": 12, "batch_size": 64, "learning_rate": 3e-3,
                                   "pretrain_epochs": 2})
    model = build_model(spec, params, data, tmp_path / "run", SEED, "cpu", split,
                        cache_dir=tmp_path).model
    evaluator = Evaluator(split, data.n_items, params["MAX_ITEM_LIST_LENGTH"])
    trainer = Trainer(model, params, split, evaluator, seed=SEED, progress=False)
    untrained = trainer.evaluate("test").metrics  # chance level
    outcome = trainer.fit()
    assert len(outcome.pretrain_losses) == 2 and all(np.isfinite(outcome.pretrain_losses))
    test = trainer.evaluate("test").metrics
    assert test["ndcg@10"] > max(0.4, 2 * untrained["ndcg@10"]), (untrained, test)
