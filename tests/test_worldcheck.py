"""The world check (benchmark/worldcheck.py) on hand-built summary rows, and the cold-first
control (baselines/controls.py) on a small synthetic world."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.worldcheck import (
    COLD_CELLS,
    EXPECTATIONS,
    format_world_check,
    random_ranking_se,
    suite_model_info,
    world_check,
)

S1 = sum(1 / math.log2(r + 2) for r in range(10))  # NDCG@10 gains of ranks 0..9
S2 = sum(1 / math.log2(r + 2) ** 2 for r in range(10))
CELLS = ("target=warm", "target=cold",
         *(f"signal={s},target={t}" for s in ("visual", "textual", "collaborative", "popularity")
           for t in ("warm", "cold")))
N_CASES = 200  # per cell
CHANCE = S1 / 100  # NDCG@10 of a random ranking among 100 candidates


def row(model: str, seed: int, overall: float, cells: dict[str, float] | None = None,
        default: float = CHANCE) -> dict:
    groups = {c: {"ndcg@10": (cells or {}).get(c, default)} for c in CELLS}
    return {"dataset": "synthetic", "model": model, "seed": seed, "status": "ok",
            "test": {"ndcg@10": overall}, "test_groups": groups,
            "test_group_sizes": dict.fromkeys(CELLS, N_CASES)}


def by_id(doc: dict) -> dict[str, dict]:
    return {e["id"]: e for e in doc["expectations"]}


def test_random_ranking_se_matches_the_closed_form():
    # a random ranking among n = 100 candidates: per case NDCG@10 = 1/log2(r+2) w.p. 1/100
    se = random_ranking_se(CHANCE, 400, 10, "ndcg@10")
    assert se == pytest.approx(math.sqrt((S2 / 100 - (S1 / 100) ** 2) / 400))
    # HR@10 among 50 candidates: a Bernoulli(0.2) per case
    assert random_ranking_se(0.2, 100, 10, "hr@10") == pytest.approx(math.sqrt(0.2 * 0.8 / 100))
    assert math.isnan(random_ranking_se(0.0, 100, 10, "ndcg@10"))


def test_above_is_a_paired_ci_over_seeds():
    rows = [row("mostpop", s, 0.040) for s in range(3)]
    rows += [row("sasrec", s, v) for s, v in enumerate([0.050, 0.052, 0.051])]
    check = by_id(world_check(rows, "synthetic"))["sasrec-above-mostpop"]
    assert check["status"] == "pass"
    (c,) = check["checks"]
    # differences 0.010, 0.012, 0.011: mean 0.011, sd 0.001, t(0.975, 2) = 4.303
    assert c["diff_mean"] == pytest.approx(0.011)
    assert c["diff_ci"] == pytest.approx(4.302653 * 0.001 / math.sqrt(3), rel=1e-5)
    assert c["values"] == [0.050, 0.052, 0.051] and c["reference_mean"] == pytest.approx(0.04)

    noisy = [r for r in rows if r["model"] == "mostpop"]
    noisy += [row("sasrec", s, v) for s, v in enumerate([0.030, 0.050, 0.040])]
    check = by_id(world_check(noisy, "synthetic"))["sasrec-above-mostpop"]
    assert check["status"] == "fail" and "sasrec on overall" in check["reason"]


def test_one_seed_is_a_plain_comparison_flagged_as_such():
    rows = [row("mostpop", 0, 0.040), row("sasrec", 0, 0.041)]
    (c,) = by_id(world_check(rows, "synthetic"))["sasrec-above-mostpop"]["checks"]
    assert c["status"] == "pass" and "one seed: no CI" in c["reason"]
    rows = [row("mostpop", 0, 0.040), row("sasrec", 1, 0.041)]
    (c,) = by_id(world_check(rows, "synthetic"))["sasrec-above-mostpop"]["checks"]
    assert c["status"] == "pass" and "no common seed" in c["reason"]


def test_at_chance_uses_the_random_ranking_noise_of_the_cell():
    z = 2.5758  # Bonferroni over the 5 cold cells of one model: 1 - 0.05 / 10
    band = z * random_ranking_se(CHANCE, N_CASES, 10, "ndcg@10") * math.sqrt(1 + 1 / 3)
    inside, outside = CHANCE + 0.9 * band, CHANCE + 1.1 * band
    rows = [row("random", s, CHANCE) for s in range(3)]
    rows += [row("sasrec", s, 0.05, {"signal=visual,target=cold": inside}) for s in range(3)]
    check = by_id(world_check(rows, "synthetic"))["id-only-at-chance-cold"]
    assert check["status"] == "pass"
    assert [c["cell"] for c in check["checks"]] == list(COLD_CELLS)
    assert check["checks"][1]["band"] == pytest.approx(band, rel=1e-4)

    rows = [r for r in rows if r["model"] == "random"]
    rows += [row("sasrec", s, 0.05, {"signal=visual,target=cold": outside}) for s in range(3)]
    check = by_id(world_check(rows, "synthetic"))["id-only-at-chance-cold"]
    assert check["status"] == "fail"
    assert check["reason"] == "failed: sasrec on signal=visual,target=cold"


def test_content_expectations_pick_models_by_modality():
    rows = [row(m, s, 0.05) for m in ("random", "coldfirst", "mostpop") for s in range(3)]
    # unisrec reads text (and ids): ranks cold textual cases, not cold visual ones
    rows += [row("unisrec", s, 0.06, {"signal=textual,target=cold": 0.2}) for s in range(3)]
    doc = world_check(rows, "synthetic")
    checks = by_id(doc)
    assert checks["text-only-above-coldfirst-cold-textual"]["status"] == "pass"
    assert checks["text-only-at-coldfirst-cold-visual"]["status"] == "pass"
    assert [c["model"] for c in checks["text-only-at-coldfirst-cold-visual"]["checks"]] == \
        ["unisrec"]
    assert checks["image-only-above-coldfirst-cold-visual"]["status"] == "skipped"
    assert checks["image-reader-above-sasrec-cold-visual"]["reason"] == "the suite lacks sasrec"
    assert checks["sasrec-above-cooc-warm"]["reason"] == "the suite lacks sasrec, cooc"
    assert checks["trained-above-mostpop"]["status"] == "pass"  # unisrec 0.06 > 0.05
    assert doc["counts"] == {
        "pass": sum(e["status"] == "pass" for e in doc["expectations"]),
        "fail": 0, "skipped": sum(e["status"] == "skipped" for e in doc["expectations"])}
    assert len(doc["expectations"]) == len(EXPECTATIONS)


def test_a_world_without_signal_cells_is_not_checked():
    rows = [{"dataset": "ml-100k", "model": "sasrec", "seed": 0, "test": {"ndcg@10": 0.1},
             "test_groups": {"target=cold": {"ndcg@10": 0.0}}, "test_group_sizes": {}}]
    doc = world_check(rows, "ml-100k")
    assert doc["applies"] is False and doc["expectations"] == []
    assert "not applicable" in format_world_check(doc)
    assert world_check([row("sasrec", 0, 0.1)], "other-dataset")["applies"] is False


def test_format_shows_every_expectation_and_failure():
    rows = [row("random", s, CHANCE) for s in range(2)]
    rows += [row("coldfirst", s, 0.09, {"target=cold": 0.2}) for s in range(2)]
    doc = world_check(rows, "synthetic")
    text = format_world_check(doc)
    assert text.splitlines()[0].startswith("world check (synthetic, ndcg@10, seeds [0, 1]): ")
    assert "FAIL    coldfirst-at-chance-cold" in text
    assert "fail    coldfirst target=cold: 0.2000 ± 0.0000 vs random" in text
    assert "FAIL    coldfirst-at-chance-overall" in text
    assert all(e["id"] in text for e in doc["expectations"])


def test_suite_variant_declares_its_modalities():
    from benchmark.config import parse_suite

    suite = parse_suite({"name": "s", "datasets": ["synthetic"], "seeds": [0],
                         "models": ["sasrec", "coldfirst", "clip_sasrec"]})
    info = suite_model_info(suite)
    assert info["sasrec"] == {"modalities": ("id",), "trainable": True, "role": "model"}
    assert info["coldfirst"] == {"modalities": (), "trainable": False, "role": "control"}
    floors = parse_suite({"name": "f", "datasets": ["synthetic"], "seeds": [0],
                          "models": ["mostpop", "random", "cooc"]})
    assert {i["role"] for i in suite_model_info(floors).values()} == {"floor"}
    suite.variants["clip_sasrec-text"] = {"model": "clip_sasrec",
                                          "params": {"modalities": "text"}}
    suite.models.append("clip_sasrec-text")
    assert suite_model_info(suite)["clip_sasrec-text"]["modalities"] == ("text",)


# -- the cold-first control -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    from benchmark.data.dataset import load_dataset
    from benchmark.data.synthetic import SyntheticConfig, generate_synthetic
    from benchmark.split import make_split

    tmp = tmp_path_factory.mktemp("coldfirst")
    config = SyntheticConfig(n_users=300, n_items=120, seq_len=(5, 10), image_size=16)
    data = load_dataset(generate_synthetic(tmp / "data", config))
    return data, make_split(data), tmp


def coldfirst(small_world):
    from benchmark.lifecycle import build_model, train
    from benchmark.registry import get_model_spec

    data, split, tmp = small_world
    spec = get_model_spec("coldfirst")
    assert spec.role == "control" and not spec.trainable and "CONTROL" in spec.description
    handle = build_model(spec, spec.resolve(), data, tmp / "run", 0, "cpu", split)
    assert train(handle, split, None) is None  # statistics only: the harness's counting path
    return handle.model


def test_coldfirst_scores_exactly_the_never_trained_items(small_world):
    data, split, _ = small_world
    model = coldfirst(small_world)
    never = split.train_item_counts(data.n_items) == 0
    never[0] = False
    assert never.sum() > 0
    assert model.cold.tolist() == never.astype(float).tolist()


def test_coldfirst_is_exactly_at_chance_on_cold_cells(small_world):
    """Under tie expectation and the cold-start protocol (the evaluator of issue 11), a cold
    target ranks among its never-trained, non-history candidates, all tied: exact chance."""
    from benchmark.evaluation import EvalResult, Evaluator

    if "ties" not in EvalResult.__dataclass_fields__:
        pytest.skip("the evaluator does not score ties by their expectation yet")
    from recbole.data.interaction import Interaction

    data, split, _ = small_world
    model = coldfirst(small_world)
    labels = {"signal": data.inter_fields["signal"]}
    ev = Evaluator(split, data.n_items, 20, case_labels=labels)

    def score(users, seq, lens):
        return model.full_sort_predict(Interaction(
            {model.USER_ID: users, model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lens}))

    res = ev.evaluate(score, "test")
    never = split.train_item_counts(data.n_items) == 0
    never[0] = False
    signal = np.asarray(labels["signal"], dtype=object)[split.test.row]
    expected: dict[str, list[float]] = {}
    for u, p, s in zip(split.test.user, split.test.pos, signal):
        target = split.sequences[u][p]
        if not never[target]:
            continue
        history = set(split.sequences[u][:p].tolist()) - {target}
        n = int(never.sum()) - len(history & set(np.flatnonzero(never).tolist()))
        chance = sum(1 / math.log2(r + 2) for r in range(min(10, n))) / n
        for cell in ("target=cold", f"signal={s},target=cold"):
            expected.setdefault(cell, []).append(chance)
    assert expected
    for cell, values in expected.items():
        assert res.groups[cell]["ndcg@10"] == pytest.approx(np.mean(values), abs=1e-12), cell


# -- one training-candidate rule per suite ---------------------------------------------------------
def test_the_default_suite_sets_one_training_candidate_rule():
    from benchmark.config import load_suite

    suite = load_suite("accuracy")
    rules = {m: suite.spec(m).resolve(suite.preset, suite.model_overrides(m))
             .get("train_candidates") for m in suite.models}
    assert {r for r in rules.values() if r is not None} == {"seen"}, rules
    assert rules["sasrec"] == "seen"  # the registry default stays RecBole's "all"
    # the rule does not stop a run of a subset of models that lacks the parameter
    from benchmark.config import parse_suite

    subset = parse_suite({"name": "s", "datasets": ["synthetic"], "seeds": [0],
                          "models": ["mostpop"], "params": {"train_candidates": "seen"}})
    assert subset.model_overrides("mostpop") == {}


def test_the_rule_is_recorded_in_each_run_card(tmp_path):
    from benchmark.config import parse_suite
    from benchmark.io import read_json
    from benchmark.runner import Options, run_suite

    suite = parse_suite({
        "name": "rule", "models": ["sasrec", "mostpop"], "seeds": [0], "preset": "tiny",
        "datasets": [{"name": "synthetic", "options": {
            "n_users": 40, "n_items": 40, "seq_len": [5, 8], "image_size": 16}}],
        "params": {"train_candidates": "seen", "epochs": 1}})
    rows = run_suite(suite, Options(results_dir=tmp_path / "r", data_dir=tmp_path / "d",
                                    tracking=False, progress=False))
    cards = {r["model"]: read_json(tmp_path / "r" / "rule" / "runs" / "synthetic" / r["model"]
                                   / "seed-0" / "result.json")["provenance"] for r in rows}
    assert cards["sasrec"]["config"]["params"]["train_candidates"] == "seen"
    assert "train_candidates" not in cards["mostpop"]["config"]["params"]  # it has no softmax
