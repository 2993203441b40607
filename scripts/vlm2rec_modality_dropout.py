"""The modality-dropout test (docs/vlm2rec.md §8a) on trained VLM2Rec runs of a suite.

    .venv/bin/python scripts/vlm2rec_modality_dropout.py --results-dir results \
        --suite vlm2rec-ablation --models vlm2rec-sft,vlm2rec --out docs/vlm2rec-dropout.json

For every (model, seed) run of the suite: load the run (``benchmark.lifecycle.load_run``) and
evaluate the test split three times: both modalities, text only (images removed from every item
and history), image only. Reads stored runs only; trains nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmark.config import load_suite
from benchmark.lifecycle import load_run, make_evaluator, scorer
from benchmark.robustness import run_folder
from benchmark.runner import Options, prepare_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", type=Path, default=Path("results"))
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--suite", default="vlm2rec-ablation")
    ap.add_argument("--models", help="comma-separated (default: the suite's)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    suite = load_suite(args.suite)
    models = args.models.split(",") if args.models else suite.models
    opts = Options(results_dir=args.results_dir, data_dir=args.data_dir, progress=False)
    rows = []
    for entry in suite.datasets:
        prep = prepare_dataset(entry, suite, opts)
        for name in models:
            for seed in suite.seeds:
                handle = load_run(run_folder(suite, prep, name, seed, opts), prep=prep,
                                  cache_dir=opts.cache_dir)
                if not handle.caps.input_modalities:
                    raise SystemExit(f"{name}: cannot feed it only some modalities")
                ev = make_evaluator(suite.evaluation, prep.split, prep.data.n_items,
                                    handle.params, prep.labels)
                for inputs in (("text", "image"), ("text",), ("image",)):
                    handle.model.set_input_modalities(inputs)
                    res = ev.evaluate(scorer(handle.model), "test")
                    rows.append({"model": name, "seed": seed, "inputs": "+".join(inputs),
                                 "metrics": res.metrics, "groups": res.groups})
                    print(name, seed, "+".join(inputs), round(res.metrics["ndcg@10"], 4), flush=True)
                    args.out.write_text(json.dumps({"suite": suite.name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
