"""The modality-dropout test (docs/vlm2rec.md §8a) on trained VLM2Rec runs of a suite.

    .venv/bin/python scripts/vlm2rec_modality_dropout.py --results-dir results \
        --suite vlm2rec-ablation --models vlm2rec-sft,vlm2rec --out docs/vlm2rec-dropout.json

For every (model, seed) run of the suite: rebuild the model, load its stored adapter (model.pt),
and evaluate the test split three times: both modalities, text only (images removed from every
item and history), image only. Reads stored runs only; trains nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmark.config import load_suite
from benchmark.evaluation import Evaluator
from benchmark.runner import Options, build_model, prepare_dataset


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
            spec = suite.spec(name)
            params = spec.resolve(suite.preset, suite.model_overrides(name))
            for seed in suite.seeds:
                run_dir = args.results_dir / suite.name / "runs" / entry.label / name / f"seed-{seed}"
                model = build_model(spec, params, prep.data, run_dir, seed, "cpu", prep.split)
                model.load_trainable_state(torch.load(run_dir / "model.pt", weights_only=True))
                ev = Evaluator(prep.split, prep.data.n_items, params["MAX_ITEM_LIST_LENGTH"],
                               case_labels=prep.labels)
                for inputs in (("text", "image"), ("text",), ("image",)):
                    model.set_input_modalities(inputs)
                    model.eval()
                    res = ev.evaluate(_scorer(model), "test")
                    rows.append({"model": name, "seed": seed, "inputs": "+".join(inputs),
                                 "metrics": res.metrics, "groups": res.groups})
                    print(name, seed, "+".join(inputs), round(res.metrics["ndcg@10"], 4), flush=True)
                    args.out.write_text(json.dumps({"suite": suite.name, "rows": rows}, indent=1))


def _scorer(model):
    from recbole.data.interaction import Interaction

    def score(users, seq, lens):
        return model.full_sort_predict(Interaction(
            {model.USER_ID: users, model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lens}))

    return score


if __name__ == "__main__":
    main()
