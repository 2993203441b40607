"""Branch probes of the items-pretrained VLM stand-in (``pretrain=items``) on a real dataset.

Builds (or loads from the cache) the stand-in of ``--recipe`` with ``holdout`` of the training
items withheld from pre-training, and the same recipe with ``steps=0`` (the random initialisation
with the same tokenizer), then probes both on the withheld items
(:func:`methods.vlm2rec.pretrain.heldout_item_probes`: genre from each branch, poster -> text
retrieval). Also probes the recipe without holdout (the one benchmark runs use) on items it was
pre-trained on (odd ids fit, even ids test): what the branches carry for the catalogue.

    BENCH_DATA_DIR=... BENCH_CACHE_DIR=... python scripts/vlm2rec_items_probes.py \
        --dataset ml-100k --images ../shared/data/ml-100k-posters --out probes.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--images", type=Path)
    ap.add_argument("--recipe", default="pretrained-tiny-qwen2-vl:pretrain=items")
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--image-size", type=int, default=32)  # the vlm2rec tiny preset's ...
    ap.add_argument("--max-text-tokens", type=int, default=16)  # ... encoding settings
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    import torch

    from benchmark.data.catalog import resolve_dataset
    from benchmark.data.dataset import load_dataset
    from benchmark.lifecycle import default_cache_dir
    from benchmark.split import make_split
    from methods.vlm2rec.embedder import VLMEmbedder
    from methods.vlm2rec.model import item_text
    from methods.vlm2rec.pretrain import (
        branch_tables,
        heldout_item_probes,
        parse_name,
        pretrain_cost,
        pretrain_item_ids,
        resolve_pretrained,
    )

    torch.set_num_threads(a.threads)
    data = load_dataset(resolve_dataset(a.dataset, images=a.images))
    split = make_split(data)
    cache = default_cache_dir()
    held = f"{a.recipe},holdout={a.holdout}"
    used, withheld = pretrain_item_ids(parse_name(held), split)
    out = {"dataset": data.content_hash, "encoding": {"image_size": a.image_size,
                                                      "max_text_tokens": a.max_text_tokens},
           "pretrained_items": len(used), "withheld_items": len(withheld)}
    seen_fit = used[used % 2 == 1]
    seen_test = used[used % 2 == 0]
    for label, name, fit, test in (
            ("random init, withheld items", held + ",steps=0", used, withheld),
            ("pretrained, withheld items", held, used, withheld),
            ("pretrained (no holdout), seen items", a.recipe, seen_fit, seen_test)):
        start = time.perf_counter()
        path = resolve_pretrained(name, cache, data, split)
        built = time.perf_counter() - start
        emb = VLMEmbedder(path, lora=None, image_size=a.image_size,
                          max_text_tokens=a.max_text_tokens)
        probes = heldout_item_probes(branch_tables(emb, data), data, fit, test)
        marker = json.loads((path / "harness_tiny.json").read_text())
        out[label] = {"name": name, "path": str(path), "probes": probes,
                      "final_loss": marker.get("final_loss"), "cost": pretrain_cost(path),
                      "resolve_seconds": round(built, 1)}
        print(label, json.dumps(probes), flush=True)
    # share of item texts (as VLM2Rec reads them) whose genre list survives the token budget
    texts = [t for t in emb._texts([item_text(data, i) for i in range(1, data.n_items)]) if t]
    out["genres_within_text_budget"] = round(float(np.mean(["Genres" in t for t in texts])), 4)
    a.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
