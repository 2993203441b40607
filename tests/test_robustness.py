"""Robustness (test-time perturbations) and modality diagnostics on a tiny synthetic dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.data.dataset import Dataset, load_dataset
from benchmark.data.synthetic import SyntheticConfig, generate_synthetic
from benchmark.diagnostics import (
    alignment,
    effective_rank,
    linear_cka,
    relational_kl,
    uniformity,
)
from benchmark.encoders.cache import EmbeddingCache, cache_key
from benchmark.encoders.inputs import ItemInputs, selected_items
from benchmark.robustness import NAMES, perturbation_spec

SMALL = SyntheticConfig(n_users=150, n_items=80, image_size=16, seq_len=(5, 10))
KNOBS = ["--data-option", "n_users=150", "--data-option", "n_items=80",
         "--data-option", "image_size=16", "--data-option", "seq_len=[5, 10]"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Dataset:
    return load_dataset(generate_synthetic(tmp_path_factory.mktemp("synth"), SMALL))


def _inputs(data: Dataset, modality: str, spec: dict | None) -> list:
    inputs = ItemInputs(data, modality, spec)
    out = []
    for i in range(1, data.n_items):
        v = inputs(i)
        out.append(None if v is None else v if isinstance(v, str) else np.asarray(v))
    return out


def _changed(a: list, b: list) -> set[int]:
    def same(x, y) -> bool:
        if x is None or y is None:
            return x is y
        return x == y if isinstance(x, str) else np.array_equal(x, y)

    return {i + 1 for i, (x, y) in enumerate(zip(a, b)) if not same(x, y)}


# perturbations that change every selected input of these data for sure
STRICT = {"drop_image", "drop_text", "image_noise", "image_blur", "image_jpeg", "word_shuffle"}


@pytest.mark.parametrize("name", NAMES)
def test_each_perturbation_changes_exactly_the_seeded_share(synth, name):
    spec = perturbation_spec(name, 0.5, seed=3)
    modality = "image" if "image" in name or name == "modality_swap" else "text"
    other = "text" if modality == "image" else "image"
    clean = _inputs(synth, modality, None)
    perturbed = _inputs(synth, modality, spec)
    selected = set(selected_items(synth.n_items, 0.5, 3).tolist())
    assert len(selected) == round(0.5 * (synth.n_items - 1))
    changed = _changed(clean, perturbed)
    assert changed <= selected and len(changed) >= 0.5 * len(selected)
    if name in STRICT:
        assert changed == selected
    assert not _changed(perturbed, _inputs(synth, modality, spec))  # deterministic
    assert not _changed(_inputs(synth, other, None), _inputs(synth, other, spec))  # other intact
    assert set(selected_items(synth.n_items, 0.25, 3).tolist()) <= selected  # nested rates
    assert selected != set(selected_items(synth.n_items, 0.5, 4).tolist())  # seeded
    assert perturbation_spec(name, 0.0) is None  # rate 0 = the clean inputs (clean cache key)


def test_perturbed_inputs_get_their_own_cache_key():
    base = {"encoder": "e", "checkpoint": "c", "preprocessing": {}, "modality": "image",
            "dataset": "d"}
    keys = {cache_key(**base, perturbation=None),
            cache_key(**base, perturbation=perturbation_spec("drop_image", 0.5)),
            cache_key(**base, perturbation=perturbation_spec("drop_image", 1.0)),
            cache_key(**base, perturbation=perturbation_spec("drop_image", 1.0, seed=1)),
            cache_key(**base, perturbation=perturbation_spec("image_noise", 1.0))}
    assert len(keys) == 5


# -- diagnostics math --------------------------------------------------------------------------

def test_diagnostics_math():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    assert linear_cka(x, x) == pytest.approx(1.0)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)  # invariant to rotation and scale
    assert linear_cka(x, rng.normal(size=(50, 8))) < 0.5
    assert effective_rank(np.eye(16)) == pytest.approx(16.0)
    assert effective_rank(np.outer(np.ones(10), rng.normal(size=6))) == pytest.approx(1.0)
    assert alignment(x, 2.0 * x) == pytest.approx(0.0, abs=1e-12)
    assert alignment(x, -x) == pytest.approx(4.0)
    collapsed = np.tile([[1.0, 0.0]], (20, 1))
    assert uniformity(collapsed) == pytest.approx(0.0, abs=1e-9)
    assert uniformity(rng.normal(size=(200, 8))) < -2.0  # spread out: much lower
    assert relational_kl(x, x) == pytest.approx(0.0, abs=1e-5)
    assert relational_kl(x, rng.normal(size=(50, 8))) > 0.0


# -- end to end through the CLI ----------------------------------------------------------------

def _cli_args(tmp, epochs: int, *extra: str) -> list[str]:
    """The options of a small, untracked run on the tiny synthetic dataset under ``tmp``."""
    return ["--dataset", "synthetic", *KNOBS, "--seeds", "0", "--epochs", str(epochs),
            "--results-dir", str(tmp / "results"), "--data-dir", str(tmp / "data"),
            "--no-tracking", "-q", *extra]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", str(tmp / "cache"))
        # train_candidates=all: the official losses (the verdict rule's branches are tested on
        # constructed cases and on planted models in tests/test_verdicts.py)
        common = _cli_args(tmp, 2, "--set", "train_candidates=all")
        assert main(["robustness", "--drop-image", "--rates", "0,1",
                     "--models", "mostpop,sasrec,unisrec,clip_sasrec", *common]) == 0
        rob = json.loads((tmp / "results/accuracy/robustness.json").read_text())
        assert main(["diagnose", "accuracy", "--models", "sasrec,unisrec,clip_sasrec",
                     *common]) == 0
    return tmp, rob


def _metrics(rows: list[dict], model: str, perturbation: str, rate: float) -> dict:
    (row,) = [r for r in rows if r["model"] == model and r["perturbation"] == perturbation
              and r["rate"] == rate]
    return row["metrics"]


def test_cli_robustness_rows_and_expected_pattern(bench_run):
    tmp, rob = bench_run
    rows = rob["rows"]
    assert {(r["model"], r["rate"]) for r in rows if r["perturbation"] == "drop_image"} == {
        (m, x) for m in ("mostpop", "sasrec", "unisrec", "clip_sasrec") for x in (0.0, 1.0)}
    for r in rows:
        assert {"model", "perturbation", "rate", "metrics", "dataset", "seed"} <= set(r)
        assert r["dataset"] == "synthetic" and r["seed"] == 0 and "ndcg@10" in r["metrics"]
        ranks = np.load(tmp / "results/accuracy" / r["ranks"])
        assert len(ranks["test_ranks"]) == len(ranks["test_users"]) > 0
    summary = json.loads((tmp / "results/accuracy/summary.json").read_text())["rows"]
    for s in summary:  # rate 0 = the stored run's clean test metrics
        assert _metrics(rows, s["model"], "drop_image", 0.0) == pytest.approx(s["test"])
    for model in ("mostpop", "sasrec", "unisrec"):  # no image read: identical metrics
        assert (_metrics(rows, model, "drop_image", 1.0)
                == _metrics(rows, model, "drop_image", 0.0))
    assert (_metrics(rows, "clip_sasrec", "drop_image", 1.0)
            != _metrics(rows, "clip_sasrec", "drop_image", 0.0))
    # the perturbed embeddings were encoded and cached under their own key
    cache = EmbeddingCache(tmp / "cache")
    metas = [cache.load(p.stem).meta for p in (tmp / "cache" / "embeddings").glob("*.npz")]
    dropped = [m for m in metas if m.get("perturbation") and m["modality"] == "image"]
    clean = [m for m in metas if not m.get("perturbation") and m["modality"] == "image"]
    assert dropped and clean and {m["key"] for m in dropped}.isdisjoint(m["key"] for m in clean)


def test_cli_diagnose_writes_verdicts(bench_run):
    tmp, _ = bench_run
    doc = json.loads((tmp / "results/accuracy/diagnostics.json").read_text())
    by_model = {e["model"]: e for e in doc["models"]}
    assert set(by_model) == {"sasrec", "unisrec", "clip_sasrec"}
    for e in doc["models"]:
        assert e["status"] in ("pass", "warn", "fail") and e["verdict"]
        assert all(isinstance(v, float) for v in e["metrics"].values())
        assert all(isinstance(v, list) for v in e["series"].values())
    # an ID-only model: removing either modality changes no rank, so no effect is detected
    assert (by_model["sasrec"]["outcome"], by_model["sasrec"]["status"]) == (
        "content ignored", "pass")
    assert by_model["sasrec"]["verdict"].startswith("content ignored")
    # UniSRec reads no image: identical ranks without images, a contribution of exactly 0
    image = by_model["unisrec"]["evidence"]["image"]
    assert image["state"] == "none" and image["contribution"] == [0.0]
    assert image["p_holm"] == 1.0 and image["cell"] == "signal=visual,target=cold"
    assert by_model["unisrec"]["metrics"]["image_contribution"] == 0.0
    # one seed: a verdict per (dataset, model) too, with its evidence
    verdicts = {v["model"]: v for v in doc["verdicts"]}
    assert set(verdicts) == set(by_model) and doc["schema"] == 2
    for m, v in verdicts.items():
        assert v["seeds"] == [0] and v["outcome"] == by_model[m]["outcome"]
        assert "one seed" in v["verdict"]
        for e in v["modalities"].values():
            assert {"cell", "n_users", "clean", "without", "contribution", "contribution_ci",
                    "p_holm", "p_holm_seeds", "state"} <= set(e)
    clip = by_model["clip_sasrec"]["metrics"]
    assert {"cka_image_text", "relational_kl_image_text", "image_effective_rank",
            "text_uniformity", "alignment_image_text"} <= set(clip)
    # the robustness rows of the dropout test were added next to the earlier ones
    rob = json.loads((tmp / "results/accuracy/robustness.json").read_text())["rows"]
    assert any(r["perturbation"] == "drop_text" and r["rate"] == 1.0 for r in rob)


def test_unknown_perturbation_and_no_flag_are_user_errors(tmp_path, capsys):
    assert main(["robustness", "--results-dir", str(tmp_path), "--no-tracking"]) == 2
    assert "--drop-image" in capsys.readouterr().err
    with pytest.raises(Exception, match="unknown perturbation"):
        perturbation_spec("nope", 0.5)


def test_help_lists_the_new_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "robustness" in out and "diagnose" in out


def test_train_time_option_runs_a_derived_suite(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    results = tmp_path / "results"
    assert main(["robustness", "--drop-text", "--rates", "0,1", "--train-time",
                 "--models", "mostpop,sasrec", "--dataset", "synthetic", *KNOBS, "--seeds", "0",
                 "--epochs", "1", "--results-dir", str(results),
                 "--data-dir", str(tmp_path / "data"), "--no-tracking", "-q"]) == 0
    rows = json.loads((results / "accuracy/robustness.json").read_text())["rows"]
    # a rerun (test time only) evaluates nothing again and keeps the train-time rows
    assert main(["robustness", "--drop-text", "--rates", "0,1", "--models", "mostpop,sasrec",
                 "--dataset", "synthetic", *KNOBS, "--seeds", "0", "--epochs", "1",
                 "--results-dir", str(results), "--data-dir", str(tmp_path / "data"),
                 "--no-tracking", "-q"]) == 0
    assert json.loads((results / "accuracy/robustness.json").read_text())["rows"] == rows
    train = [r for r in rows if r["perturbation"] == "drop_text+train"]
    assert {(r["model"], r["rate"]) for r in train} == {
        (m, x) for m in ("mostpop", "sasrec") for x in (0.0, 1.0)}
    config = json.loads((results / "accuracy-train-drop_text@1/runs/synthetic/sasrec/seed-0"
                         / "config.json").read_text())
    assert config["perturbation"] == perturbation_spec("drop_text", 1.0)
    for model in ("mostpop", "sasrec"):  # no text read, same seed: the same accuracy
        assert (_metrics(train, model, "drop_text+train", 1.0)
                == pytest.approx(_metrics(train, model, "drop_text+train", 0.0)))


# -- models that read raw content themselves (VLM2Rec) ----------------------------------------

def test_raw_content_perturbation_matches_the_encoder_inputs(synth):
    """VLM2Rec's perturbed content: the same items and the same perturbed inputs as every
    encoder sees (one implementation), images decoded only when opened."""
    from benchmark.encoders.inputs import PerturbedImage, perturbed_content

    texts = [synth.item_text(i) or None for i in range(synth.n_items)]
    paths = [synth.image_path(i) for i in range(synth.n_items)]
    for name in ("drop_image", "drop_text", "typos", "image_noise", "modality_swap"):
        spec = perturbation_spec(name, 0.5, seed=3)
        new_texts, new_images = perturbed_content(synth, spec, texts, paths)
        modality = "text" if name in ("drop_text", "typos") else "image"
        chosen = set(selected_items(synth.n_items, 0.5, 3).tolist())
        reference = ItemInputs(synth, modality, spec)
        for i in range(1, synth.n_items):
            if modality == "text":
                assert new_images[i] == paths[i]
                assert new_texts[i] == (reference(i) if i in chosen else texts[i])
                continue
            assert new_texts[i] == texts[i]
            if i not in chosen:
                assert new_images[i] == paths[i]
            elif name == "drop_image":
                assert new_images[i] is None
            else:
                assert isinstance(new_images[i], PerturbedImage)
                assert str(new_images[i]) != str(paths[i])  # its own embedder cache key
                opened, expected = new_images[i].open(), reference(i)
                assert (opened is None) == (expected is None)
                if expected is not None:
                    assert np.array_equal(np.asarray(opened), np.asarray(expected))
    assert perturbed_content(synth, None, texts, paths) == (texts, paths)


@pytest.fixture(scope="module")
def vlm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vlm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", str(tmp / "cache"))
        common = _cli_args(tmp, 1, "--models", "vlm2rec,vlm2rec_sasrec")
        assert main(["robustness", "--drop-image", "--image-noise", "--rates", "0,1",
                     *common]) == 0
        assert main(["diagnose", "accuracy", *common]) == 0
        assert main(["robustness", "--drop-text", "--rates", "0,1", "--train-time",
                     *common]) == 0
    return tmp


def test_perturbations_reach_models_that_read_raw_content(vlm_run):
    tmp = vlm_run
    doc = json.loads((tmp / "results/accuracy/robustness.json").read_text())
    assert doc["skipped"] == []
    rows = doc["rows"]
    summary = json.loads((tmp / "results/accuracy/summary.json").read_text())["rows"]
    for s in summary:  # rate 0 re-encodes the clean content: the stored run's metrics
        assert _metrics(rows, s["model"], "drop_image", 0.0) == pytest.approx(s["test"])
    for model in ("vlm2rec", "vlm2rec_sasrec"):
        clean = next(r for r in rows if r["model"] == model and r["rate"] == 0.0)
        base = np.load(tmp / "results/accuracy" / clean["ranks"])["test_ranks"]
        for name in ("drop_image", "image_noise"):
            (row,) = [r for r in rows if r["model"] == model and r["perturbation"] == name
                      and r["rate"] == 1.0]
            ranks = np.load(tmp / "results/accuracy" / row["ranks"])["test_ranks"]
            assert not np.array_equal(ranks, base), (model, name)


def test_raw_content_model_never_reuses_clean_embeddings(vlm_run):
    """A trained VLM2Rec rebuilt under a perturbation gets its own table key; exactly the
    perturbed items' embeddings change."""
    from benchmark.encoders.inputs import selected_items
    from benchmark.lifecycle import load_run

    tmp = vlm_run
    (root,) = (tmp / "data").glob("synthetic-*")
    data = load_dataset(root)
    run_dir = tmp / "results/accuracy/runs/synthetic/vlm2rec/seed-0"
    tables, keys = {}, {}
    for label, perturbation in (("clean", None),
                                ("noisy", perturbation_spec("image_noise", 0.5, seed=1))):
        model = load_run(run_dir, data_dir=tmp / "data", cache_dir=tmp / "cache",
                         perturbation=perturbation).model
        keys[label], tables[label] = model.table_key(), model.item_table().numpy()
    assert keys["clean"] != keys["noisy"]
    changed = set(np.flatnonzero(~np.isclose(tables["clean"], tables["noisy"]).all(1)).tolist())
    with_image = {i for i in range(1, data.n_items) if data.image_path(i) is not None}
    assert changed == set(selected_items(data.n_items, 0.5, 1).tolist()) & with_image


def test_diagnose_covers_models_that_read_raw_content(vlm_run):
    tmp = vlm_run
    doc = json.loads((tmp / "results/accuracy/diagnostics.json").read_text())
    by_model = {e["model"]: e for e in doc["models"]}
    assert set(by_model) == {"vlm2rec", "vlm2rec_sasrec"}
    for e in by_model.values():
        assert not e["verdict"].startswith("not diagnosed")
        assert set(e["evidence"]) == {"image", "text"}  # the dropout test reached both
        assert {"image_p_holm", "text_p_holm", "cka_image_text",
                "cka_fused_text", "cka_fused_image", "image_effective_rank",
                "relational_kl_image_text"} <= set(e["metrics"])
    # VLM2Rec's per-step series: unimodal in-batch retrieval and probed gradient norms
    training = by_model["vlm2rec"]["training"]
    n = len(training["step"])
    assert n > 0 and all(len(training[k]) == n for k in ("p_text", "p_image", "rho"))
    probed = [v for v in training["grad_image"] if v is not None]
    assert probed and all(v > 0 for v in probed)
    assert [v is None for v in training["grad_text"]] == [v is None
                                                          for v in training["grad_image"]]
    for name in ("diagnostics", "diagnostics-training"):  # the plots bench diagnose writes
        png = tmp / "results/accuracy/diagnostics" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_time_perturbation_trains_raw_content_models_on_perturbed_inputs(vlm_run):
    tmp = vlm_run
    rows = json.loads((tmp / "results/accuracy/robustness.json").read_text())["rows"]
    train = {(r["model"], r["rate"]): r for r in rows if r["perturbation"] == "drop_text+train"}
    assert set(train) == {(m, x) for m in ("vlm2rec", "vlm2rec_sasrec") for x in (0.0, 1.0)}
    derived = tmp / "results/accuracy-train-drop_text@1/runs/synthetic"
    for model in ("vlm2rec", "vlm2rec_sasrec"):
        result = json.loads((derived / model / "seed-0/result.json").read_text())
        assert result["provenance"]["config"]["perturbation"]["name"] == "drop_text"
        assert train[(model, 1.0)]["metrics"] != train[(model, 0.0)]["metrics"]
    # the stage trained on text-less items is its own stage, not the clean one reused
    clean = json.loads((tmp / "results/accuracy/runs/synthetic/vlm2rec_sasrec/seed-0/result.json")
                       .read_text())["provenance"]["content"]["stage"]["training_key"]
    perturbed = json.loads((derived / "vlm2rec_sasrec/seed-0/result.json").read_text())
    assert perturbed["provenance"]["content"]["stage"]["training_key"] != clean


def test_robustness_and_diagnose_run_a_suite_of_variants(tmp_path, monkeypatch):
    """Every suite works with every command: the vlm2rec-ablation suite's models are variants
    of `vlm2rec` (registered only in the suite), and robustness and diagnose load their runs."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    common = _cli_args(tmp_path, 1, "--models", "vlm2rec-sft,vlm2rec-internal")
    assert main(["robustness", "--suite", "vlm2rec-ablation", "--drop-image", "--rates", "0,1",
                 *common]) == 0
    assert main(["diagnose", "vlm2rec-ablation", *common]) == 0
    suite_dir = tmp_path / "results/vlm2rec-ablation"
    rows = json.loads((suite_dir / "robustness.json").read_text())["rows"]
    assert {(r["model"], r["rate"]) for r in rows} == {
        (m, x) for m in ("vlm2rec-sft", "vlm2rec-internal") for x in (0.0, 1.0)}
    doc = json.loads((suite_dir / "diagnostics.json").read_text())
    assert {e["model"] for e in doc["models"]} == {"vlm2rec-sft", "vlm2rec-internal"}
    for e in doc["models"]:
        assert not e["verdict"].startswith("not diagnosed"), e
        assert "cka_image_text" in e["metrics"]
