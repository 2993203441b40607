"""``train_candidates``: the training softmax over the items of the training split (``seen``) or
over every item (``all``). The mask holds exactly the training items, the ``seen`` loss is the
cross-entropy over those items alone, ``all`` is the loss as before, evaluation scores are never
masked, and on the controlled-modality dataset ``seen`` lets a content model rank cold items that
``all`` pushes out of every top 10."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mm_helpers import build, prefix_interaction, random_features, small_batch

from baselines.candidates import TRAIN_CANDIDATES, train_item_ids, train_item_mask
from benchmark.data.dataset import load_dataset, write_dataset
from benchmark.errors import ConfigError
from benchmark.evaluation import Evaluator, mean_metrics
from benchmark.registry import get_model_spec, list_models
from benchmark.split import make_split
from benchmark.training import Trainer

MAX_LEN = 8
FULL_SOFTMAX = ("sasrec", "unisrec", "mmsrec", "clip_sasrec", "vlm2rec_sasrec")


# -- the mask -----------------------------------------------------------------------------------
@pytest.fixture
def hand(tmp_path):
    """Four users, leave-one-out: u1 trains on a b c (d validation, e test); u2 (two items) trains
    on f g; u3 (one item) has no training pair; u4 trains on a c (i test)."""
    seqs = {"u1": "abcde", "u2": "fg", "u3": "h", "u4": "aci"}
    rows = [(u, i, float(t)) for u, s in seqs.items() for t, i in enumerate(s)]
    items = [(i, f"title {i}", f"text {i}", None) for i in "abcdefghi"]
    data = load_dataset(write_dataset(tmp_path / "hand", "hand", rows, items))
    return data, make_split(data)


def _ids(data, tokens: str) -> list[int]:
    return sorted(int(np.flatnonzero(data.item_tokens == t)[0]) for t in tokens)


def test_mask_holds_exactly_the_items_of_the_training_pairs(hand):
    data, split = hand
    expected = _ids(data, "abcfg")  # never d (validation), e, i (test) or h (no training pair)
    assert train_item_ids(split).tolist() == expected
    mask = train_item_mask(split, data.n_items)
    assert mask.shape == (data.n_items,) and mask.nonzero().squeeze(1).tolist() == expected


@pytest.mark.parametrize("kind", ["loo", "temporal"])
def test_mask_never_leaks_validation_or_test_items(synthetic, kind):
    data, _, _ = synthetic
    split = make_split(data, kind)
    seen = set(train_item_ids(split).tolist())
    in_pairs = {int(i) for s, n in zip(split.sequences, split.train_len) if n >= 2 for i in s[:n]}
    assert seen == in_pairs
    held_out = {int(split.sequences[u][p]) for c in (split.valid, split.test)
                for u, p in zip(c.user, c.pos)}
    assert not (held_out - in_pairs) & seen
    if kind == "loo":  # the cold items are validation/test targets only
        cold = {i for i, c in enumerate(data.item_fields["cold"]) if c == 1.0}
        assert len(cold) == 36 and cold <= held_out and not cold & seen


def test_the_trainer_hands_the_model_its_training_split(hand, tmp_path, monkeypatch):
    data, split = hand
    model, params = build(monkeypatch, "clip_sasrec", data, tmp_path / "run",
                          random_features(data.n_items),
                          overrides={"MAX_ITEM_LIST_LENGTH": MAX_LEN})
    assert model.train_candidates == "seen" and model.train_item_mask is None
    Trainer(model, params, split, Evaluator(split, data.n_items, MAX_LEN), 0, progress=False)
    assert model.train_item_mask.nonzero().squeeze(1).tolist() == _ids(data, "abcfg")
    assert "train_item_mask" not in model.state_dict()  # rebuilt from the split, not stored


# -- the registry ---------------------------------------------------------------------------------
def test_registry_defaults_and_values():
    assert set(TRAIN_CANDIDATES) == {"seen", "all"}
    for name in list_models():
        spec = get_model_spec(name)
        expected = {"sasrec": "all"}.get(name, "seen") if name in FULL_SOFTMAX else None
        assert spec.all_defaults().get("train_candidates") == expected, name
        assert "train_candidates" not in spec.search_space
    with pytest.raises(ConfigError, match="train_candidates"):
        get_model_spec("unisrec").resolve("tiny", {"train_candidates": 1})


def test_bad_value_is_a_config_error(tiny_dataset, tmp_path, monkeypatch):
    data = load_dataset(tiny_dataset)
    for name in ("sasrec", "clip_sasrec", "unisrec", "mmsrec"):
        with pytest.raises(ConfigError, match="train_candidates must be one of seen, all"):
            build(monkeypatch, name, data, tmp_path / name, random_features(data.n_items),
                  overrides={"train_candidates": "warm"})


def test_vlm2rec_sasrec_uses_the_sasrec_losses():
    from baselines.sasrec import SASRec
    from methods.vlm2rec.model import VLM2RecSASRec

    assert issubclass(VLM2RecSASRec, SASRec)
    for loss in ("calculate_loss", "all_positions_loss"):
        assert getattr(VLM2RecSASRec, loss) is getattr(SASRec, loss)


# -- the losses -----------------------------------------------------------------------------------
def _model(name, data, tmp_path, monkeypatch, train_candidates, seen=None):
    """A model in eval mode (no dropout, no gating noise; MMSRec masks only the last item), so
    that its training logits are its full-sort scores."""
    overrides = {"MAX_ITEM_LIST_LENGTH": MAX_LEN, "train_candidates": train_candidates}
    if name == "mmsrec":
        overrides["mask_ratio"] = 0.0
    model, _ = build(monkeypatch, name, data, tmp_path / name, random_features(data.n_items),
                     overrides=overrides)
    if seen is not None:
        model.set_train_items(seen)
    return model.eval()


def _scores(model, seq, lengths, target):
    with torch.no_grad():
        return model.full_sort_predict(prefix_interaction(model, seq, lengths, target))


def _ce_over(scores: torch.Tensor, target: torch.Tensor, candidates: list[int]) -> torch.Tensor:
    """Cross-entropy of each target among ``candidates`` only (columns picked by hand)."""
    cols = torch.tensor(candidates)
    where = {c: j for j, c in enumerate(candidates)}
    return F.cross_entropy(scores[:, cols], torch.tensor([where[int(t)] for t in target]))


def _prefixes(seq, targets):
    """Every (prefix, next item) of all-position windows, as prefix-mode rows."""
    rows, lens, tgt = [], [], []
    for b, t in (targets > 0).nonzero().tolist():
        rows.append(torch.where(torch.arange(seq.shape[1]) <= t, seq[b], 0))
        lens.append(t + 1)
        tgt.append(int(targets[b, t]))
    return torch.stack(rows), torch.tensor(lens), torch.tensor(tgt)


@pytest.fixture
def batch(tiny_dataset):
    data = load_dataset(tiny_dataset)
    seq, lengths, target, targets = small_batch(data.n_items, MAX_LEN)
    used = {*target.tolist(), *targets.flatten().tolist()}
    rest = sorted(set(range(1, data.n_items)) - used)
    seen = sorted({*target.tolist(), *targets[targets > 0].tolist(), *rest[::2]})
    assert len(seen) < data.n_items - 10  # many items are not candidates
    return data, seq, lengths, target, targets, seen


def test_seen_logits_are_masked_fill_bit_for_bit(batch, tmp_path, monkeypatch):
    """The column fill equals masked_fill(~mask, -inf) exactly, forward and backward, for any
    values (NaN and inf in excluded columns too) and any upstream gradient."""
    data, *_, seen = batch
    model = _model("sasrec", data, tmp_path, monkeypatch, "seen", seen)
    x = torch.randn(7, data.n_items)
    excluded = model.train_item_excluded
    assert sorted(set(range(data.n_items)) - set(seen)) == excluded.tolist()
    x[0, excluded[0]], x[1, excluded[1]], x[2, seen[0]] = torch.nan, torch.inf, -1e30
    grad = torch.randn(7, data.n_items)
    out = []
    for fill in (model.candidate_logits,
                 lambda t: t.masked_fill(~model.train_item_mask, float("-inf"))):
        leaf = x.clone().requires_grad_(True)
        y = fill(leaf)
        y.backward(grad)
        out.append((y.detach(), leaf.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


@pytest.mark.parametrize("name", ["sasrec", "clip_sasrec", "unisrec", "mmsrec"])
def test_seen_loss_is_cross_entropy_over_the_seen_items(name, batch, tmp_path, monkeypatch):
    data, seq, lengths, target, targets, seen = batch
    model = _model(name, data, tmp_path, monkeypatch, "seen", seen)
    scores = _scores(model, seq, lengths, target)
    loss = model.calculate_loss(prefix_interaction(model, seq, lengths, target))
    assert torch.allclose(loss, _ce_over(scores, target, seen), atol=1e-5)
    assert loss < F.cross_entropy(scores, target)  # fewer competitors than over all items
    if name != "mmsrec":  # MMSRec trains in prefix mode only
        p_seq, p_len, p_tgt = _prefixes(seq, targets)
        expected = _ce_over(_scores(model, p_seq, p_len, p_tgt), p_tgt, seen)
        assert torch.allclose(model.all_positions_loss(seq, targets), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["sasrec", "clip_sasrec", "unisrec", "mmsrec"])
def test_all_is_the_loss_over_every_item_as_before(name, batch, tmp_path, monkeypatch):
    data, seq, lengths, target, targets, seen = batch
    model = _model(name, data, tmp_path, monkeypatch, "all")
    model.set_train_items(seen)  # a mask, ignored under "all"
    logits = torch.randn(3, data.n_items)
    assert model.candidate_logits(logits) is logits
    scores = _scores(model, seq, lengths, target)
    everything = list(range(1, data.n_items)) if name == "mmsrec" else list(range(data.n_items))
    loss = model.calculate_loss(prefix_interaction(model, seq, lengths, target))
    assert torch.allclose(loss, _ce_over(scores, target, everything), atol=1e-5)
    if name == "sasrec":  # RecBole's own loss, bit for bit
        from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

        inter = prefix_interaction(model, seq, lengths, target)
        assert torch.equal(model.calculate_loss(inter), RecBoleSASRec.calculate_loss(model, inter))
    if name != "mmsrec":
        p_seq, p_len, p_tgt = _prefixes(seq, targets)
        expected = _ce_over(_scores(model, p_seq, p_len, p_tgt), p_tgt, everything)
        assert torch.allclose(model.all_positions_loss(seq, targets), expected, atol=1e-5)


def test_sasrec_default_stays_all(batch, tmp_path, monkeypatch):
    data = batch[0]
    model, params = build(monkeypatch, "sasrec", data, tmp_path / "run", {},
                          overrides={"MAX_ITEM_LIST_LENGTH": MAX_LEN})
    assert params["train_candidates"] == "all" and model.train_candidates == "all"
    split = make_split(data)
    Trainer(model, params, split, Evaluator(split, data.n_items, MAX_LEN), 0, progress=False)
    assert model.train_item_mask is None


def test_evaluation_scores_are_not_masked(batch, tmp_path, monkeypatch):
    data, seq, lengths, target, _, seen = batch
    for name in ("clip_sasrec", "unisrec", "mmsrec"):
        model = _model(name, data, tmp_path, monkeypatch, "seen")
        plain = _scores(model, seq, lengths, target)
        model.set_train_items(seen)
        for mode in (False, True):  # eval and train mode alike
            model.train(mode)
            torch.manual_seed(0)
            scores = _scores(model, seq, lengths, target)
            assert torch.isfinite(scores[:, 1:]).all(), name
            if not mode:
                assert torch.equal(scores, plain), name


def test_seen_without_a_split_trains_over_all_items_and_says_so(batch, tmp_path, monkeypatch,
                                                                caplog):
    data, seq, lengths, target, _, _ = batch
    model = _model("unisrec", data, tmp_path, monkeypatch, "seen")
    scores = _scores(model, seq, lengths, target)
    with caplog.at_level(logging.WARNING, logger="baselines.candidates"):
        loss = model.calculate_loss(prefix_interaction(model, seq, lengths, target))
        model.calculate_loss(prefix_interaction(model, seq, lengths, target))
    assert torch.allclose(loss, F.cross_entropy(scores, target), atol=1e-5)
    assert len([r for r in caplog.records if "set_train_split" in r.getMessage()]) == 1


# -- end to end: cold targets on the controlled-modality dataset ---------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small controlled-modality dataset (30% cold items, half the validation/test targets
    cold) and bag-of-words text features: the item description's words (brand, product and random
    filler words), a cheap stand-in for a sentence encoder that the test can afford."""
    from benchmark.data.synthetic import SyntheticConfig, generate_synthetic
    from benchmark.features import ModalityFeatures

    config = SyntheticConfig(n_users=600, n_items=120, seq_len=(6, 10), image_size=16, seed=1,
                             cold_share=0.3, cold_target_rate=0.5)  # the version-1 defaults
    data = load_dataset(generate_synthetic(tmp_path_factory.mktemp("syn") / "syn", config))
    texts = data.item_fields["text"]
    vocab = {w: j for j, w in enumerate(sorted({w for t in texts[1:] for w in t.split()}))}
    values = np.zeros((data.n_items, len(vocab)), dtype=np.float32)
    for i in range(1, data.n_items):
        for w in texts[i].split():
            values[i, vocab[w]] += 1.0
    values[1:] /= np.linalg.norm(values[1:], axis=1, keepdims=True)
    present = np.arange(data.n_items) > 0
    return data, make_split(data), {"text": ModalityFeatures(values, present, "bag-of-words")}


def test_seen_ranks_cold_targets_that_all_never_ranks(synthetic, tmp_path, monkeypatch):
    from benchmark import encoders
    from benchmark.lifecycle import build_model

    data, split, features = synthetic
    monkeypatch.setattr(encoders, "prepare_features", lambda *args, **kwargs: features)
    labels = {k: v for k, v in data.inter_fields.items() if v.dtype == object}
    spec = get_model_spec("unisrec")
    cold = {}
    for candidates in ("all", "seen"):
        params = spec.resolve("tiny", {"mode": "inductive", "train_candidates": candidates,
                                       "epochs": 8, "patience": 8, "learning_rate": 5e-3})
        model = build_model(spec, params, data, tmp_path / candidates, 0, "cpu", split,
                            cache_dir=tmp_path).model
        ev = Evaluator(split, data.n_items, params["MAX_ITEM_LIST_LENGTH"], case_labels=labels)
        trainer = Trainer(model, params, split, ev, 0, progress=False)
        trainer.fit()
        test = trainer.evaluate("test")
        assert test.group_sizes["target=cold"] > 100
        # on the full ranking: the target=cold group ranks among never-trained items only
        # (the evaluator's cold-start protocol), where pushing them all down changes nothing
        is_cold = test.cold_ranks >= 0
        cold[candidates] = mean_metrics(test.ranks[is_cold], ties=test.ties[is_cold])["ndcg@10"]
    assert cold["all"] == 0.0, cold  # every cold target pushed out of every top 10
    assert cold["seen"] > 0.01, cold  # its content ranks it


@pytest.mark.parametrize("name,overrides", [("clip_sasrec", {"use_id": True}),
                                            ("unisrec", {"mode": "transductive"})])
def test_hybrid_id_rows_of_never_trained_items_stay_zero(name, overrides, batch, tmp_path,
                                                         monkeypatch):
    """A hybrid content model's ID embedding starts at zero; under ``seen`` an item that never
    occurs in training keeps a zero row (it is scored by its content alone), while every item of
    the training batch gets a row of its own."""
    data, seq, _, _, targets, seen = batch
    model, _ = build(monkeypatch, name, data, tmp_path / name, random_features(data.n_items),
                     overrides={"MAX_ITEM_LIST_LENGTH": MAX_LEN, "train_candidates": "seen",
                                **overrides})
    model.set_train_items(seen)
    ids = next(m for n, m in model.named_modules() if n.endswith(("id_embedding", "item_embedding"))
               and isinstance(m, torch.nn.Embedding))
    assert torch.count_nonzero(ids.weight) == 0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model.all_positions_loss(seq, targets).backward()
        optimizer.step()
    in_batch = sorted({*seq[seq > 0].tolist(), *targets[targets > 0].tolist()})
    never = sorted(set(range(1, data.n_items)) - set(seen) - set(in_batch))
    assert never and in_batch
    assert torch.count_nonzero(ids.weight[never]) == 0
    assert bool((ids.weight[in_batch].abs().sum(1) > 0).all())
