"""The arithmetic of scripts/bench_sasrec_modes.py (time to RecBole's accuracy), on hand-made
traces: where the patience rule stops, which epoch is delivered, when a target is reached."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_sasrec_modes", Path(__file__).resolve().parents[1] / "scripts" / "bench_sasrec_modes.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _side(valid, test, train_s=10.0, valid_s=1.0):
    trace = [{"train_s": train_s, **{f"{w}_{c}_{k}": v for c in bench.CONVENTIONS
                                     for w, v in (("valid", a), ("test", b))
                                     for k in ("ndcg@10", "hr@10")},
              **{f"valid_{c}_s": valid_s for c in bench.CONVENTIONS}}
             for a, b in zip(valid, test)]
    side = {"side": "x", "trace": trace}
    side["summary"] = bench.summarise(side, patience=1)
    return side


def test_patience_rule_stops_after_more_than_patience_bad_epochs():
    assert bench.stop_epoch([0.1, 0.2, 0.2, 0.1], patience=1) == 3  # ties do not improve
    assert bench.stop_epoch([0.1, 0.2, 0.3], patience=0) is None
    assert bench.stop_epoch([0.3, 0.2], patience=0) == 1


def test_delivered_model_is_the_best_validation_epoch_so_far():
    side = _side(valid=[0.1, 0.3, 0.2, 0.25], test=[0.5, 0.2, 0.9, 0.9])
    s = side["summary"]["protocol"]
    assert (s["stopped"], s["stop_epoch"], s["best_epoch"]) == (True, 4, 2)
    assert s["test_ndcg@10"] == 0.2  # the test value of epoch 2, not the best test value
    assert s["seconds_to_best"] == pytest.approx(22.0)  # 2 x (10 train + 1 validation)
    # a target is reached when the *delivered* model reaches it: epoch 1 delivers test 0.5
    assert bench.time_to(side, "protocol", 0.5) == pytest.approx(11.0)
    assert bench.time_to(side, "protocol", 0.6) is None  # epoch 2's 0.9 is never delivered
