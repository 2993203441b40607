"""Modality verdicts with evidence: the rule's branches on constructed per-user cases, and the
planted-collapse validation (planted models trained on the synthetic world)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from verdict_helpers import planted_cases

from benchmark.diagnostics import (
    collapse_verdict,
    contribution,
    modality_evidence,
    modality_state,
)
from benchmark.errors import ConfigError


def _verdict(image: list[float], text: list[float], declared=("image", "text")):
    evidence = modality_evidence({"image": planted_cases(image, seed=1),
                                  "text": planted_cases(text, seed=2)},
                                 n_resamples=2000)
    return (*collapse_verdict(evidence, declared), evidence)


def test_contribution_is_signed_and_never_clamped():
    assert contribution(0.2, 0.05) == pytest.approx(0.75)
    assert contribution(0.2, 0.3) == pytest.approx(-0.5)  # removing it helps: negative
    assert contribution(0.0, 0.1) is None


def test_state_branches():
    assert modality_state(True, 0.1, [0.05, 0.15]) == "used"
    assert modality_state(True, -0.1, [-0.15, -0.05]) == "hurts"
    assert modality_state(False, 0.0, [-0.01, 0.01]) == "none"
    assert modality_state(True, 0.1, [-0.05, 0.25]) == "inconclusive"  # seeds disagree
    assert modality_state(False, 0.1, [0.05, 0.15]) == "inconclusive"  # users do not show it
    assert modality_state(True, 0.1, None) == "used"  # one seed: the test alone
    assert modality_state(False, 0.1, None) == "none"


def test_uses_both_and_collapse_verdicts():
    outcome, status, sentence, ev = _verdict([0.1] * 3, [0.15] * 3)
    assert (outcome, status) == ("uses both", "pass")
    assert ev["image"]["state"] == ev["text"]["state"] == "used"
    assert "3 seeds" in sentence
    # a model given both modalities that ignores images: a failure
    outcome, status, _, ev = _verdict([0, 0, 0], [0.15] * 3)
    assert (outcome, status) == ("collapsed onto text", "fail")
    assert ev["image"]["contribution"] == [0.0] * 3 and ev["image"]["p_holm"] == 1.0
    # the same evidence for a model given text only: a collapse by design
    assert collapse_verdict(ev, ("text", "id"))[:2] == ("collapsed onto text", "warn")
    outcome, status, _, _ = _verdict([0.1] * 3, [0, 0, 0], declared=("image",))
    assert (outcome, status) == ("collapsed onto image", "warn")


def test_content_ignored():
    outcome, status, sentence, ev = _verdict([0, 0, 0], [0, 0, 0], declared=("id",))
    assert (outcome, status) == ("content ignored", "pass")
    assert "given no content modality" in sentence
    assert collapse_verdict(ev, ("image", "text"))[:2] == ("content ignored", "warn")


def test_images_hurt_with_a_negative_contribution():
    outcome, status, sentence, ev = _verdict([-0.1] * 3, [0.15] * 3)
    assert (outcome, status) == ("images hurt", "fail")
    image = ev["image"]
    assert image["state"] == "hurts" and image["contribution_mean"] < 0
    assert image["contribution_ci"][1] < 0  # the whole interval over seeds is negative
    by_hand = [(c - w) / c for c, w in zip(image["clean"], image["without"])]
    assert image["contribution"] == pytest.approx(by_hand)
    assert ev["text"]["state"] == "used" and "image hurts" in sentence
    assert _verdict([0.1] * 3, [-0.1] * 3)[:2] == ("text hurts", "fail")


def test_inconclusive_when_seeds_disagree():
    # a clear effect over users when pooled, but one seed goes the other way: the interval
    # over seeds spans 0
    outcome, status, _, ev = _verdict([0.15, 0.15, -0.05], [0.15] * 3)
    assert ev["image"]["p_holm"] <= 0.05
    low, high = ev["image"]["difference_ci"]
    assert low < 0 < high
    assert (outcome, status) == ("inconclusive", "warn")


def test_holm_over_the_two_modalities_and_one_seed():
    ev = modality_evidence({"image": planted_cases([0.03], seed=1),
                            "text": planted_cases([0], seed=2)},
                           n_resamples=2000)
    image = ev["image"]
    # Holm over two tests: the smaller p-value doubles (each test separately, capped at 1)
    assert image["p_holm"] == pytest.approx(max(min(1, 2 * image["p_ttest"]),
                                                min(1, 2 * image["p_permutation"])))
    assert ev["text"]["p_holm"] == 1.0
    assert image["difference_ci"] is None and image["contribution_ci"] is None
    assert image["p_holm_seeds"] == [image["p_holm"]]  # one seed: the same test
    sentence = collapse_verdict(ev, ("image", "text"))[2]
    assert "one seed" in sentence and "training noise not measured" in sentence


def test_bad_input_is_refused():
    with pytest.raises(ConfigError, match="alpha"):
        modality_evidence({"image": planted_cases([0.1])}, alpha=1.5)
    with pytest.raises(ValueError, match="aligned"):
        modality_evidence({"image": {0: (np.zeros(3), np.zeros(4))}})
    with pytest.raises(ValueError, match="unknown modality"):
        collapse_verdict({"audio": {}})


def test_cli_refuses_a_bad_alpha_before_any_work(tmp_path, capsys):
    from benchmark.cli import main

    results = tmp_path / "results"
    assert main(["diagnose", "accuracy", "--alpha", "1.5", "--models", "sasrec",
                 "--results-dir", str(results), "--data-dir", str(tmp_path / "data"),
                 "--no-tracking", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "alpha must be in (0, 1)" in err and len(err.splitlines()) == 1
    assert not results.exists()  # nothing trained or written


# -- planted collapse -------------------------------------------------------------------------

#: written before any planted model was trained with this rule: what the verdict must say
PLANTED = {
    "clip_sasrec-text": "collapsed onto text",    # reads text only (image: learned vector)
    "clip_sasrec-image": "collapsed onto image",  # reads images only
    "clip_sasrec": "uses both",                   # reads both
    "sasrec": "content ignored",                  # ID only
}
PLANTED_STATUS = {"clip_sasrec-text": "warn", "clip_sasrec-image": "warn", "clip_sasrec": "pass",
                  "sasrec": "pass"}
# A smaller world than the default (600 users instead of 2,000, 3 epochs instead of up to 50), with
# more of its test cases on the cells the verdict reads: cold targets drawn with probability 0.8
# (the default, 0.4, would halve the cold cells; under the cold-start protocol the rate changes
# no cold-cell chance level) and visual and textual rules at 0.35 each (0.25 by default). Measured
# (3 seeds): cold visual 168 and cold textual 173 test cases; every planted verdict held with the
# pooled Holm p-values at the permutation test's floor (2e-4) and each seed's below 0.006.
PLANTED_WORLD = {"n_users": 600, "cold_target_rate": 0.8, "s_v": 0.35, "s_t": 0.35,
                 "s_cf": 0.15}
PLANTED_EPOCHS = 3


@pytest.mark.slow
@pytest.mark.corpus_clip
def test_planted_collapse_is_named_for_every_seed(tmp_path, monkeypatch):
    """The planted models of the default suite (CLIP-SASRec reading text only, images only or
    both, and the ID-only SASRec), trained on the synthetic world for 3 seeds: `bench diagnose`
    names each one's planted use of its modalities, over the seeds and in every seed alone."""
    from benchmark.cli import main

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    options = [x for k, v in PLANTED_WORLD.items() for x in ("--data-option", f"{k}={v}")]
    assert main(["diagnose", "accuracy", "--verdicts-only", "--models", ",".join(PLANTED),
                 "--dataset", "synthetic", *options, "--seeds", "0,1,2",
                 "--epochs", str(PLANTED_EPOCHS), "--results-dir", str(tmp_path / "results"),
                 "--data-dir", str(tmp_path / "data"), "--no-tracking", "-q"]) == 0
    suite_dir = tmp_path / "results" / "accuracy"
    doc = json.loads((suite_dir / "diagnostics.json").read_text())
    assert doc["schema"] == 2 and doc["alpha"] == 0.05
    verdicts = {v["model"]: v for v in doc["verdicts"]}
    got = {m: (v["outcome"], v["status"]) for m, v in verdicts.items()}
    assert got == {m: (PLANTED[m], PLANTED_STATUS[m]) for m in PLANTED}, got
    per_seed = {(e["model"], e["seed"]): e["outcome"] for e in doc["models"]}
    assert per_seed == {(m, s): PLANTED[m] for m in PLANTED for s in (0, 1, 2)}, per_seed
    # the evidence is the evaluator's own numbers: each cell's clean and perturbed means are the
    # group metrics of the robustness rows, on the cold cell of the modality's signal
    rows = json.loads((suite_dir / "robustness.json").read_text())["rows"]
    for m, v in verdicts.items():
        assert v["seeds"] == [0, 1, 2]
        for modality, perturbation in (("image", "drop_image"), ("text", "drop_text")):
            e = v["modalities"][modality]
            assert e["cell"] == f"signal={'visual' if modality == 'image' else 'textual'}" \
                                ",target=cold"
            for s, clean, without in zip(e["seeds"], e["clean"], e["without"]):
                (r0,) = [r for r in rows if (r["model"], r["seed"], r["perturbation"],
                                             r["rate"]) == (m, s, perturbation, 0.0)]
                (r1,) = [r for r in rows if (r["model"], r["seed"], r["perturbation"],
                                             r["rate"]) == (m, s, perturbation, 1.0)]
                assert clean == pytest.approx(r0["groups"][e["cell"]]["ndcg@10"])
                assert without == pytest.approx(r1["groups"][e["cell"]]["ndcg@10"])
