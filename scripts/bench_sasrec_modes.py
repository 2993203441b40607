"""Time to RecBole's accuracy: RecBole's own SASRec pipeline and the harness's SASRec, each trained
to convergence in one process and scored by the harness evaluator under both conventions.

    .venv/bin/python scripts/bench_sasrec_modes.py --threads 1 \\
        --out results/reference/sasrec_time_to_accuracy.json

Sides, one after the other, same data, split, seed and model settings (RecBole's SASRec recipe:
CE loss over all items, hidden 64, 2 layers, 2 heads, dropout 0.5, max length 50, Adam 1e-3):

- ``recbole``: RecBole's pipeline (``Config`` -> ``create_dataset`` -> ``data_preparation`` ->
  RecBole's ``Trainer._train_epoch``), its prefix augmentation with batch 2048;
- ``all_positions``: the harness's default training mode (windows, a loss at every position);
- ``prefix`` (only with ``--sides``): the harness's copy of RecBole's recipe.

After every epoch the harness evaluator scores the current weights on validation and test, with
the user's history excluded from the ranking (the protocol's convention) and ranked (RecBole's).
Early stopping is computed for each convention from the validation traces (stop once validation
NDCG@10 has not improved for more than ``patience`` epochs; the delivered model is the
best-validation epoch so far); a side trains until both rules have stopped or ``--epochs``. The
test evaluations are measurement only: the seconds a side is charged are its training plus one
validation pass per epoch. "Time to RecBole's accuracy" is, per convention, the charged seconds
until the delivered model's test NDCG@10 first reaches RecBole's converged test NDCG@10.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmark.data.catalog import resolve_dataset
from benchmark.data.dataset import load_dataset
from benchmark.io import atomic_write_json
from benchmark.lifecycle import build_model, make_evaluator, scorer
from benchmark.recbole_compat import recbole_config, recbole_workdir
from benchmark.registry import get_model_spec
from benchmark.split import make_split
from benchmark.training import Trainer

SEED = 2020
CONVENTIONS = {"protocol": True, "recbole": False}  # name -> exclude_history


def stop_epoch(valid: list[float], patience: int) -> int | None:
    """The epoch (0-based) after which the patience rule stops, or None if it has not yet."""
    best, bad = -np.inf, 0
    for e, v in enumerate(valid):
        if v > best:
            best, bad = v, 0
        else:
            bad += 1
            if bad > patience:
                return e
    return None


def delivered(valid: list[float], test: list[float], upto: int) -> tuple[int, float]:
    """The best-validation epoch among 0..upto and its test value (first maximum wins)."""
    e = int(np.argmax(valid[: upto + 1]))
    return e, test[e]


def converge(name: str, train_epoch, model, ev, epochs: int, patience: int) -> dict:
    """Train epoch by epoch, scoring after each; stop when both conventions' rules have."""
    trace: list[dict] = []
    score = scorer(model, "cpu")
    while len(trace) < epochs:
        t0 = time.perf_counter()
        model.train()
        loss = train_epoch(len(trace))
        row = {"epoch": len(trace), "train_s": time.perf_counter() - t0, "train_loss": loss,
               "load": os.getloadavg()[0]}
        model.eval()
        for conv, exclude in CONVENTIONS.items():
            ev.exclude_history = exclude
            for which in ("valid", "test"):
                t1 = time.perf_counter()
                m = ev.evaluate(score, which).metrics
                row[f"{which}_{conv}_s"] = time.perf_counter() - t1
                row[f"{which}_{conv}_ndcg@10"], row[f"{which}_{conv}_hr@10"] = m["ndcg@10"], m["hr@10"]
        trace.append(row)
        print(json.dumps({"side": name, **{k: round(v, 4) for k, v in row.items()}}), flush=True)
        if all(stop_epoch([r[f"valid_{c}_ndcg@10"] for r in trace], patience) is not None
               for c in CONVENTIONS):
            break
    return {"side": name, "epochs_run": len(trace), "trace": trace}


def summarise(side: dict, patience: int) -> dict:
    """Per convention: where the rule stopped, the delivered model, the charged seconds."""
    trace, out = side["trace"], {}
    for c in CONVENTIONS:
        valid = [r[f"valid_{c}_ndcg@10"] for r in trace]
        test = [r[f"test_{c}_ndcg@10"] for r in trace]
        charged = np.cumsum([r["train_s"] + r[f"valid_{c}_s"] for r in trace]).tolist()
        stop = stop_epoch(valid, patience)
        last = len(trace) - 1 if stop is None else stop
        best, value = delivered(valid, test, last)
        out[c] = {"stopped": stop is not None, "stop_epoch": last + 1, "best_epoch": best + 1,
                  "valid_ndcg@10": valid[best], "test_ndcg@10": value,
                  "test_hr@10": trace[best][f"test_{c}_hr@10"],
                  "seconds_to_best": charged[best], "seconds_to_stop": charged[last],
                  "seconds_per_epoch": float(np.mean([r["train_s"] for r in trace])),
                  "charged_seconds": charged}
    return out


def time_to(side: dict, conv: str, target: float) -> float | None:
    """Charged seconds until the delivered model's test NDCG@10 first reaches ``target``."""
    trace = side["trace"]
    valid = [r[f"valid_{conv}_ndcg@10"] for r in trace]
    test = [r[f"test_{conv}_ndcg@10"] for r in trace]
    for e in range(len(trace)):
        if delivered(valid, test, e)[1] >= target - 1e-12:
            return side["summary"][conv]["charged_seconds"][e]
    return None


def recbole_side(data, params, work: Path, ev, epochs: int, patience: int) -> dict:
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer as RecBoleTrainer
    from recbole.utils import init_seed

    from baselines.sasrec import SASRec

    rb = {**params, "epochs": epochs, "seed": SEED, "stopping_step": patience,
          "train_batch_size": params["batch_size"], "eval_batch_size": 2048,
          "valid_metric": "NDCG@10", "metrics": ["Hit", "NDCG", "MRR"], "topk": [10],
          "metric_decimal_place": 6, "reproducibility": True}
    config = recbole_config(SASRec, data.root, data.name, rb, work)
    with recbole_workdir(work):
        init_seed(SEED, True)
        train, _, _ = data_preparation(config, create_dataset(config))
        if train._dataset.item_num != data.n_items:  # ids align only if every item occurs
            raise SystemExit(f"RecBole sees {train._dataset.item_num - 1} of the "
                             f"{data.n_items - 1} items (some never occur): ids would not align")
        init_seed(SEED, True)
        model = SASRec(config, train._dataset)
        trainer = RecBoleTrainer(config, model)
        return converge("recbole", lambda e: float(trainer._train_epoch(train, e,
                                                                          show_progress=False)),
                        model, ev, epochs, patience)


def harness_side(data, split, params, mode: str, work: Path, ev, epochs: int,
                 patience: int) -> dict:
    p = {**params, "train_mode": mode}
    model = build_model(get_model_spec("sasrec"), p, data, work, SEED, "cpu").model
    trainer = Trainer(model, p, split, ev, SEED, progress=False)
    return converge(mode, lambda e: trainer.train_epoch({"epoch": e})["train_loss"], model, ev,
                    epochs, patience)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--sides", default="recbole,all_positions",
                    help="comma-separated, in order: recbole, all_positions, prefix")
    ap.add_argument("--epochs", type=int, default=200, help="cap per side")
    ap.add_argument("--patience", type=int, default=5, help="RecBole's pipeline (and prefix)")
    ap.add_argument("--window-patience", type=int, default=20,
                    help="all_positions: its epochs are ~1/30 of a prefix epoch's work")
    ap.add_argument("--batch-size", type=int, default=2048, help="prefix modes (RecBole's)")
    ap.add_argument("--window-batch-size", type=int, default=128, help="all_positions")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--out", type=Path, default=Path("results/perf/sasrec_time_to_accuracy.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(resolve_dataset(args.dataset))
    split = make_split(data)
    params = get_model_spec("sasrec").resolve(None, {
        "epochs": args.epochs, "patience": args.patience, "batch_size": args.batch_size,
        "learning_rate": 1e-3, "hidden_size": 64, "inner_size": 256, "n_layers": 2,
        "MAX_ITEM_LIST_LENGTH": 50})
    ev = make_evaluator({"mode": "full"}, split, data.n_items, {**params, "eval_batch_size": 2048})
    work = args.out.parent / "work"
    out = {"dataset": args.dataset, "threads": torch.get_num_threads(), "seed": SEED,
           "cpus": os.cpu_count(), "params": params, "load_start": os.getloadavg(),
           "sides": []}
    builders = {
        "recbole": lambda: recbole_side(data, params, work / "recbole", ev, args.epochs,
                                        args.patience),
        "prefix": lambda: harness_side(data, split, params, "prefix", work / "prefix", ev,
                                       args.epochs, args.patience),
        "all_positions": lambda: harness_side(
            data, split, {**params, "batch_size": args.window_batch_size},
            "all_positions", work / "all", ev, args.epochs, args.window_patience)}
    for name in filter(None, args.sides.split(",")):
        if name not in builders:
            raise SystemExit(f"unknown side {name!r}: one of {', '.join(builders)}")
        side = builders[name]()
        patience = args.window_patience if name == "all_positions" else args.patience
        side["patience"] = patience
        side["summary"] = summarise(side, patience)
        out["sides"].append(side)
        reference = next((s for s in out["sides"] if s["side"] == "recbole"), None)
        if reference is not None:
            for s in out["sides"]:
                s["time_to_recbole"] = {}
                for c in CONVENTIONS:
                    target = reference["summary"][c]["test_ndcg@10"]
                    t = time_to(s, c, target)
                    s["time_to_recbole"][c] = {
                        "target": target, "seconds": t,
                        "ratio": None if t is None else t / time_to(reference, c, target)}
        out["load_end"] = os.getloadavg()
        atomic_write_json(args.out, out)
        print(json.dumps({"side": name, "summary": {c: {k: v for k, v in s.items()
                                                        if k != "charged_seconds"}
                                                    for c, s in side["summary"].items()},
                          "time_to_recbole": side.get("time_to_recbole")}), flush=True)


if __name__ == "__main__":
    main()
