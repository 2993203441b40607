"""Measure the content encoders on these CPUs: items encoded per second, harness-clip training
time, and what the embedding cache saves on a second run.

    .venv/bin/python scripts/bench_encoders.py --out results/perf/encoders.json

Cases (each with a fresh cache, then the same call again on the warm cache):
- all-MiniLM-L6-v2 text on ml-100k (title, year, genres) and Amazon Beauty (title, brand,
  categories; needs ../shared/data/amazon-beauty);
- a random tiny CLIP checkpoint (saved and loaded through ``from_pretrained``) on the synthetic
  dataset (500 items, 32 px) and ml-100k (posters from ../shared/data/ml-100k-posters);
- harness-clip (trained on the training items, then applied to all items) on the same two.

"first" is the whole ``prepare_features`` call on a cold cache (model load, training, image
decoding, encoding); "encode" the encoding loop alone (input loading included); "second" the
same call on the warm cache. The load average is printed: the cores here are often shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmark.data.catalog import resolve_dataset
from benchmark.data.dataset import load_dataset
from benchmark.encoders import harness_clip, prepare_features
from benchmark.io import atomic_write_json
from benchmark.split import make_split

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def datasets(work: Path, shared: Path = SHARED) -> dict:
    """name -> (Dataset, Split) for every dataset available here."""
    from benchmark.data.importers.sequences import import_sequence_file

    data_dir = work / "data"
    posters = shared / "ml-100k-posters"
    roots = {"synthetic": resolve_dataset("synthetic", data_dir),
             "ml-100k": resolve_dataset("ml-100k", data_dir,
                                        posters if posters.is_dir() else None)}
    beauty = shared / "amazon-beauty"
    if (beauty / "sequences.txt").is_file():
        root = data_dir / "amazon-beauty"
        if not (root / "manifest.json").is_file():
            import_sequence_file(beauty / "sequences.txt", beauty / "items.tsv", root,
                                 "amazon-beauty")
        roots["amazon-beauty"] = root
    out = {}
    for name, root in roots.items():
        data = load_dataset(root)
        out[name] = (data, make_split(data))
    return out


def measure(label: str, data, split, requests: dict, cache: Path, progress: bool) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    feats = prepare_features(data, split, requests, cache, progress=progress)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    prepare_features(data, split, requests, cache)
    second = time.perf_counter() - t0
    row = {"case": label, "dataset": data.name, "items": data.n_items - 1,
           "first_s": round(first, 2), "second_s": round(second, 3)}
    trained = list((cache / "checkpoints").glob("*/training.json"))
    if trained:
        info = json.loads(trained[0].read_text())
        row.update(train_s=info["seconds"], train_items=info["train_items"],
                   image_size=info["image_size"])
    for modality, f in feats.items():
        encoded = int(f.present.sum())
        seconds, cpu = f.meta["encode_seconds"], f.meta["encode_cpu_seconds"]
        row[modality] = {"encoded": encoded, "missing": f.missing_count(), "dim": f.dim,
                         "encode_s": seconds, "items_per_s": round(encoded / seconds, 1),
                         "encode_cpu_s": cpu, "items_per_cpu_s": round(encoded / cpu, 1)}
    print(json.dumps(row), flush=True)
    return row


def markdown(rows: list[dict]) -> str:
    header = ("| case | dataset | items | modality | encoded/s | encoded/CPU-s | encode s | "
              "first run s | train s | second run s |")
    lines = [header, "|---" * 10 + "|"]
    for r in rows:
        for modality in ("text", "image"):
            if modality in r:
                m = r[modality]
                lines.append(f"| {r['case']} | {r['dataset']} | {r['items']} | {modality} | "
                             f"{m['items_per_s']} | {m['items_per_cpu_s']} | {m['encode_s']} | "
                             f"{r['first_s']} | "
                             f"{r.get('train_s', '-')} | {r['second_s']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-encoders"))
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--shared", type=Path, default=SHARED,
                    help="the shared data folder (default: ../shared/data of the checkout)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="datasets to run (synthetic, ml-100k, amazon-beauty; default all)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    sets = datasets(args.work, args.shared)
    texts = [sets["synthetic"][0].item_text(i) for i in range(1, 200)]
    tiny = harness_clip.random_checkpoint(args.work / "tiny-clip", texts)
    cases = [("all-MiniLM-L6-v2", name, {"text": "all-MiniLM-L6-v2"})
             for name in ("ml-100k", "amazon-beauty") if name in sets]
    for name in ("synthetic", "ml-100k"):
        cases.append(("tiny CLIP (random, 32 px)", name, {"text": str(tiny), "image": str(tiny)}))
        cases.append(("harness-clip", name, {"text": "harness-clip", "image": "harness-clip"}))
    rows = [measure(label, *sets[name], requests, args.work / "cache", not args.quiet)
            for label, name, requests in cases if args.only is None or name in args.only]
    meta = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__}
    print(markdown(rows))
    print(json.dumps(meta))
    if args.out:
        atomic_write_json(args.out, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
