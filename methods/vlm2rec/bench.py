"""Throughput of the VLM2Rec embedder at a given model shape: encoding (items/s, users/s) and
the LoRA training step (ms, tokens, model FLOPs, MFU). The GPU check (``scripts/gpu_check.sh``,
``scripts/bench_vlm2rec_gpu.py``) runs it at Qwen2-VL-2B's shape in bf16; ``--smoke`` runs the
same code on CPU at the tiny shape.

The backbone has **random weights** built from the family's config (``tiny.SIZES``: "2b" has
Qwen2-VL-2B's shapes, its vocabulary padded to 151,936 rows), so nothing is downloaded; the
figures are throughput and memory only. Items are random words (5-40, cut to
``max_text_tokens``) and random-pixel images; users are histories of ``history`` + 4 items of
which the last ``history`` are used. The step is the harness's: user and item branches, L_CL +
WPCL + CRTR (:class:`~methods.vlm2rec.losses.Objective`, paper settings), backward, AdamW
(fused on CUDA); in-batch negatives over ``pairs`` (user, item) pairs.

**Model FLOPs of a step** (``step_flops``), counted on real tokens only (padding is waste):
per prompt of L tokens, ``(4 N + 6 N_lora) L + 6 n_layers d_q L^2``, from

    linear:    2 N L (forward) + 2 N L (backward to the activations through the frozen
               weights; no weight gradients) + 6 N_lora L (LoRA: forward, activations,
               weights)
    attention: causal, per layer: QK^T and AV each d_q L^2 / 2 multiply-adds forward
               (2 d_q L^2 FLOPs), backward twice that: 6 d_q L^2 per layer

with N the language model's parameters without the embeddings (attention, MLP, norms; the
LM head is never run), N_lora the adapter's, d_q = heads x head_dim. The frozen vision tower is
not counted (its outputs are cached and computed outside the step), nor is activation
recomputation under gradient checkpointing (MFU, not hardware FLOPs). MFU = step FLOPs / step
time / the card's dense bf16 peak (``PEAK_BF16``).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Dense bf16 peak FLOP/s (vendor figures, SXM parts; no sparsity).
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "H800": 989.4e12, "GH200": 989.4e12,
             "A100": 312e12, "L40S": 362.1e12}
#: Paper LoRA settings (r=16, alpha=32, dropout 0.05 on every LM projection).
PAPER_LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "targets": "auto"}
WORDS = ["red", "blue", "green", "toy", "car", "doll", "lipstick", "shoe", "running", "beauty",
         "cream", "soft", "large", "small", "kids", "sport", "ball", "gift"]


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)


def lm_shape(emb) -> dict[str, int]:
    """What the FLOP count needs: the language model's layers, query width, parameters
    without embeddings (base weights only) and the LoRA parameters."""
    decoder = emb.backbone.get_decoder()
    cfg = decoder.config
    embed = decoder.get_input_embeddings().weight
    base = sum(p.numel() for n, p in decoder.named_parameters() if "lora_" not in n
               and p is not embed)
    lora = sum(p.numel() for n, p in decoder.named_parameters() if "lora_" in n)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {"n_layers": int(cfg.num_hidden_layers), "d_q": int(cfg.num_attention_heads * head_dim),
            "n_lm": int(base), "n_lora": int(lora)}


def step_flops(shape: dict[str, int], lengths: list[int]) -> float:
    """Model FLOPs of a LoRA step whose forward passes held prompts of these real lengths
    (module docstring)."""
    per_token = 4 * shape["n_lm"] + 6 * shape["n_lora"]
    tokens = sum(lengths)
    squares = sum(length * length for length in lengths)
    return float(per_token * tokens + 6 * shape["n_layers"] * shape["d_q"] * squares)


class _Recorder:
    """Counts the prompts of every forward pass: real and padded tokens, their lengths."""

    def __init__(self, emb):
        self.emb, self.lengths, self.padded, self.passes = emb, [], 0, 0
        self._real = emb._forward
        emb._forward = self  # instance attribute: shadows the method

    def __call__(self, rows, payloads):
        self.lengths += [len(r) for r in rows]
        self.padded += len(rows) * max(len(r) for r in rows)
        self.passes += 1
        return self._real(rows, payloads)

    def reset(self) -> None:
        self.lengths, self.padded, self.passes = [], 0, 0


def _assets(root: Path, size: str, n_items: int, image_px: int, seed: int, family: str):
    from PIL import Image

    from .embedder import ItemContent
    from .tiny import build_tiny_checkpoint

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n_items):
        path = root / "img" / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (image_px, image_px, 3), dtype=np.uint8)).save(path)
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 41))))
        items.append(ItemContent(text=text, image=path))
    ckpt = build_tiny_checkpoint(family, root / f"ckpt_{family}_{size}", [it.text for it in items],
                                 size=size, seed=seed, weights=False)
    return items, ckpt


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> tuple[float, float]:
    _sync(device)
    w, c = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - w, time.process_time() - c


def _oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def run(family: str = "qwen2-vl", size: str = "2b", device: str = "cuda",
        dtype: str = "bfloat16", n_items: int = 512, image_px: int = 224, history: int = 10,
        max_text_tokens: int = 64, encode_batch: int = 64, pairs: list[int] | None = None,
        steps: int = 6, checkpointing: str = "auto", bucket_overhead: int = 1024,
        compile_layers: bool = False, lora: dict | None = None, threads: int = 0,
        seed: int = 0, budget_s: float = 420.0, memory_fraction: float = 0.85,
        out: Path | None = None, work_dir: Path | None = None, echo=print) -> dict[str, Any]:
    """Encoding throughput, then LoRA steps at each batch of ``pairs`` (ascending; stops at the
    first that runs out of memory, exceeds ``memory_fraction`` of the card, or the time
    ``budget_s``). ``checkpointing``: "off", "on", or "auto" (on only if the smallest batch does
    not fit without it). Every figure goes to ``echo`` as a JSON line as soon as it exists and,
    with ``out``, into that JSON file (rewritten each time)."""
    from .embedder import VLMEmbedder
    from .losses import Objective

    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    report: dict[str, Any] = {"family": family, "size": size, "device": device, "dtype": dtype,
                              "image_px": image_px, "history": history,
                              "max_text_tokens": max_text_tokens, "n_items": n_items,
                              "lora": {**PAPER_LORA, **(lora or {})},
                              "bucket_overhead_tokens": bucket_overhead,
                              "torch": torch.__version__, "threads": torch.get_num_threads()}
    if cuda:
        report["gpu"] = torch.cuda.get_device_name(0)
        report["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    peak = peak_flops(report.get("gpu", ""))
    report["peak_bf16_flops"] = peak

    def emit(key: str, value: Any) -> None:
        report[key] = value
        echo(json.dumps({key: value}, default=str))
        if out is not None:
            Path(out).write_text(json.dumps(report, indent=1, default=str) + "\n")

    root = Path(work_dir or tempfile.mkdtemp(prefix="vlm2rec_bench_"))
    items, ckpt = _assets(root, size, n_items, image_px, seed, family)
    rng = np.random.default_rng(seed + 1)
    hists = [[items[j] for j in rng.integers(0, n_items, size=history + 4)]
             for _ in range(n_items)]

    def build(gradient_checkpointing: bool):
        torch.manual_seed(seed)
        kw = {"lora": report["lora"], "history_len": history, "max_text_tokens": max_text_tokens,
              "image_size": image_px, "dtype": dtype, "random_weights": True,
              "gradient_checkpointing": gradient_checkpointing,
              "bucket_overhead_tokens": bucket_overhead}
        try:  # random init straight on the device: seconds instead of minutes for 2b
            emb = VLMEmbedder(ckpt, init_device=device, **kw)
        except (RuntimeError, TypeError, ValueError, NotImplementedError) as err:  # CPU init
            echo(json.dumps({"note": f"init on {device} failed ({err!r}); CPU init"}))
            emb = VLMEmbedder(ckpt, init_device="cpu", **kw)
        emb = emb.to(device)
        if compile_layers:
            for layer in emb.backbone.get_decoder().layers:
                layer.compile(dynamic=True)
        return emb

    t0 = time.perf_counter()
    emb = build(checkpointing == "on")
    shape = lm_shape(emb)
    emit("model", {**shape, "n_params": sum(p.numel() for p in emb.backbone.parameters()),
                   "attn_implementation": emb.backbone.config._attn_implementation,
                   "build_s": round(time.perf_counter() - t0, 1)})
    rec = _Recorder(emb)

    # -- encoding ------------------------------------------------------------------------
    def run_items() -> None:
        for s in range(0, n_items, encode_batch):
            emb.encode_items(items[s:s + encode_batch])

    def run_users() -> None:
        for s in range(0, n_items, encode_batch):
            emb.encode_users(hists[s:s + encode_batch])

    with torch.no_grad():
        cold = _timed(run_items, device)  # image loading, preprocessing, vision tower once each
        rec.reset()
        warm = _timed(run_items, device)
        item_tokens, item_padded = sum(rec.lengths), rec.padded
        rec.reset()
        users = _timed(run_users, device)
        user_tokens, user_padded = sum(rec.lengths), rec.padded
    emit("encoding", {
        "batch": encode_batch, "includes_compilation": compile_layers, "items_per_s_cold": n_items / cold[0],
        "items_per_s": n_items / warm[0], "users_per_s": n_items / users[0],
        "items_per_cpu_s": n_items / warm[1], "users_per_cpu_s": n_items / users[1],
        "lm_tokens_per_item": item_tokens / n_items, "lm_tokens_per_user": user_tokens / n_items,
        "padding_share_items": 1 - item_tokens / item_padded,
        "padding_share_users": 1 - user_tokens / user_padded})

    # -- LoRA steps ----------------------------------------------------------------------
    objective = Objective()
    pairs = sorted(pairs or [8, 16, 32, 48, 64, 96, 128])
    gc_on = checkpointing == "on"
    rows: list[dict] = []
    opt = None

    def step(batch: int, k: int) -> None:
        idx = np.random.default_rng([seed, batch, k]).choice(n_items, size=batch, replace=False)
        u = emb.encode_users([hists[i] for i in idx])
        v = emb.encode_items([items[i] for i in idx])
        loss, _ = objective(u, v, torch.as_tensor(idx, device=u.fused.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    i = 0
    while i < len(pairs):
        batch = pairs[i]
        if time.perf_counter() - t_start > budget_s:
            emit("stopped", f"time budget {budget_s} s reached before {batch} pairs")
            break
        emb.train()
        opt = torch.optim.AdamW(emb.trainable_parameters(), lr=1e-4, fused=cuda)
        try:
            step(batch, 0)  # warm-up (allocator, kernels, token caches)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            rec.reset()
            times = [_timed(lambda b=batch, k=k: step(b, k), device)
                     for k in range(1, steps + 1)]
        except Exception as err:  # out of memory ends the sweep; anything else is raised
            if not _oom(err):
                raise
            opt = None
            emb.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.empty_cache()
            if not rows and checkpointing == "auto" and not gc_on:
                emit("checkpointing", f"{batch} pairs do not fit without it: turned on")
                del emb, rec
                emb, gc_on = build(True), True
                rec = _Recorder(emb)
                continue
            emit("stopped", f"out of memory at {batch} pairs")
            break
        wall = float(np.median([t[0] for t in times]))
        flops = step_flops(shape, rec.lengths) / steps
        row = {"pairs": batch, "gradient_checkpointing": gc_on,
               "ms_per_step": 1000 * wall,
               "ms_per_step_cpu": 1000 * float(np.median([t[1] for t in times])),
               "lm_tokens_per_step": sum(rec.lengths) / steps,
               "padding_share": 1 - sum(rec.lengths) / rec.padded,
               "forward_passes_per_step": rec.passes / steps,
               "model_tflop_per_step": flops / 1e12,
               "model_tflops_per_s": flops / wall / 1e12,
               "mfu": None if peak is None else flops / wall / peak,
               "pairs_per_s": batch / wall}
        if cuda:
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        rows.append(row)
        emit(f"step_{batch}", row)
        i += 1
        if cuda and row["peak_memory_gib"] > memory_fraction * report["gpu_memory_gib"]:
            emit("stopped", f"{batch} pairs use {row['peak_memory_gib']:.1f} GiB")
            break
    if rows:
        best = max(rows, key=lambda r: r["model_tflops_per_s"])
        emit("best", {k: best[k] for k in ("pairs", "ms_per_step", "model_tflops_per_s", "mfu",
                                           "gradient_checkpointing")})
    emit("total_s", round(time.perf_counter() - t_start, 1))
    return report
