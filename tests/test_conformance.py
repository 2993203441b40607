"""Every registered model passes the same contract on a tiny multimodal dataset (timm-style):
it builds, takes a training step with a finite loss, every trainable parameter gets a gradient,
full-sort scores have the right shape and are finite, the harness excludes history items from
its ranking, the same seed gives the same scores, half the images are missing, and a finished
run loads back (``load_run``) to the same ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.contract import capabilities
from benchmark.evaluation import Evaluator
from benchmark.lifecycle import build_model, load_run, make_evaluator, scorer
from benchmark.registry import get_model_spec, list_models
from benchmark.training import Trainer

MAX_LEN = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from benchmark.data.dataset import load_dataset
    from benchmark.data.synthetic import SyntheticConfig, generate_synthetic
    from benchmark.split import make_split

    tmp = tmp_path_factory.mktemp("conformance")
    config = SyntheticConfig(n_users=60, n_items=60, seq_len=(5, 9), image_size=16,
                             missing_image_rate=0.5, missing_text_rate=0.1, seed=3)
    data = load_dataset(generate_synthetic(tmp / "data", config))
    assert data.manifest["coverage"]["items_with_readable_image"] <= 31  # half are missing
    return data, make_split(data), tmp


def _params(spec):
    overrides = {"epochs": 1, "MAX_ITEM_LIST_LENGTH": MAX_LEN, "batch_size": 16}
    known = spec.all_defaults()
    return spec.resolve("tiny" if "tiny" in spec.presets else None,
                        {k: v for k, v in overrides.items() if k in known})


def _build(name, world, seed=0):
    data, split, tmp = world
    spec = get_model_spec(name)
    params = _params(spec)
    model = build_model(spec, params, data, tmp / "runs" / name, seed, "cpu", split,
                        cache_dir=tmp / "cache").model
    ev = Evaluator(split, data.n_items, params.get("MAX_ITEM_LIST_LENGTH", MAX_LEN))
    return spec, params, model, ev


def _scores(model, ev, n=12):
    return _scores_for(model, *ev.inputs(ev.cases("test"), 0, n))


def _train_step(spec, params, model, ev, world):
    _, split, _ = world
    if capabilities(model).training == "statistics":
        model.fit_statistics(split.train_sequences())
        return None
    trainer = Trainer(model, params, split, ev, seed=0, progress=False)
    model.train()
    idx = np.arange(min(16, len(trainer.samples)))
    loss = trainer._loss(idx)
    loss.backward()
    return loss


@pytest.mark.parametrize("name", list_models())
def test_model_conformance(name, world):
    data, split, _ = world
    spec, params, model, ev = _build(name, world)
    loss = _train_step(spec, params, model, ev, world)
    if loss is not None:
        assert torch.isfinite(loss), f"{name}: loss {loss}"
        for pname, p in model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None, f"{name}: no gradient for {pname}"
                assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"
    scores = _scores(model, ev)
    assert scores.shape == (12, data.n_items)
    assert torch.isfinite(scores[:, 1:]).all()

    # the harness, not the model, excludes history: boosting history items changes no rank
    def honest(users, seq, lens):
        return _scores_for(model, users, seq, lens)

    def boosted(users, seq, lens):
        s = _scores_for(model, users, seq, lens).clone()
        for j in range(len(users)):
            s[j, seq[j, :lens[j]]] += 1e6
        return s

    plain, cheat = ev.evaluate(honest, "test"), ev.evaluate(boosted, "test")
    targets = np.array([split.sequences[u][p] for u, p in zip(split.test.user, split.test.pos)])
    repeated = np.array([t in split.sequences[u][:p] for t, u, p in
                         zip(targets, split.test.user, split.test.pos)])
    assert (plain.ranks[~repeated] == cheat.ranks[~repeated]).all()


def _scores_for(model, users, seq, lens):
    model.eval()
    with torch.no_grad():
        return scorer(model)(users, seq, lens).float()


@pytest.mark.parametrize("name", list_models())
def test_same_seed_same_scores(name, world):
    runs = []
    for _ in range(2):
        spec, params, model, ev = _build(name, world, seed=5)
        _train_step(spec, params, model, ev, world)
        if capabilities(model).training != "statistics":
            torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
        runs.append(_scores(model, ev))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("name", list_models())
def test_finished_run_loads_back(name, world, tmp_path):
    """A run of the runner, loaded back by ``load_run`` (its own dataset, split and weights),
    ranks every test case exactly as the run recorded."""
    from benchmark.config import DatasetEntry, Suite
    from benchmark.runner import Options, run_suite

    data, _, tmp = world
    spec = get_model_spec(name)
    params = {k: v for k, v in {"epochs": 1, "MAX_ITEM_LIST_LENGTH": MAX_LEN,
                                "batch_size": 16}.items() if k in spec.all_defaults()}
    suite = Suite(name="load", datasets=[DatasetEntry(str(data.root))], models=[name],
                  seeds=[0], preset="tiny", params=params)
    (row,) = run_suite(suite, Options(results_dir=tmp_path, tracking=False, progress=False,
                                      cache_dir=tmp / "cache"))
    handle = load_run(row["run_dir"], cache_dir=tmp / "cache")
    assert not handle.model.training and handle.fresh == []
    stored = np.load(f"{row['run_dir']}/per_case.npz")
    ev = make_evaluator(handle.evaluation, handle.split, handle.data.n_items, handle.params)
    again = ev.evaluate(scorer(handle.model), "test")
    assert (again.ranks == stored["test_ranks"]).all()
    assert again.metrics == row["test"]
