"""Metrics: hand-computed cases, ties as the expected metric over the tied block, and
agreement with RecBole's evaluator on tie-free scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.evaluation import NonFiniteScores, case_metrics, rank_among, rank_full


def test_metrics_from_ranks_by_hand():
    m = case_metrics(np.array([0, 1, 4, 9, 10, 25]), ks=(5, 10))
    assert m["hr@5"].tolist() == [1, 1, 1, 0, 0, 0]
    assert m["hr@10"].tolist() == [1, 1, 1, 1, 0, 0]
    assert m["ndcg@10"][0] == 1.0
    assert m["ndcg@10"][1] == pytest.approx(1 / math.log2(3))
    assert m["ndcg@10"][3] == pytest.approx(1 / math.log2(11))
    assert m["ndcg@5"][3] == 0.0
    assert m["mrr@10"].tolist() == pytest.approx([1, 1 / 2, 1 / 5, 1 / 10, 0, 0])


def test_rank_full_excludes_history_and_padding_but_never_the_target():
    # items 0 (pad) .. 5; user history [3, 4]; target 2
    scores = torch.tensor([[9.0, 1.0, 5.0, 8.0, 7.0, 6.0]])
    seq = torch.tensor([[3, 4, 0]])
    lens = torch.tensor([2])
    # without history: pad excluded, 3, 4, 5 beat the target -> rank 3
    assert rank_full(scores, torch.tensor([2]), seq, torch.tensor([0]))[0].tolist() == [3]
    # with history 3 and 4 excluded -> only item 5 beats it
    assert rank_full(scores, torch.tensor([2]), seq, lens)[0].tolist() == [1]
    # a target seen before is still ranked (not excluded): target 3, history [3, 4]
    assert rank_full(scores, torch.tensor([3]), seq, lens)[0].tolist() == [0]


def test_ties_are_counted_not_broken_by_item_id():
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]])
    none = torch.zeros((1, 1), dtype=torch.long)
    for t in (1, 2, 4):  # the same for every target: nothing above, three others tied
        ranks, ties = rank_full(scores, torch.tensor([t]), none, torch.tensor([0]))
        assert (ranks.tolist(), ties.tolist()) == ([0], [3])
    # history and padding are never tied with the target (pad's score equals the target's here)
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.5]])
    ranks, ties = rank_full(scores, torch.tensor([1]), torch.tensor([[2]]), torch.tensor([1]))
    assert (ranks.tolist(), ties.tolist()) == ([0], [1])  # only item 3 ties


def test_a_partly_tied_case_by_hand():
    # pad, then item 1 above the target 3, items 2 and 4 tied with it, item 5 below
    scores = torch.tensor([[0.0, 5.0, 3.0, 3.0, 3.0, 1.0]])
    none = torch.zeros((1, 1), dtype=torch.long)
    ranks, ties = rank_full(scores, torch.tensor([3]), none, torch.tensor([0]))
    assert (ranks.tolist(), ties.tolist()) == ([1], [2])
    m = case_metrics(ranks, ks=(3, 5), ties=ties)  # the target is at rank 1, 2 or 3 (1/3 each)
    assert m["hr@3"][0] == pytest.approx(2 / 3)
    assert m["hr@5"][0] == pytest.approx(1.0)
    assert m["ndcg@3"][0] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 3)
    assert m["ndcg@5"][0] == pytest.approx((1 / math.log2(3) + 1 / 2 + 1 / math.log2(5)) / 3)
    assert m["mrr@3"][0] == pytest.approx((1 / 2 + 1 / 3) / 3)


def test_tied_metrics_equal_the_mean_over_the_block():
    rng = np.random.default_rng(1)
    ranks, ties = rng.integers(0, 30, size=200), rng.integers(0, 15, size=200)
    got = case_metrics(ranks, ks=(5, 10, 20), ties=ties)
    for j in range(200):  # brute force: every rank the tied block can put the target at
        block = case_metrics(np.arange(ranks[j], ranks[j] + ties[j] + 1), ks=(5, 10, 20))
        for name, values in block.items():
            assert got[name][j] == pytest.approx(values.mean(), abs=1e-12), name


def test_no_ties_leave_the_metrics_unchanged():
    ranks = np.array([0, 1, 4, 9, 10, 25])
    plain, zero = case_metrics(ranks), case_metrics(ranks, ties=np.zeros(6, dtype=np.int64))
    for name in plain:  # bit-identical, so old per-case files (no ties) give the same numbers
        assert np.array_equal(plain[name], zero[name])
    with pytest.raises(ValueError, match="shape"):
        case_metrics(ranks, ties=np.zeros(5))


def test_rank_among_sampled_candidates():
    scores = torch.tensor([[0.0, 0.5, 0.9, 0.1, 0.7]])
    assert rank_among(scores, torch.tensor([1]), torch.tensor([[2, 3, 4]]))[0].tolist() == [2]
    assert rank_among(scores, torch.tensor([2]), torch.tensor([[1, 3, 4]]))[0].tolist() == [0]
    scores = torch.tensor([[0.0, 0.5, 0.5, 0.1, 0.5]])
    ranks, ties = rank_among(scores, torch.tensor([1]), torch.tensor([[2, 3, 4]]))
    assert (ranks.tolist(), ties.tolist()) == ([0], [2])


def test_agrees_with_recbole_evaluator():
    from benchmark.recbole_compat import import_recbole

    import_recbole()
    from recbole.evaluator.collector import DataStruct
    from recbole.evaluator.metrics import MRR, NDCG, Hit

    rng = np.random.default_rng(0)
    n_users, n_items = 300, 500
    scores = torch.from_numpy(rng.normal(size=(n_users, n_items)).astype(np.float32))
    targets = torch.from_numpy(rng.integers(1, n_items, size=n_users))
    no_hist = torch.zeros((n_users, 1), dtype=torch.long)
    ranks, ties = rank_full(scores, targets, no_hist, torch.zeros(n_users, dtype=torch.long))
    assert ties.sum() == 0  # continuous scores: the tie handling is not exercised here
    ours = {k: v.mean() for k, v in case_metrics(ranks, ks=(5, 10, 20), ties=ties).items()}

    # RecBole's path: top-k over the same masked scores, a boolean hit matrix, its metric classes
    masked = scores.clone()
    masked[:, 0] = -torch.inf
    topk = torch.topk(masked, 20, dim=1).indices
    pos_index = (topk == targets.unsqueeze(1)).int()
    pos_len = torch.ones(n_users, 1, dtype=torch.int)
    data = DataStruct()
    data.set("rec.topk", torch.cat([pos_index, pos_len], dim=1))
    config = {"topk": [5, 10, 20], "metric_decimal_place": 10}
    for cls, name in ((Hit, "hit"), (NDCG, "ndcg"), (MRR, "mrr")):
        theirs = cls(config).calculate_metric(data)
        for k in (5, 10, 20):
            ours_name = name.replace("hit", "hr")
            assert ours[f"{ours_name}@{k}"] == pytest.approx(theirs[f"{name}@{k}"], abs=1e-6)


def test_nan_scores_are_refused(tiny_dataset):
    from benchmark.data.dataset import load_dataset
    from benchmark.evaluation import Evaluator
    from benchmark.split import make_split

    data = load_dataset(tiny_dataset)
    ev = Evaluator(make_split(data), data.n_items, max_len=5)

    def nan_scores(users, seq, lens):
        s = torch.zeros(len(users), data.n_items)
        s[:, 3] = torch.nan
        return s

    with pytest.raises(NonFiniteScores):
        ev.evaluate(nan_scores, "test")
    for bad in (torch.inf, -torch.inf):
        with pytest.raises(NonFiniteScores, match="1 non-finite"):
            ev.evaluate(lambda u, q, n, bad=bad: torch.zeros(len(u), data.n_items).index_fill_(
                0, torch.tensor([0]), 0).index_put_((torch.tensor([0]), torch.tensor([2])),
                                                    torch.tensor(bad)), "test")

    def extreme_scores(users, seq, lens):  # finite everywhere: no overflow to inf
        s = torch.full((len(users), data.n_items), torch.finfo(torch.float32).max)
        s[:, 0] = -torch.inf  # the padding column is not checked
        return s

    assert ev.evaluate(extreme_scores, "test").ties.min() > 0


def test_sampled_candidates_fixed_and_exclude_history(tiny_dataset):
    from benchmark.data.dataset import load_dataset
    from benchmark.evaluation import Evaluator
    from benchmark.split import make_split

    data = load_dataset(tiny_dataset)
    split = make_split(data)
    a = Evaluator(split, data.n_items, 5, mode="sampled", n_negatives=10, candidate_seed=3)
    b = Evaluator(split, data.n_items, 5, mode="sampled", n_negatives=10, candidate_seed=3)
    ca, cb = a.sampled_candidates("test"), b.sampled_candidates("test")
    assert np.array_equal(ca, cb)
    for j, (u, p) in enumerate(zip(split.test.user, split.test.pos)):
        seen = set(split.sequences[u][:p + 1].tolist())
        assert not seen & set(ca[j].tolist())
        assert len(set(ca[j].tolist())) == 10 and 0 not in ca[j]


def test_whole_history_is_excluded_not_only_the_model_inputs(tmp_path):
    from benchmark.data.dataset import load_dataset, write_dataset
    from benchmark.evaluation import Evaluator
    from benchmark.split import make_split

    rows = [("u", f"i{k}", k) for k in range(8)] + [("v", f"i{k}", k) for k in (7, 6, 5)]
    data = load_dataset(write_dataset(tmp_path / "h", "h", rows, []))
    split = make_split(data)
    ev = Evaluator(split, data.n_items, max_len=2)  # the model sees only the last 2 items

    def first_items_on_top(users, seq, lens):  # i0 best, i1 next, ...
        return -torch.arange(data.n_items, dtype=torch.float32).repeat(len(users), 1)

    res = ev.evaluate(first_items_on_top, "test")
    u = list(data.user_tokens).index("u")
    # user u's test target i7 follows i0..i6: all seven are excluded, so i7 ranks first
    assert res.ranks[list(res.users).index(u)] == 0
