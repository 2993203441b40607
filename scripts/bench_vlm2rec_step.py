"""VLM2Rec LoRA step on CPU: the embedder's input path before and after pre-tokenisation, in one run.

    .venv/bin/python scripts/bench_vlm2rec_step.py --threads 1 \
        --out results/reference/vlm2rec_step_cpu.json

One harness training step as ``ContrastiveTrainer`` takes it (``VLM2Rec.forward``: user and item
embeddings, L_CL + WPCL + CRTR; backward; gradient clipping; AdamW) on the default synthetic
dataset with the harness-pretrained stand-in ``pretrained-tiny-qwen2-vl`` (built into the cache
on first use, a few minutes), ``tiny`` preset otherwise. For each configuration (pairs per step
x history length) the *reference* embedder — ``methods/vlm2rec/embedder.py`` as it was at
``--reference`` (git), which tokenised every prompt and padded on the left — and the current one
run the same batches from the same adapter, alternating step by step so that load from other
processes hits both alike; both first see every item's text and image once (their caches warm,
as after the first validation pass). Reported per path: median wall and process-CPU ms per
step, their ratios, and where the CPU time goes (tokenizer, model forward, the rest of the
forward, backward, optimizer); first the two paths' losses and gradients on the same batch
(they must agree to float tolerance). The load average before and after goes with every number.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REFERENCE = "325cde1"  # the last commit before the pre-tokenised input path


def load_reference(commit: str):
    """``methods.vlm2rec.embedder`` as of ``commit``, imported beside the current one."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:methods/vlm2rec/embedder.py"],
                            check=True, capture_output=True, text=True).stdout
    name = "methods.vlm2rec._reference_embedder"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "methods.vlm2rec"
    sys.modules[name] = module
    exec(compile(source, f"{commit}:methods/vlm2rec/embedder.py", "exec"),  # noqa: S102
         module.__dict__)
    return module


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class _Timed:
    """Wraps a callable and adds up its process-CPU time; other attributes pass through (so a
    tokenizer can be wrapped)."""

    def __init__(self, target):
        self.target, self.seconds = target, 0.0

    def __call__(self, *a, **kw):
        c = time.process_time()
        try:
            return self.target(*a, **kw)
        finally:
            self.seconds += time.process_time() - c

    def __getattr__(self, name):
        return getattr(self.target, name)


def build(args, batch: int, history: int):
    from benchmark.config import load_suite
    from benchmark.lifecycle import build_model
    from benchmark.registry import get_model_spec
    from benchmark.runner import Options, prepare_dataset

    suite = load_suite("accuracy")
    prep = prepare_dataset(suite.datasets[0], suite, Options(data_dir=args.data_dir))
    spec = get_model_spec("vlm2rec")
    params = spec.resolve("tiny", {"vlm": args.vlm, "batch_size": batch, "history_len": history})
    handle = build_model(spec, params, prep.data, Path("/tmp/bench_vlm2rec_step/run"), 0, "cpu",
                         prep.split, cache_dir=args.cache_dir)
    return handle.model, params, prep


def run_config(args, ref_module, batch: int, history: int) -> dict:
    from methods.vlm2rec.train import training_pairs

    model, params, prep = build(args, batch, history)
    new = model.embedder
    old = ref_module.VLMEmbedder(
        model.vlm_path, fusion=params["fusion"], history_len=history,
        lora={"r": params["lora_r"], "alpha": params["lora_alpha"],
              "dropout": params["lora_dropout"], "targets": params["lora_targets"]},
        max_text_tokens=params["max_text_tokens"], image_size=params["image_size"])
    old.load_state_dict(new.state_dict())  # the same adapter (and frozen weights)
    paths = {"reference": old, "current": new}
    opts = {k: torch.optim.AdamW([p for p in e.parameters() if p.requires_grad],
                                 lr=params["learning_rate"]) for k, e in paths.items()}
    pairs = training_pairs(prep.split)

    def batch_of(k: int):
        idx = np.random.default_rng([0, k]).choice(len(pairs), size=batch, replace=False)
        hists, targets = [], []
        for u, p in pairs[idx]:
            seq = prep.split.sequences[u]
            hists.append(seq[max(0, p - history):p].tolist())
            targets.append(int(seq[p]))
        return hists, targets

    phases = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}

    def step(path: str, k: int, update: bool = True) -> tuple[float, dict]:
        model.embedder = paths[path]
        model.train()
        c0 = time.process_time()
        loss, terms = model(*batch_of(k))
        c1 = time.process_time()
        opts[path].zero_grad(set_to_none=True)
        loss.backward()
        c2 = time.process_time()
        if params["clip_grad_norm"] > 0:  # as ContrastiveTrainer does
            torch.nn.utils.clip_grad_norm_(
                [p for p in paths[path].parameters() if p.requires_grad], params["clip_grad_norm"])
        if update:
            opts[path].step()
        c3 = time.process_time()
        for name, dt in (("forward", c1 - c0), ("backward", c2 - c1), ("optimizer", c3 - c2)):
            phases[name] += dt
        return float(loss.detach()), terms

    def where_time_goes(ks: range) -> dict:
        """Process-CPU ms per step by part, median over steps that alternate between the paths:
        tokenizer, the model's forward passes, the rest of the forward (prompt and batch
        building, image-cache lookups, the objective), backward, clipping + AdamW."""
        wrapped = {}
        for path, emb in paths.items():
            tok, fwd = _Timed(emb.tokenizer), _Timed(emb._core.forward)
            emb.tokenizer, emb._core.forward = tok, fwd
            if hasattr(emb, "tokens"):  # the current path's prompt-token cache
                emb.tokens.tok = tok
            wrapped[path] = (tok, fwd)
        rows = {path: [] for path in paths}
        try:
            for k in ks:
                for path in (("reference", "current") if k % 2 else ("current", "reference")):
                    tok, fwd = wrapped[path]
                    before = (tok.seconds, fwd.seconds, dict(phases))
                    step(path, k)
                    t, f = tok.seconds - before[0], fwd.seconds - before[1]
                    ph = {n: phases[n] - before[2][n] for n in phases}
                    rows[path].append({"tokenizer": t, "model_forward": f,
                                       "forward_rest": ph["forward"] - t - f,
                                       "backward": ph["backward"], "optimizer": ph["optimizer"],
                                       "total": sum(ph.values())})
        finally:
            for path, emb in paths.items():
                emb.tokenizer = wrapped[path][0].target
                del emb._core.forward
                if hasattr(emb, "tokens"):
                    emb.tokens.tok = emb.tokenizer
        return {path: {part: round(1000 * float(np.median([r[part] for r in rs])), 1)
                       for part in rs[0]} for path, rs in rows.items()}

    # agreement on one batch, before any update: loss and LoRA gradients
    grads = {}
    losses = {}
    for path, embedder in paths.items():
        losses[path], _ = step(path, 0, update=False)
        grads[path] = torch.cat([p.grad.flatten() for p in embedder.parameters()
                                 if p.requires_grad])
    agreement = {"loss_reference": losses["reference"], "loss_current": losses["current"],
                 "loss_abs_diff": abs(losses["reference"] - losses["current"]),
                 "grad_max_abs_diff": float((grads["reference"] - grads["current"]).abs().max()),
                 "grad_max_abs": float(grads["reference"].abs().max()),
                 "clip_grad_norm": params["clip_grad_norm"]}
    with torch.no_grad():  # steady state, as after the first validation pass: every item's
        for emb in paths.values():  # text and image seen once by both paths
            emb._texts([c.text for c in model.contents])
            emb._images([c.image for c in model.contents])
    for path in paths:  # warm-up (allocator, memoised layouts)
        for k in range(1, 1 + args.warmup):
            step(path, k)
    times = {p: {"wall": [], "cpu": []} for p in paths}
    load_before = loadavg()
    for k in range(args.warmup + 1, args.warmup + 1 + args.steps):
        for path in (("reference", "current") if k % 2 else ("current", "reference")):
            w, c = time.perf_counter(), time.process_time()
            step(path, k)
            times[path]["wall"].append(time.perf_counter() - w)
            times[path]["cpu"].append(time.process_time() - c)
    load_after = loadavg()
    breakdown = (where_time_goes(range(1000, 1000 + args.breakdown_steps))
                 if args.breakdown_steps else None)
    model.embedder = new
    med = {p: {k: 1000 * float(np.median(v)) for k, v in t.items()} for p, t in times.items()}
    return {
        "pairs_per_step": batch, "history_len": history, "steps_timed": args.steps,
        "load_before": load_before, "load_after": load_after,
        "agreement": agreement,
        "ms_per_step_wall": {p: round(m["wall"], 1) for p, m in med.items()},
        "ms_per_step_cpu": {p: round(m["cpu"], 1) for p, m in med.items()},
        "speedup_wall": round(med["reference"]["wall"] / med["current"]["wall"], 2),
        "speedup_cpu": round(med["reference"]["cpu"] / med["current"]["cpu"], 2),
        "raw_ms_wall": {p: [round(1000 * x, 1) for x in t["wall"]] for p, t in times.items()},
        "cpu_ms_per_step_by_part": breakdown,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--configs", default="16x10,16x5,64x5",
                    help="comma-separated PAIRSxHISTORY (pairs per step x history length)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per path and config")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--breakdown-steps", type=int, default=10,
                    help="extra steps per path timed by part (0: none)")
    ap.add_argument("--vlm", default="pretrained-tiny-qwen2-vl")
    ap.add_argument("--reference", default=REFERENCE, help="git commit of the old embedder")
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(os.environ.get("BENCH_CACHE_DIR", "/tmp/bench_vlm2rec_cache")))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ref = load_reference(args.reference)
    rows = []
    for cfg in args.configs.split(","):
        batch, history = map(int, cfg.lower().split("x"))
        row = run_config(args, ref, batch, history)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "raw_ms_wall"}), flush=True)
    import transformers

    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
           "reference_commit": args.reference, "vlm": args.vlm, "threads": args.threads,
           "cpu": platform.processor() or platform.machine(), "n_cpus": os.cpu_count(),
           "torch": torch.__version__, "transformers": transformers.__version__,
           "time": time.strftime("%Y-%m-%d %H:%M:%S"), "configs": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
