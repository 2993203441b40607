"""The generic ``recbole:<Class>`` entry and the floors (random, cooc) in the registry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmark.cli import main
from benchmark.errors import ConfigError
from benchmark.registry import TRAIN_DEFAULTS, get_model_spec, list_models


def test_recbole_spec_from_the_model_yaml():
    spec = get_model_spec("recbole:GRU4Rec")
    params = spec.resolve("tiny", {"dropout_prob": 0.1})
    # RecBole's GRU4Rec.yaml, the shared training defaults, CE and prefix training
    assert (params["embedding_size"], params["hidden_size"], params["num_layers"]) == (64, 128, 1)
    assert params["dropout_prob"] == 0.1 and params["loss_type"] == "CE"
    assert params["train_mode"] == "prefix" and params["epochs"] == 30  # tiny preset
    assert set(TRAIN_DEFAULTS) <= set(params)
    assert set(spec.search_space) == {"learning_rate", "weight_decay", "dropout_prob"}
    assert spec.load().__module__ == "recbole.model.sequential_recommender.gru4rec"
    # yaml floats written without a dot (1e-12) are floats, as in RecBole's own loader
    assert get_model_spec("recbole:SASRec").defaults["layer_norm_eps"] == 1e-12
    assert get_model_spec("recbole:NARM").defaults["dropout_probs"] == [0.25, 0.5]


@pytest.mark.parametrize("name, message", [
    ("recbole:Nope", "recbole:Nope: not a RecBole sequential model (e.g. recbole:GRU4Rec"),
    ("recbole:gru4rec", "did you mean recbole:GRU4Rec?"),
    ("recbole:FDSA", "recbole:FDSA cannot run in the harness: it reads item feature fields"),
    ("recbole:FPMC", "BPR only"),
])
def test_recbole_bad_class_is_one_line_config_error(name, message):
    with pytest.raises(ConfigError) as err:
        get_model_spec(name)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_listing_mentions_the_generic_entry(capsys):
    assert {"random", "cooc", "mostpop", "recbole:GRU4Rec", "recbole:NARM"} <= set(list_models())
    assert list_models("recbole:*") == ["recbole:GRU4Rec", "recbole:NARM"]
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "recbole:GRU4Rec" in out and "recbole:<Class>" in out
    with pytest.raises(ConfigError, match="recbole:<Class>"):
        get_model_spec("sasrek")


def test_end_to_end_through_the_harness(tiny_dataset, tmp_path, capsys):
    """GRU4Rec and NARM (RecBole's classes) and the floors through the CLI: data, split,
    evaluator, tracking, the harness Trainer; per-case files with ties."""
    results = tmp_path / "results"
    models = ["recbole:GRU4Rec", "recbole:NARM", "random", "cooc"]
    assert main(["run", "--dataset", str(tiny_dataset), "--models", ",".join(models),
                 "--seeds", "0", "--epochs", "2", "--set", "MAX_ITEM_LIST_LENGTH=10",
                 "--results-dir", str(results), "-q"]) == 0
    capsys.readouterr()
    rows = {r["model"]: r for r in
            json.loads((results / "accuracy" / "summary.json").read_text())["rows"]}
    assert set(rows) == set(models)
    for name in models:
        row = rows[name]
        assert row["status"] == "ok" and row["mlflow_run_id"]
        assert 0.0 <= row["test"]["ndcg@10"] <= 1.0
        with np.load(f"{row['run_dir']}/per_case.npz") as npz:
            assert {"test_ties", "valid_ties", "test_cold_ranks"} <= set(npz.files)
    for name in ("recbole:GRU4Rec", "recbole:NARM"):
        assert rows[name]["epochs"] == 2  # trained by the harness Trainer
        result = json.loads((results / "accuracy" / "runs" / rows[name]["dataset"] / name /
                             "seed-0" / "result.json").read_text())
        assert result["provenance"]["config"]["params"]["train_mode"] == "prefix"


@pytest.mark.parametrize("cls", ["BERT4Rec", "SHAN"])
def test_models_with_a_batch_transform_train_and_score(cls, tiny_dataset, tmp_path):
    """RecBole builds BERT4Rec's masked items and SHAN's inverted sequence in its data loaders
    (the yaml's ``transform``): the wrapped class applies it to the harness's batches."""
    from benchmark.data.dataset import load_dataset
    from benchmark.evaluation import Evaluator
    from benchmark.lifecycle import build_model
    from benchmark.split import make_split
    from benchmark.training import Trainer

    data = load_dataset(tiny_dataset)
    split = make_split(data)
    spec = get_model_spec(f"recbole:{cls}")
    params = spec.resolve("tiny", {"MAX_ITEM_LIST_LENGTH": 8, "batch_size": 16, "epochs": 1})
    model = build_model(spec, params, data, tmp_path / cls, 0, "cpu", split).model
    assert type(model).__name__ == cls and type(model).__mro__[1].__name__ == cls
    trainer = Trainer(model, params, split, Evaluator(split, data.n_items, 8), 0,
                      progress=False)
    model.train()
    loss = trainer._loss(np.arange(16))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    res = trainer.evaluate("test")
    assert res.metrics["ndcg@10"] > 0.0


# -- the floors -----------------------------------------------------------------------------------
def _floor(name, tiny_dataset, tmp_path, seed=0, **overrides):
    from benchmark.data.dataset import load_dataset
    from benchmark.lifecycle import build_model
    from benchmark.split import make_split

    data = load_dataset(tiny_dataset)
    split = make_split(data)
    spec = get_model_spec(name)
    model = build_model(spec, spec.resolve(None, overrides), data, tmp_path / name, seed,
                        "cpu").model
    model.fit_statistics(split.train_sequences())
    return model.eval(), data


def _score(model, seq, lens, users=None):
    from recbole.data.interaction import Interaction

    seq, lens = torch.tensor(seq), torch.tensor(lens)
    users = torch.zeros(len(seq), dtype=torch.long) if users is None else torch.tensor(users)
    with torch.no_grad():
        return model.full_sort_predict(Interaction(
            {model.USER_ID: users, model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lens}))


def test_random_is_seeded_and_independent_of_batching(tiny_dataset, tmp_path):
    a, _ = _floor("random", tiny_dataset, tmp_path, seed=0)
    b, _ = _floor("random", tiny_dataset, tmp_path, seed=1)
    seq, lens = [[1, 2, 0], [3, 0, 0]], [2, 1]
    both = _score(a, seq, lens, users=[4, 7])
    assert torch.equal(both[1:], _score(a, seq[1:], lens[1:], users=[7]))  # batch-independent
    assert torch.equal(both, _score(a, seq, lens, users=[4, 7]))
    assert not torch.equal(both, _score(b, seq, lens, users=[4, 7]))  # another seed
    assert not torch.equal(both[0], _score(a, seq, [1, 1], users=[4, 7])[0])  # another case


def test_cooc_scores_by_hand(tmp_path):
    """Training parts a b c / a b d / b c: P(b|a) = 1, P(c|b) = 2/3, P(d|b) = 1/3; popularity
    shares a 2/8, b 3/8, c 2/8, d 1/8 (validation and test items x, y never counted)."""
    from benchmark.data.dataset import load_dataset, write_dataset
    from benchmark.lifecycle import build_model
    from benchmark.split import make_split

    rows = []  # leave-one-out: each user's last two items are validation and test
    for u, items in enumerate(["abcxy", "abdxy", "bcxy"]):
        rows += [(f"u{u}", i, float(10 * u + t)) for t, i in enumerate(items)]
    data = load_dataset(write_dataset(tmp_path / "c", "c", rows, []))
    split = make_split(data)
    spec = get_model_spec("cooc")
    ids = {tok: k for k, tok in enumerate(data.item_tokens)}
    a, b, c, d = ids["a"], ids["b"], ids["c"], ids["d"]
    for window, expected in ((2, {c: 2 / 3 + 0.1 * 2 / 8, b: 0.5 * 1.0 + 0.1 * 3 / 8,
                                  d: 1 / 3 + 0.1 * 1 / 8, a: 0.1 * 2 / 8, ids["x"]: 0.0}),
                             (1, {c: 2 / 3 + 0.1 * 2 / 8, b: 0.1 * 3 / 8})):
        params = spec.resolve(None, {"window": window, "decay": 0.5, "backoff": 0.1})
        model = build_model(spec, params, data, tmp_path / "run", 0, "cpu").model
        model.fit_statistics(split.train_sequences())
        # history a, b (b most recent): P(.|b) + 0.5 P(.|a) + 0.1 P(.)
        s = _score(model.eval(), [[a, b, 0]], [2])[0]
        for item, value in expected.items():
            assert s[item].item() == pytest.approx(value, rel=1e-6, abs=1e-9), (window, item)
    with pytest.raises(ConfigError, match="decay"):
        build_model(spec, spec.resolve(None, {"decay": 0.0}), data, tmp_path / "bad", 0, "cpu")
