"""The VLM2Rec GPU check: encoding and LoRA-step throughput, memory and MFU at Qwen2-VL-2B's shape.

    python scripts/bench_vlm2rec_gpu.py --out $OUT/gpu_check.json      # on a CUDA machine
    .venv/bin/python scripts/bench_vlm2rec_gpu.py --smoke                # CPU, tiny shape

Random weights (nothing is downloaded), bf16 weights under autocast with float32 LoRA weights,
SDPA attention on right-padded, length-bucketed prompts, fused AdamW, gradient checkpointing
only if the smallest batch does not fit without it; the batch of (user, item) pairs grows until
memory or the time budget runs out. Every figure is printed as a JSON line as soon as it exists.
What is counted as model FLOPs: ``methods/vlm2rec/bench.py``. Budget: about 8 minutes on an
H100/H200 (``--budget-s`` bounds the step sweep).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, tiny shape, float32, a few items: checks the code path only")
    ap.add_argument("--family", default="qwen2-vl")
    ap.add_argument("--size", default="2b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--image-px", type=int, default=224)
    ap.add_argument("--pairs", default="8,16,32,48,64,96,128",
                    help="batches of (user, item) pairs to try, ascending")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per batch")
    ap.add_argument("--checkpointing", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--bucket-overhead", type=int, default=1024,
                    help="padding tokens one more forward pass is worth (length buckets)")
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--compile", action="store_true", help="torch.compile each decoder layer")
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.out is None and os.environ.get("OUT"):
        args.out = Path(os.environ["OUT"]) / ("gpu_smoke.json" if args.smoke else "gpu_check.json")
    kw = {"family": args.family, "size": args.size, "device": args.device, "dtype": args.dtype,
          "n_items": args.items, "image_px": args.image_px,
          "pairs": [int(p) for p in args.pairs.split(",")], "steps": args.steps,
          "checkpointing": args.checkpointing, "bucket_overhead": args.bucket_overhead,
          "compile_layers": args.compile, "lora": {"dropout": args.lora_dropout},
          "budget_s": args.budget_s, "threads": args.threads, "out": args.out}
    if args.smoke:
        kw.update(size="tiny", device="cpu", dtype="float32", n_items=48, image_px=32,
                  pairs=[4, 8], steps=2, threads=args.threads or 1, budget_s=120.0)
        kw["encode_batch"] = 16
    from methods.vlm2rec.bench import run

    run(**kw, echo=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
