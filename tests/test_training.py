"""Training: window coverage, CPU determinism under a seed, exact resume from a checkpoint."""

from __future__ import annotations

import torch

from benchmark.data.dataset import load_dataset
from benchmark.evaluation import Evaluator
from benchmark.lifecycle import build_model
from benchmark.registry import get_model_spec
from benchmark.split import make_split
from benchmark.training import Trainer, position_windows


def test_windows_cover_each_training_transition_once(tiny_dataset):
    split = make_split(load_dataset(tiny_dataset))
    for max_len in (3, 50):
        seen = {}
        for u, a, b in position_windows(split, max_len):
            assert b - a - 1 <= max_len
            for pos in range(a + 1, b):
                seen[(u, pos)] = seen.get((u, pos), 0) + 1
        expected = {(u, p) for u, n in enumerate(split.train_len) for p in range(1, n)}
        assert set(seen) == expected and set(seen.values()) == {1}


def _trainer(data, split, tmp_path, seed, mode="all_positions", epochs=3, checkpoint=None):
    spec = get_model_spec("sasrec")
    params = spec.resolve("tiny", {"epochs": epochs, "train_mode": mode, "patience": 10,
                                   "MAX_ITEM_LIST_LENGTH": 6, "batch_size": 16})
    model = build_model(spec, params, data, tmp_path / "run", seed, "cpu").model
    ev = Evaluator(split, data.n_items, params["MAX_ITEM_LIST_LENGTH"])
    return Trainer(model, params, split, ev, seed, checkpoint=checkpoint, progress=False)


def test_same_seed_same_scores_different_seed_different(tiny_dataset, tmp_path):
    data = load_dataset(tiny_dataset)
    split = make_split(data)
    results = []
    for seed in (0, 0, 1):
        t = _trainer(data, split, tmp_path, seed, mode="prefix", epochs=2)
        t.fit()
        results.append(t.evaluate("test"))
    assert (results[0].ranks == results[1].ranks).all()
    assert results[0].metrics == results[1].metrics
    assert not (results[0].ranks == results[2].ranks).all()


def test_resume_continues_exactly(tiny_dataset, tmp_path):
    data = load_dataset(tiny_dataset)
    split = make_split(data)
    straight = _trainer(data, split, tmp_path, 3, epochs=4)
    out_straight = straight.fit()

    ckpt = tmp_path / "checkpoint.pt"
    first = _trainer(data, split, tmp_path, 3, epochs=2, checkpoint=ckpt)
    first.fit()  # as if killed after epoch 2
    second = _trainer(data, split, tmp_path, 3, epochs=4, checkpoint=ckpt)
    out_resumed = second.fit(resume=True)
    assert out_resumed.resumed_from == 2
    assert [r["train_loss"] for r in out_resumed.history] == \
        [r["train_loss"] for r in out_straight.history]
    for a, b in zip(straight.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)


def test_all_positions_learns_more_than_chance(tiny_dataset, tmp_path):
    data = load_dataset(tiny_dataset)
    split = make_split(data)
    t = _trainer(data, split, tmp_path, 0, epochs=15)
    t.fit()
    # the fixture's next item is 2-4 ids ahead of the last one: learnable, chance is ~10/60
    assert t.evaluate("test").metrics["hr@10"] > 0.4
