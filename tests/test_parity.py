"""The harness runs RecBole's SASRec exactly as RecBole's own pipeline does (same split, same
training batches, same weights, same metrics), and RecBole's Trainer can train harness models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.data.dataset import load_dataset
from benchmark.evaluation import Evaluator
from benchmark.recbole_compat import DatasetView, import_recbole, recbole_config, recbole_workdir
from benchmark.registry import get_model_spec
from benchmark.split import make_split
from benchmark.training import Trainer, prefix_samples, seed_everything

SEED = 11


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """RecBole's own data pipeline on a small dataset with integer timestamps.

    (RecBole stores timestamps as float32: Unix times a few seconds apart collide there and its
    order then differs from the true one; small integers keep both orders identical.)"""
    import_recbole()
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from benchmark.data.dataset import write_dataset
    from tests.conftest import random_sequences

    tmp = tmp_path_factory.mktemp("parity")
    root = write_dataset(tmp / "par", "par", random_sequences(n_users=60, n_items=80), [])
    data = load_dataset(root)
    params = get_model_spec("sasrec").resolve("tiny", {
        "epochs": 2, "train_mode": "prefix", "MAX_ITEM_LIST_LENGTH": 8, "batch_size": 64})
    from baselines.sasrec import SASRec

    rb = {**params, "seed": SEED, "stopping_step": params["patience"],
          "train_batch_size": params["batch_size"], "valid_metric": "NDCG@10",
          "metrics": ["Hit", "NDCG", "MRR"], "topk": [5, 10, 20], "metric_decimal_place": 10,
          "reproducibility": True}
    config = recbole_config(SASRec, root, "par", rb, tmp / "run")
    with recbole_workdir(tmp / "run"):
        init_seed(SEED, True)
        train, valid, test = data_preparation(config, create_dataset(config))
    return data, params, config, train, valid, test, tmp


def test_split_matches_recbole(pipeline):
    data, _, _, train, _, test, _ = pipeline
    split = make_split(data)
    theirs = dict(zip(test._dataset.inter_feat["user_id"].tolist(),
                      test._dataset.inter_feat["item_id"].tolist()))
    ours = {int(u): int(split.sequences[u][p]) for u, p in zip(split.test.user, split.test.pos)}
    assert ours == theirs
    samples = prefix_samples(split)
    targets = [split.sequences[u][p] for u, p in samples]
    assert targets == train._dataset.inter_feat["item_id"].tolist()
    assert samples[:, 0].tolist() == train._dataset.inter_feat["user_id"].tolist()


def test_sasrec_prefix_mode_matches_recbole_pipeline(pipeline):
    from recbole.trainer import Trainer as RecBoleTrainer
    from recbole.utils import init_seed

    from baselines.sasrec import SASRec

    data, params, config, train, valid, test, tmp = pipeline
    with recbole_workdir(tmp / "run"):
        init_seed(SEED, True)
        theirs = SASRec(config, train._dataset)
        trainer = RecBoleTrainer(config, theirs)
        trainer.fit(train, valid, saved=False, show_progress=False)
        their_test = trainer.evaluate(test, load_best_model=False, show_progress=False)

    split = make_split(data)
    seed_everything(SEED)
    ours = SASRec(config, DatasetView(data))
    # RecBole's sequential evaluator does not exclude history items; match it here.
    ev = Evaluator(split, data.n_items, params["MAX_ITEM_LIST_LENGTH"], exclude_history=False)
    t = Trainer(ours, params, split, ev, seed=SEED, progress=False)
    t.fit()
    our_test = t.evaluate("test").metrics
    for k in (5, 10, 20):
        assert our_test[f"hr@{k}"] == pytest.approx(their_test[f"hit@{k}"], abs=1e-6)
        assert our_test[f"ndcg@{k}"] == pytest.approx(their_test[f"ndcg@{k}"], abs=1e-6)
        assert our_test[f"mrr@{k}"] == pytest.approx(their_test[f"mrr@{k}"], abs=1e-6)
    # and the weights themselves are the same
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_mostpop_trains_under_recbole_trainer(pipeline):
    from recbole.trainer import Trainer as RecBoleTrainer

    from baselines.mostpop import MostPop

    data, _, config, train, _, _, tmp = pipeline
    model = MostPop(config, train._dataset)
    with recbole_workdir(tmp / "run"):
        RecBoleTrainer(config, model)._train_epoch(train, 0)
    split = make_split(data)
    expected = np.bincount(np.concatenate([s[1:n] for s, n in zip(split.sequences,
                                                                   split.train_len) if n > 1]),
                           minlength=data.n_items)
    assert model.counts.numpy().tolist() == expected.tolist()
