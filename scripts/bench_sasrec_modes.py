"""Measure SASRec's two training modes and the harness's overhead over RecBole's own pipeline.

    .venv/bin/python scripts/bench_sasrec_modes.py --dataset ml-100k --out results/perf/sasrec.json

One process, one machine, sequentially: (1) RecBole's pipeline (Config -> create_dataset ->
data_preparation -> Trainer.fit) for SASRec; (2) the harness, train_mode=prefix, same settings;
(3) the harness, train_mode=all_positions. Each trains to early stopping on validation NDCG@10
(patience as given) and is tested once. Settings follow the RecBole SASRec run in
docs/performance.md: CE loss, full ranking, hidden 64, 2 layers, max length 50, dropout 0.5.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmark.data.catalog import resolve_dataset
from benchmark.data.dataset import load_dataset
from benchmark.evaluation import Evaluator
from benchmark.io import atomic_write_json
from benchmark.lifecycle import build_model
from benchmark.recbole_compat import recbole_config, recbole_workdir
from benchmark.registry import get_model_spec
from benchmark.split import make_split
from benchmark.training import Trainer

SEED = 2020


def run_recbole(data, params, work: Path, epochs: int) -> dict:
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer as RecBoleTrainer
    from recbole.utils import init_seed

    from baselines.sasrec import SASRec

    rb = {**params, "epochs": epochs, "seed": SEED, "stopping_step": params["patience"],
          "train_batch_size": params["batch_size"], "eval_batch_size": 2048,
          "valid_metric": "NDCG@10", "metrics": ["Hit", "NDCG", "MRR"], "topk": [10],
          "metric_decimal_place": 6, "reproducibility": True}
    t0 = time.perf_counter()
    config = recbole_config(SASRec, data.root, data.name, rb, work)
    with recbole_workdir(work):
        init_seed(SEED, True)
        train, valid, test = data_preparation(config, create_dataset(config))
        init_seed(SEED, True)
        model = SASRec(config, train._dataset)
        trainer = RecBoleTrainer(config, model)
        t_fit = time.perf_counter()
        trainer.fit(train, valid, saved=False, show_progress=False)
        fit_seconds = time.perf_counter() - t_fit
        result = trainer.evaluate(test, load_best_model=False, show_progress=False)
    epochs = len(trainer.train_loss_dict)
    return {"pipeline": "recbole", "epochs": epochs, "best_epoch": epochs - trainer.cur_step,
            "seconds_to_best": fit_seconds / max(epochs, 1) * (epochs - trainer.cur_step), "seconds_total": time.perf_counter() - t0,
            "fit_seconds": fit_seconds, "seconds_per_epoch": fit_seconds / max(epochs, 1),
            "best_valid_ndcg@10": float(trainer.best_valid_score),
            "test_ndcg@10": float(result["ndcg@10"]), "test_hr@10": float(result["hit@10"]),
            "note": "RecBole's sequential evaluator ranks history items too"}


def run_harness(data, split, params, mode: str, work: Path) -> dict:
    p = {**params, "train_mode": mode}
    t0 = time.perf_counter()
    model = build_model(get_model_spec("sasrec"), p, data, work, SEED, "cpu").model
    # Both views of the test metrics: the protocol's (history excluded) and RecBole's.
    ev = Evaluator(split, data.n_items, p["MAX_ITEM_LIST_LENGTH"], batch_size=2048)
    trainer = Trainer(model, p, split, ev, SEED, progress=True)
    out = trainer.fit()
    test = trainer.evaluate("test").metrics
    ev.exclude_history = False
    test_with_history = trainer.evaluate("test").metrics
    to_best = sum(r["epoch_seconds"] for r in out.history[: out.best_epoch + 1])
    return {"pipeline": f"harness/{mode}", "epochs": out.epochs_run,
            "best_epoch": out.best_epoch + 1, "seconds_to_best": to_best,
            "seconds_total": time.perf_counter() - t0, "fit_seconds": out.seconds,
            "seconds_per_epoch": out.seconds / out.epochs_run,
            "best_valid_ndcg@10": out.best_valid["ndcg@10"],
            "test_ndcg@10": test["ndcg@10"], "test_hr@10": test["hr@10"],
            "test_ndcg@10_history_ranked": test_with_history["ndcg@10"],
            "test_hr@10_history_ranked": test_with_history["hr@10"],
            "history": out.history}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--recbole-epochs", type=int, default=3,
                    help="epochs of RecBole's own pipeline (its per-epoch cost is what is "
                         "compared; the harness prefix mode repeats its computation exactly)")
    ap.add_argument("--prefix-epochs", type=int, default=0,
                    help="cap the harness prefix run (0 = train to early stopping like the rest)")
    ap.add_argument("--batch-size", type=int, default=2048, help="prefix modes (RecBole's)")
    ap.add_argument("--window-batch-size", type=int, default=128, help="all_positions")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--skip", default="", help="comma-separated: recbole,prefix,all_positions")
    ap.add_argument("--out", type=Path, default=Path("results/perf/sasrec_modes.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    data = load_dataset(resolve_dataset(args.dataset))
    split = make_split(data)
    params = get_model_spec("sasrec").resolve(None, {
        "epochs": args.epochs, "patience": args.patience, "batch_size": args.batch_size,
        "learning_rate": 1e-3, "hidden_size": 64, "inner_size": 256, "n_layers": 2,
        "MAX_ITEM_LIST_LENGTH": 50})
    work = args.out.parent / "work"
    rows = []
    out = {"dataset": args.dataset, "threads": torch.get_num_threads(), "seed": SEED,
           "params": params, "rows": rows}
    steps = [("recbole", lambda: run_recbole(data, params, work / "recbole",
                                                   args.recbole_epochs)),
             ("prefix", lambda: run_harness(
                 data, split, {**params, "epochs": args.prefix_epochs or params["epochs"]},
                 "prefix", work / "prefix")),
             ("all_positions", lambda: run_harness(
                 data, split, {**params, "batch_size": args.window_batch_size},
                 "all_positions", work / "all"))]
    for name, step in steps:
        if name in skip:
            continue
        rows.append(step())
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "history"}), flush=True)
        atomic_write_json(args.out, out)


if __name__ == "__main__":
    main()
