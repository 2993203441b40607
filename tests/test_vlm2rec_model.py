"""VLM2Rec models end to end on a small synthetic dataset with the tiny random Qwen2-VL stand-in:
forward/backward, full-sort scores, determinism, missing images, ablations, per-step
diagnostics, exact resume, stage sharing with vlm2rec_sasrec, the runner, and DDP (slow)."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.evaluation import Evaluator
from benchmark.lifecycle import build_model
from benchmark.registry import get_model_spec

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"history_len": 3, "max_text_tokens": 8, "batch_size": 8, "eval_batch_size": 64,
         "pairs_per_user": 2, "epochs": 2, "patience": 5, "MAX_ITEM_LIST_LENGTH": 8}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from benchmark.data.dataset import load_dataset
    from benchmark.data.synthetic import SyntheticConfig, generate_synthetic
    from benchmark.split import make_split

    tmp = tmp_path_factory.mktemp("vlm2rec")
    config = SyntheticConfig(n_users=40, n_items=40, seq_len=(5, 8), image_size=16,
                             missing_image_rate=0.5, missing_text_rate=0.1, seed=1,
                             cold_share=0.3, cold_target_rate=0.5)  # the version-1 defaults
    data = load_dataset(generate_synthetic(tmp / "data", config))
    return data, make_split(data), tmp


def _build(world, name="vlm2rec", seed=0, fresh_stages=True, **overrides):
    handle, params, ev = _handle(world, name, seed, fresh_stages, **overrides)
    return handle.model, params, ev


def _handle(world, name="vlm2rec", seed=0, fresh_stages=True, **overrides):
    data, split, tmp = world
    spec = get_model_spec(name)
    small = {k: v for k, v in SMALL.items() if k in spec.all_defaults()}
    if name == "vlm2rec_sasrec":
        small = {"epochs": 1, "MAX_ITEM_LIST_LENGTH": 8, "batch_size": 16,
                 "stage1_overrides": {**SMALL, "epochs": 1}}
    params = spec.resolve("tiny", {**small, **overrides})
    cache = tmp / "cache"
    if fresh_stages:  # trainings and tables are shared through the cache: start from none
        shutil.rmtree(cache / "vlm2rec", ignore_errors=True)
        shutil.rmtree(cache / "trained", ignore_errors=True)
    handle = build_model(spec, params, data, tmp / "runs" / name, seed, "cpu", split,
                         cache_dir=cache)
    ev = Evaluator(split, data.n_items, params["MAX_ITEM_LIST_LENGTH"],
                   batch_size=params["eval_batch_size"])
    return handle, params, ev


def _batch(world, model, n=8):
    from methods.vlm2rec.train import training_pairs

    _, split, _ = world
    pairs = training_pairs(split)[:n]
    hist = [split.sequences[u][max(0, p - model.history_len):p].tolist() for u, p in pairs]
    return hist, [int(split.sequences[u][p]) for u, p in pairs]


def _scores(model, ev, n=12):
    return model.score(*ev.inputs(ev.cases("test"), 0, n))


def test_forward_backward_and_full_sort_scores(world):
    data, _, _ = world
    model, _, ev = _build(world)
    model.train()
    loss, terms = model(*_batch(world, model))
    loss.backward()
    assert torch.isfinite(loss)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n, _ in trainable)
    for name, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert terms["weak"] in ("text", "image") and terms["rho"] >= 1 and terms["beta"] >= 1
    scores = _scores(model, ev)
    assert scores.shape == (12, data.n_items)
    assert torch.isneginf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()
    assert model.training  # scoring leaves the mode as it was
    torch.optim.SGD([p for _, p in trainable], lr=1.0).step()
    assert not torch.equal(_scores(model, ev), scores)  # a changed adapter: fresh embeddings


def test_same_seed_same_scores(world):
    runs = []
    for _ in range(2):
        model, _, ev = _build(world, seed=3)
        model.train()
        loss, _ = model(*_batch(world, model))
        loss.backward()
        torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
        runs.append(_scores(model, ev))
    assert torch.equal(runs[0], runs[1])


def test_logq_popularity_prior_adds_log_training_counts(world):
    """``popularity_prior: logq`` ranks by cos/tau + log(training count + 1): the same adapter
    gives exactly the cosine scores plus that prior, computed here by hand from the split; the
    never-trained items all get 0, so they keep the cosine order among themselves."""
    from benchmark.errors import ConfigError

    data, split, _ = world
    plain, params, ev = _build(world)
    prior, _, _ = _build(world, popularity_prior="logq")
    prior.load_trainable_state(plain.trainable_state())
    cos, with_prior = _scores(plain, ev), _scores(prior, ev)
    counts = np.zeros(data.n_items)
    for seq, n in zip(split.sequences, split.train_len):
        for item in seq[:n]:
            counts[item] += 1
    expected = cos / params["tau"] + torch.log(torch.as_tensor(counts, dtype=torch.float32) + 1)
    assert counts[1:].min() == 0 and counts.max() > 1  # the world has cold and popular items
    torch.testing.assert_close(with_prior[:, 1:], expected[:, 1:], rtol=0, atol=1e-5)
    assert torch.isneginf(with_prior[:, 0]).all()
    cold = torch.as_tensor(np.flatnonzero(counts == 0)[1:])  # column 0 is padding
    assert torch.equal(with_prior[:, cold].argsort(dim=1), cos[:, cold].argsort(dim=1))
    with pytest.raises(ConfigError, match="popularity_prior"):
        get_model_spec("vlm2rec").resolve("tiny", {"popularity_prior": "log"})


@pytest.mark.parametrize("flags", [{"wpcl": False, "crtr": False}, {"wpcl": True, "crtr": False},
                                   {"wpcl": False, "crtr": True},
                                   {"fusion": "internal", "wpcl": False, "crtr": False}])
def test_ablations_switch_loss_terms(world, flags):
    model, _, ev = _build(world, **flags)
    model.train()
    loss, terms = model(*_batch(world, model))
    loss.backward()
    assert math.isnan(terms["l_wpcl"]) == (not flags["wpcl"])
    assert math.isnan(terms["l_crtr"]) == (not flags["crtr"])
    expected = terms["l_cl"] + (terms["l_wpcl"] if flags["wpcl"] else 0.0) \
        + (0.1 * terms["l_crtr"] if flags["crtr"] else 0.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    if flags.get("fusion") == "internal":  # plain SFT, one joint prompt: no unimodal branches
        assert terms["weak"] is None
    else:
        assert terms["weak"] in ("text", "image")
    assert torch.isfinite(_scores(model, ev)[:, 1:]).all()


def test_fit_reports_diagnostics_every_step_with_missing_images(world):
    data, split, _ = world
    assert data.manifest["coverage"]["items_with_readable_image"] < data.n_items - 10
    model, _, ev = _build(world, grad_probe_every=2)
    steps, epochs = [], []
    outcome = model.fit(split, ev, seed=0, progress=False,
                        on_step=lambda i, row: steps.append((i, row)),
                        on_epoch=lambda i, row: epochs.append(row))
    assert [i for i, _ in steps] == list(range(len(steps))) and len(steps) > 2
    assert outcome.steps == [row for _, row in steps]
    for i, row in steps:
        assert {"rho", "weak", "beta", "p_text", "p_image", "lr", "l_cl"} <= set(row)
        assert row["weak"] in ("text", "image") and row["rho"] >= 1
        assert ("grad_text" in row) == (i % 2 == 0)
    assert steps[0][1]["grad_image"] > 0
    assert outcome.epochs_run == 2 and len(epochs) == 2
    assert "valid_ndcg@10" in epochs[0] and "train_mean_rho" in epochs[0]
    result = ev.evaluate(model.score, "test")
    assert np.isfinite(list(result.metrics.values())).all()


class _Crash(Exception):
    pass


def test_resume_continues_exactly(world):
    _, split, tmp = world
    straight, _, ev = _build(world, epochs=2)
    reference = straight.fit(split, ev, seed=2, progress=False)

    ckpt = tmp / "resume" / "checkpoint.pt"

    def crash(epoch, row):
        if epoch == 0:
            raise _Crash

    first, _, ev = _build(world, epochs=2)
    with pytest.raises(_Crash):
        first.fit(split, ev, seed=2, checkpoint=ckpt, progress=False, on_epoch=crash)
    assert ckpt.exists()
    second, _, ev = _build(world, epochs=2)
    outcome = second.fit(split, ev, seed=2, checkpoint=ckpt, resume=True, progress=False)
    assert outcome.resumed_from == 1
    # the same steps on the same pairs with the same optimizer, scheduler and RNG state; the
    # values agree to float32 rounding (measured: 1 ulp of the loss, ~1e-7 relative, after
    # resuming): the reloaded tensors sit at other addresses, and the CPU kernels' reductions
    # may then round differently
    assert [r["step"] for r in outcome.steps] == [r["step"] for r in reference.steps]
    assert [r["loss"] for r in outcome.steps] == pytest.approx(
        [r["loss"] for r in reference.steps], rel=1e-5)
    for (n, a), b in zip(straight.trainable_state().items(), second.trainable_state().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), n


def test_published_training_is_reused_and_sasrec_reads_its_table(world, monkeypatch):
    import methods.vlm2rec.train
    from benchmark import lifecycle

    data, split, _ = world
    handle, _, ev = _handle(world, epochs=1)
    first = lifecycle.train(handle, split, ev)
    table = handle.model.item_table().clone()
    again, _, ev = _handle(world, epochs=1, fresh_stages=False)

    def no_training(*args, **kwargs):
        raise AssertionError("the published training should have been reused")

    monkeypatch.setattr(methods.vlm2rec.train.ContrastiveTrainer, "fit", no_training)
    steps = []
    lifecycle.train(again, split, ev, on_step=lambda i, row: steps.append(row))
    assert again.training_key == handle.training_key and steps == first.steps
    assert torch.equal(again.model.item_table(), table)

    sr, _, sr_ev = _handle(world, "vlm2rec_sasrec", fresh_stages=False)
    lifecycle.train(sr, split, sr_ev)  # its stage: the published training, not retrained
    assert torch.equal(sr.model.item_embedding.frozen, table.cpu())
    assert sr.stage.training_key == handle.training_key
    scores = sr.model.full_sort_predict(_interaction(sr.model, sr_ev))
    assert scores.shape == (12, data.n_items) and torch.isfinite(scores).all()


def _interaction(model, ev):
    from recbole.data.interaction import Interaction

    users, seq, lens = ev.inputs(ev.cases("test"), 0, 12)
    return Interaction({model.USER_ID: users, model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lens})


def test_sasrec_trains_the_stage_when_none_is_published(world):
    from benchmark import lifecycle

    _, split, _ = world
    sr, _, ev = _handle(world, "vlm2rec_sasrec")
    assert sr.model.item_embedding.frozen.abs().sum() == 0
    lifecycle.train(sr, split, ev)
    assert sr.model.item_embedding.frozen.abs().sum() > 0 and sr.stage.outcome.steps
    assert (sr.run_dir / "stage" / "adapter_model.safetensors").is_file()


def test_modality_dropout_at_test_time(world):
    model, _, ev = _build(world)
    both = _scores(model, ev)
    model.set_input_modalities(("text",))
    text_only = _scores(model, ev)
    model.set_input_modalities(("image",))
    image_only = _scores(model, ev)
    assert not torch.equal(both, text_only) and not torch.equal(both, image_only)
    for s in (text_only, image_only):
        assert torch.isfinite(s[:, 1:]).all()


def test_runner_trains_through_fit_and_stores_the_adapter_only(world, tmp_path):
    from benchmark.config import DatasetEntry, Suite
    from benchmark.runner import Options, run_suite

    data, _, tmp = world
    suite = Suite(name="t", datasets=[DatasetEntry(str(data.root))], models=["vlm2rec"],
                  seeds=[0], preset="tiny", params={**SMALL, "epochs": 1})
    rows = run_suite(suite, Options(results_dir=tmp_path, tracking=False, progress=False,
                                    cache_dir=tmp / "runner-cache"))
    assert rows[0]["status"] == "ok" and rows[0]["epochs"] == 1
    from safetensors.torch import load_file

    state = load_file(Path(rows[0]["run_dir"]) / "weights" / "adapter_model.safetensors")
    assert state and all("lora" in k for k in state)


DDP_SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist

    from benchmark.data.dataset import load_dataset
    from benchmark.evaluation import Evaluator
    from benchmark.registry import get_model_spec
    from benchmark.lifecycle import build_model
    from benchmark.split import make_split
    from methods.vlm2rec.model import tensor_hash

    root, cache, out = map(Path, sys.argv[1:4])
    data = load_dataset(root)
    split = make_split(data)
    spec = get_model_spec("vlm2rec")
    params = spec.resolve("tiny", {SMALL})
    model = build_model(spec, params, data, out / "run", 0, "cpu", split, cache_dir=cache).model
    ev = Evaluator(split, data.n_items, params["MAX_ITEM_LIST_LENGTH"])
    outcome = model.fit(split, ev, seed=0, checkpoint=out / "checkpoint.pt", progress=False)
    rank = dist.get_rank()
    (out / f"rank{{rank}}.txt").write_text(
        f"{{dist.get_world_size()}} {{tensor_hash(model.trainable_state())}} "
        f"{{len(outcome.steps)}}")
''')


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_with_identical_adapters(world, tmp_path):
    data, _, _ = world
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(SMALL=repr({**SMALL, "epochs": 1})))
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", port, str(script), str(data.root), str(cache),
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert ranks[0][0] == "2" and ranks[0][1] == ranks[1][1]
    # each rank took the steps of its half of the pairs
    from methods.vlm2rec.train import training_pairs

    _, split, _ = world
    n_pairs = len(training_pairs(split, SMALL["pairs_per_user"]))
    assert int(ranks[0][2]) == math.ceil(math.ceil(n_pairs / 2) / SMALL["batch_size"])
