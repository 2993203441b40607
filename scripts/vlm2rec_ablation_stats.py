"""Paired statistics of the VLM2Rec ablation (docs/vlm2rec.md, "The controlled-collapse
experiment") from stored runs only (it trains nothing).

    .venv/bin/python scripts/vlm2rec_ablation_stats.py --results-dir /tmp/ablation-0.5 \
        --data-dir /tmp/s1data --out results/reference/vlm2rec-ablation-0.5.json

For each variant against the plain-SFT variant, on the overall test cases and on the cold
visual and cold textual cells (cold cells under the cold-start protocol): each user's NDCG@10
averaged over seeds (expected over tied items), then a paired t-test and a paired permutation
test over users, Holm-corrected across all comparisons of the file, with the mean difference
and its bootstrap 95% CI. From ``robustness.json`` (written by ``bench diagnose``): the signed
image and text contributions (clean minus the modality removed from every item and history,
NDCG@10 on the same cells); from ``diagnostics.json``: the branch probes after fine-tuning; each
as mean and 95% CI over seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmark.config import DatasetEntry, load_suite
from benchmark.evaluation import case_metrics, stored_cases
from benchmark.lifecycle import run_folder
from benchmark.report import significance as sig
from benchmark.runner import prepare_data
from benchmark.stats import mean_ci

CELLS = ("overall", "signal=visual,target=cold", "signal=textual,target=cold")
METRIC = "ndcg@10"


def per_user(run_dir: Path, cells: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-case NDCG@10 of one run on each cell (cold cells from the cold-start ranks)."""
    with np.load(run_dir / "per_case.npz") as z:
        _, ranks, ties = stored_cases(z, "test")
        cold_ranks, cold_ties = z["test_cold_ranks"], z["test_cold_ties"]
    full = case_metrics(ranks, (10,), ties)[METRIC]
    cold = case_metrics(np.maximum(cold_ranks, 0), (10,), np.maximum(cold_ties, 0))[METRIC]
    return {c: (cold if "cold" in c else full)[mask] for c, mask in cells.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--suite", default="vlm2rec-ablation")
    ap.add_argument("--reference", default="vlm2rec-sft")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    suite = load_suite(args.suite)
    seeds = [int(s) for s in args.seeds.split(",")]
    entry = suite.datasets[0]
    prep = prepare_data(DatasetEntry(entry.name, entry.images, entry.options), suite.split,
                        args.data_dir)
    cases, split = prep.split.test, prep.split
    targets = np.array([split.sequences[u][p] for u, p in zip(cases.user, cases.pos)])
    cold = split.train_item_counts(prep.data.n_items)[targets] == 0
    signal = np.asarray(prep.labels["signal"], dtype=object)[cases.row]
    cells = {"overall": np.ones(len(cases), dtype=bool),
             "signal=visual,target=cold": (signal == "visual") & cold,
             "signal=textual,target=cold": (signal == "textual") & cold}
    values = {m: {c: np.mean([per_user(run_folder(args.results_dir, suite.name, entry.label, m,
                                                             s), cells)[c] for s in seeds], 0)
                  for c in CELLS} for m in suite.models}
    comparisons = [sig.compare(c, m, args.reference, values[m][c], values[args.reference][c])
                   for m in suite.models if m != args.reference for c in CELLS]
    comparisons = sig.correct(comparisons)
    suite_dir = args.results_dir / suite.name
    diag = json.loads((suite_dir / "diagnostics.json").read_text())
    rows = json.loads((suite_dir / "robustness.json").read_text())["rows"]

    def cell_value(model: str, seed: int, name: str, rate: float, cell: str) -> float:
        (row,) = [r for r in rows if (r["model"], r["seed"], r["perturbation"]) ==
                  (model, seed, name) and float(r["rate"]) == rate]
        return row["metrics"][METRIC] if cell == "overall" else row["groups"][cell][METRIC]

    summary = {}
    for m in suite.models:
        summary[m] = {"mean_" + c: float(values[m][c].mean()) for c in CELLS}
        for c in CELLS:  # signed: clean minus the modality removed from every item and history
            for name, label in (("drop_image", "image"), ("drop_text", "text")):
                summary[m][f"{label}_contribution[{c}]"] = mean_ci([
                    cell_value(m, s, name, 0.0, c) - cell_value(m, s, name, 1.0, c)
                    for s in seeds])
        entries = [e for e in diag["models"] if e["model"] == m and e["seed"] in seeds]
        for k in sorted({k for e in entries for k in e["metrics"] if k.startswith("probe_")}):
            summary[m][f"{k} (after fine-tuning)"] = mean_ci(
                [e["metrics"][k] for e in entries if k in e["metrics"]])
    out = {"suite": suite.name, "results_dir": str(args.results_dir), "seeds": seeds,
           "reference": args.reference, "cells": list(CELLS),
           "cell_sizes": {c: int(mask.sum()) for c, mask in cells.items()},
           "comparisons": [vars(c) for c in comparisons], "models": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=float) + "\n")
    for c in comparisons:
        print(json.dumps({k: v for k, v in vars(c).items()}, default=float))


if __name__ == "__main__":
    main()
