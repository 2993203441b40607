#!/usr/bin/env bash
# GPU check of VLM2Rec at Qwen2-VL-2B's shape, one command, <= 8 minutes on one H100/H200:
# random weights (nothing downloaded), bf16 under autocast, 224 px images, histories of 10
# items. Prints, each as a JSON line as soon as it exists: the model's shape, encoding items/s
# and users/s, then for growing batches of (user, item) pairs ms per LoRA step, tokens, padding,
# peak memory, model TFLOP/s and MFU (FLOP count: methods/vlm2rec/bench.py); then the same
# LoRA step with every decoder layer under torch.compile. Files: $OUT/gpu_check.json and
# $OUT/gpu_check_compile.json (OUT defaults to /tmp/out).
#
# On a machine whose Python lacks the project's pinned transformers / tokenizers / peft,
# put their wheels in .devicewheels/ first (pip download --no-deps transformers==5.24.0
# tokenizers==0.23.3 peft==0.21.2 regex -d .devicewheels); they are installed into /tmp/pp.
# `bash scripts/gpu_check.sh --smoke` runs the eager part on CPU at the tiny shape.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if ! "$PY" -c "import transformers, peft, tokenizers" 2>/dev/null; then
  ls .devicewheels/*.whl > /dev/null 2>&1 || { echo "transformers/peft missing and no .devicewheels/"; exit 3; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/pp \
    .devicewheels/*.whl > /tmp/pip.log 2>&1 || { tail -5 /tmp/pip.log; exit 3; }
  export PYTHONPATH=/tmp/pp:$PWD
fi
"$PY" -c "import torch, transformers, peft; print({'torch': torch.__version__, 'transformers': transformers.__version__, 'peft': peft.__version__, 'cuda': torch.cuda.is_available() and torch.cuda.get_device_name(0)})"
if [ "${1:-}" = "--smoke" ]; then
  exec timeout 300 "$PY" scripts/bench_vlm2rec_gpu.py "$@"
fi
# eager: batch sweep until memory runs out (about 2-3 minutes)
timeout 270 "$PY" scripts/bench_vlm2rec_gpu.py --budget-s 200 --out "$OUT/gpu_check.json" "$@"
echo "== eager rc=$?"
# compiled decoder layers, two batches (compilation dominates; stops at the time budget)
timeout 190 "$PY" scripts/bench_vlm2rec_gpu.py --compile --pairs 8,16 --steps 4 --items 256 \
  --budget-s 150 --out "$OUT/gpu_check_compile.json" "$@"
echo "== compile rc=$?"
