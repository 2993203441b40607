"""Ties and the cold-start protocol through the Evaluator (docs/protocol.md, 10 and 11).

Expected values are closed forms computed here by hand: a case with ``n`` candidates (target
included) all scored alike has ``E[NDCG@K] = sum_{r < min(K, n)} 1/log2(r+2) / n``,
``E[HR@K] = min(K, n) / n`` and ``E[MRR@K] = sum_{r < min(K, n)} 1/(r+1) / n``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.evaluation import COLD_PROTOCOL, EvalResult, Evaluator, stored_cases

KS = (5, 10, 20)


def chance(n: int, metric: str, k: int) -> float:
    """The metric of a target placed uniformly at random among ``n`` candidates."""
    weight = {"hr": lambda r: 1.0, "ndcg": lambda r: 1.0 / math.log2(r + 2),
              "mrr": lambda r: 1.0 / (r + 1)}[metric]
    return sum(weight(r) for r in range(min(k, n))) / n


def case_targets(split, cases) -> np.ndarray:
    return np.array([split.sequences[u][p] for u, p in zip(cases.user, cases.pos)])


def n_candidates(split, cases, n_items: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """Per case: the items ranked (padding and history out, the target in), optionally only
    those in ``allowed``."""
    out = []
    for u, p in zip(cases.user, cases.pos):
        seq = split.sequences[u]
        pool = set(range(1, n_items)) - set(seq[:p].tolist()) | {int(seq[p])}
        if allowed is not None:
            pool = {i for i in pool if allowed[i]}
        out.append(len(pool))
    return np.array(out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from benchmark.data.dataset import load_dataset, write_dataset
    from benchmark.split import make_split
    from tests.conftest import random_sequences

    rows = random_sequences()
    items = sorted({r[1] for r in rows}, key=lambda s: int(s[1:]))
    root = write_dataset(tmp_path_factory.mktemp("tiny") / "tiny", "tiny", rows,
                         [(i, f"title {i}", f"text of {i}", None) for i in items])
    data = load_dataset(root)
    return data, make_split(data)


@pytest.mark.parametrize("scorer", ["constant", "per_user_constant"])
def test_all_tied_scores_give_the_random_expectation(tiny, scorer):
    data, split = tiny
    ev = Evaluator(split, data.n_items, max_len=5)

    def score(users, seq, lens):
        s = torch.zeros(len(users), data.n_items)
        return s if scorer == "constant" else s + users.unsqueeze(1).float()

    res = ev.evaluate(score, "test")
    n = n_candidates(split, split.test, data.n_items)
    assert (res.ranks == 0).all() and (res.ties == n - 1).all()
    for k in KS:
        for metric in ("hr", "ndcg", "mrr"):
            expected = np.mean([chance(int(c), metric, k) for c in n])
            assert res.metrics[f"{metric}@{k}"] == pytest.approx(expected, abs=1e-12)


def test_sampled_mode_constant_scorer_is_at_chance(tiny):
    data, split = tiny
    ev = Evaluator(split, data.n_items, max_len=5, mode="sampled", n_negatives=10,
                   candidate_seed=2)
    res = ev.evaluate(lambda users, seq, lens: torch.ones(len(users), data.n_items), "test")
    assert (res.ranks == 0).all() and (res.ties == 10).all()
    for k in KS:  # 11 candidates: the target and its 10 negatives
        assert res.metrics[f"ndcg@{k}"] == pytest.approx(chance(11, "ndcg", k), abs=1e-12)
        assert res.metrics[f"hr@{k}"] == pytest.approx(chance(11, "hr", k), abs=1e-12)


# -- the cold-start protocol ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from benchmark.data.dataset import load_dataset
    from benchmark.data.synthetic import SyntheticConfig, generate_synthetic
    from benchmark.split import make_split

    config = SyntheticConfig(n_users=400, n_items=150, image_size=16, seed=4)
    data = load_dataset(generate_synthetic(tmp_path_factory.mktemp("cold"), config))
    split = make_split(data)
    labels = {"signal": data.inter_fields["signal"]}
    return data, split, labels


def _cells(res: EvalResult, temperature: str) -> list[str]:
    return [g for g in res.groups if g.endswith(f"target={temperature}")]


def test_cold_first_scorer_is_exactly_at_chance_on_cold_cells(world):
    data, split, labels = world
    ev = Evaluator(split, data.n_items, max_len=20, case_labels=labels)
    never = split.train_item_counts(data.n_items) == 0
    never[0] = False

    def cold_first(users, seq, lens):
        return torch.from_numpy(never.astype(np.float32)).repeat(len(users), 1)

    res = ev.evaluate(cold_first, "test")
    targets = case_targets(split, split.test)
    is_cold = never[targets]
    signal = np.asarray(labels["signal"], dtype=object)[split.test.row]
    n_cold = n_candidates(split, split.test, data.n_items, allowed=never)
    cold_cells = _cells(res, "cold")
    assert "target=cold" in cold_cells and len(cold_cells) >= 4
    for cell in cold_cells:
        assert res.group_protocols[cell] == COLD_PROTOCOL
        mask = is_cold & (True if cell == "target=cold" else signal == cell.split(",")[0][7:])
        assert res.group_sizes[cell] == mask.sum() > 0
        for k in KS:
            for metric in ("hr", "ndcg", "mrr"):
                expected = np.mean([chance(int(c), metric, k) for c in n_cold[mask]])
                assert res.groups[cell][f"{metric}@{k}"] == pytest.approx(expected, abs=1e-12)
    # stored per case: cold-start ranks/ties for cold targets, -1 for warm ones
    assert (res.cold_ranks[~is_cold] == -1).all() and (res.cold_ties[~is_cold] == -1).all()
    assert (res.cold_ranks[is_cold] == 0).all()
    assert (res.cold_ties[is_cold] == n_cold[is_cold] - 1).all()
    # the reason for the protocol: on the full ranking the same prior is far above chance
    n_all = n_candidates(split, split.test, data.n_items)
    full_cold = np.mean([chance(int(c), "ndcg", 10) for c in n_cold[is_cold]])
    assert full_cold > 2 * np.mean([chance(int(c), "ndcg", 10) for c in n_all[is_cold]])
    # warm cells and the overall metrics stay on the full ranking (cold items all above)
    assert not any(res.group_protocols.get(c) for c in _cells(res, "warm"))
    warm = ~is_cold
    assert (res.ranks[warm] == n_cold[warm]).all()
    assert (res.ties[warm] == (n_all - n_cold - 1)[warm]).all()


def test_a_content_scorer_beats_chance_on_cold_visual_cases(world):
    """Reading the content of cold items (here the hidden colour+shape, the best an image model
    can do) stays far above chance under the cold-start protocol."""
    data, split, labels = world
    ev = Evaluator(split, data.n_items, max_len=20, case_labels=labels)
    pairs = list(zip(data.item_fields["color"], data.item_fields["shape"]))
    code = {v: i for i, v in enumerate(sorted(set(pairs[1:])))}
    key = np.array([-1] + [code[v] for v in pairs[1:]])

    def shares_colour_shape(users, seq, lens):
        out = torch.zeros(len(users), data.n_items)
        for j in range(len(users)):
            recent = seq[j, max(0, int(lens[j]) - 3):int(lens[j])].numpy()
            out[j] = torch.from_numpy(np.isin(key, key[recent]).astype(np.float32))
        return out

    res = ev.evaluate(shares_colour_shape, "test")
    never = split.train_item_counts(data.n_items) == 0
    never[0] = False
    targets = case_targets(split, split.test)
    signal = np.asarray(labels["signal"], dtype=object)[split.test.row]
    mask = never[targets] & (signal == "visual")
    n_cold = n_candidates(split, split.test, data.n_items, allowed=never)[mask]
    at_chance = np.mean([chance(int(c), "ndcg", 10) for c in n_cold])
    assert res.groups["signal=visual,target=cold"]["ndcg@10"] > 3 * at_chance


def test_sampled_mode_labels_its_cold_protocol(world):
    data, split, labels = world
    ev = Evaluator(split, data.n_items, max_len=20, case_labels=labels, mode="sampled",
                   n_negatives=30)
    res = ev.evaluate(lambda users, seq, lens: torch.zeros(len(users), data.n_items), "test")
    never = split.train_item_counts(data.n_items) == 0
    cand = ev.sampled_candidates("test")
    is_cold = never[case_targets(split, split.test)]
    n_cold = 1 + never[cand].sum(1)  # the target and its cold negatives
    assert (res.cold_ties[is_cold] == n_cold[is_cold] - 1).all()
    assert res.group_protocols["target=cold"].startswith(COLD_PROTOCOL)
    assert "sampled" in res.group_protocols["target=cold"]
    expected = np.mean([chance(int(c), "ndcg", 10) for c in n_cold[is_cold]])
    assert res.groups["target=cold"]["ndcg@10"] == pytest.approx(expected, abs=1e-12)


# -- storage and readers --------------------------------------------------------------------------
def test_per_case_arrays_and_old_files(tmp_path):
    res = EvalResult("test", np.array([3, 5]), np.array([0, 4]), {}, ties=np.array([2, 0]),
                     cold_ranks=np.array([-1, 1]), cold_ties=np.array([-1, 0]))
    np.savez(tmp_path / "new.npz", **res.arrays())
    np.savez(tmp_path / "old.npz", test_users=res.users, test_ranks=res.ranks)
    with np.load(tmp_path / "new.npz") as npz:
        assert set(npz.files) == {"test_users", "test_ranks", "test_ties", "test_cold_ranks",
                                  "test_cold_ties"}
        users, ranks, ties = stored_cases(npz)
        assert (users.tolist(), ranks.tolist(), ties.tolist()) == ([3, 5], [0, 4], [2, 0])
    with np.load(tmp_path / "old.npz") as npz:  # written before ties were stored: zeros
        assert stored_cases(npz)[2].tolist() == [0, 0]


def test_report_reads_ties(tmp_path):
    from benchmark.report.results import Run, per_user, seed_averaged

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    np.savez(run_dir / "per_case.npz", test_users=np.array([1, 2]), test_ranks=np.array([0, 0]),
             test_ties=np.array([1, 0]))
    users, values = seed_averaged([Run({"dataset": "d", "model": "m", "seed": 0}, run_dir)],
                                  "hr@1")
    assert users.tolist() == [1, 2] and values.tolist() == [0.5, 1.0]  # 1 of 2 tied places
    assert per_user(np.array([1]), np.array([0]), "hr@1", np.array([3]))[1].tolist() == [0.25]
