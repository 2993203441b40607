#!/usr/bin/env bash
# GPU check for the VLM2Rec embedder at a realistic size (one command, a few minutes on one GPU):
# a Qwen2-VL-2B-shaped model with random weights, bf16, gradient checkpointing, 224 px images;
# prints items/s, users/s, ms per LoRA step, peak memory and an MFU estimate as one JSON line
# (also written to $OUT/gpu_check.json when OUT is set). Not runnable without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
result=$("$PY" -m methods.vlm2rec.tiny qwen2-vl 2b 8 --device cuda --dtype bfloat16 \
  --gradient-checkpointing --items 256 --image-px 224 | tail -n 1)
echo "$result"
if [ -n "${OUT:-}" ]; then printf '%s\n' "$result" > "$OUT/gpu_check.json"; fi
