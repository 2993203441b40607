"""Cost growth with dataset size: seconds per training epoch and evaluator seconds for SASRec and
a content model (CLIP-SASRec, cached harness-clip features) on synthetic worlds of growing size.

    .venv/bin/python scripts/bench_cost_growth.py --users 1500,15000,150000 --threads 1 \\
        --out results/reference/cost_growth.json --plot docs/figures/cost_growth.png

Each world is the default synthetic one (500 items, 8-20 interactions per user) with ``n_users``
changed, generated under ``--work``. Per world and model: the tiny preset, one warm-up epoch
(first-touch costs), then ``--epochs`` timed epochs (median), and one full-ranking validation
pass (every user, history excluded) timed with its users/s. The fitted exponent is the slope of
log(seconds) on log(users), least squares over the sizes: 1 is linear growth.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmark.data.dataset import load_dataset
from benchmark.data.synthetic import SyntheticConfig, generate_synthetic
from benchmark.io import atomic_write_json
from benchmark.lifecycle import build_model, make_evaluator, scorer
from benchmark.registry import get_model_spec
from benchmark.split import make_split
from benchmark.training import Trainer

MODELS = ("sasrec", "clip_sasrec")


def measure(data, split, model_name: str, work: Path, epochs: int, cache: Path) -> dict:
    spec = get_model_spec(model_name)
    params = spec.resolve("tiny", {"train_candidates": "seen", "use_id": True}
                          if model_name != "sasrec" else {"train_candidates": "seen"})
    t0 = time.perf_counter()
    model = build_model(spec, params, data, work / model_name, 0, "cpu", split=split,
                        cache_dir=cache).model
    build_s = time.perf_counter() - t0
    ev = make_evaluator({"mode": "full"}, split, data.n_items, params)
    trainer = Trainer(model, params, split, ev, 0, progress=False)
    seconds = []
    for e in range(epochs + 1):  # the first epoch is a warm-up
        model.train()
        t0 = time.perf_counter()
        trainer.train_epoch({"epoch": e})
        seconds.append(time.perf_counter() - t0)
    model.eval()
    t0 = time.perf_counter()
    ev.evaluate(scorer(model, "cpu"), "valid")
    eval_s = time.perf_counter() - t0
    return {"build_s": build_s, "epoch_s": statistics.median(seconds[1:]),
            "epoch_s_all": seconds, "windows": int(len(trainer.samples)),
            "eval_s": eval_s, "eval_users_per_s": data.n_users / eval_s}


def exponent(xs: list[float], ys: list[float]) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [w["n_users"] for w in record["worlds"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in record["models"]:
        for key, style, what in (("epoch_s", "-o", "epoch"), ("eval_s", "--s", "evaluation")):
            ys = [w[model][key] for w in record["worlds"]]
            k = record["exponents"][model][key]
            ax.plot(users, ys, style, label=f"{model} {what} (exponent {k:.2f})")
    ax.set(xscale="log", yscale="log", xlabel="users (500 items)", ylabel="seconds",
           title=f"Cost growth, {record['threads']} thread(s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", default="1500,15000,150000")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-cost-growth"))
    ap.add_argument("--out", type=Path, default=Path("results/perf/cost_growth.json"))
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    record = {"threads": args.threads, "cpus": os.cpu_count(), "models": models,
              "load_start": os.getloadavg(), "worlds": []}
    for n in (int(x) for x in args.users.split(",")):
        t0 = time.perf_counter()
        root = generate_synthetic(args.work / f"world-{n}" / "synthetic", SyntheticConfig(n_users=n))
        data = load_dataset(root)
        split = make_split(data)
        world = {"n_users": n, "n_items": data.n_items - 1, "interactions": int(data.n_interactions),
                 "generate_and_load_s": time.perf_counter() - t0}
        for model in models:
            world[model] = measure(data, split, model, args.work / f"world-{n}", args.epochs,
                                   args.work / "cache")
            print(json.dumps({"n_users": n, "model": model,
                              **{k: v for k, v in world[model].items() if k != "epoch_s_all"}}),
                  flush=True)
        record["worlds"].append(world)
        atomic_write_json(args.out, record)
    users = [w["n_users"] for w in record["worlds"]]
    if len(users) > 1:
        record["exponents"] = {m: {k: exponent(users, [w[m][k] for w in record["worlds"]])
                                   for k in ("epoch_s", "eval_s")} for m in models}
        print(json.dumps(record["exponents"]))
        if args.plot:
            plot(record, args.plot)
    record["load_end"] = os.getloadavg()
    atomic_write_json(args.out, record)


if __name__ == "__main__":
    main()
