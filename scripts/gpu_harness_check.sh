#!/usr/bin/env bash
# The harness's CUDA path end to end (bench run / robustness / diagnose, bf16 VLM2Rec, and the
# same runs on CPU) on the embedded synthetic dataset, tiny presets, one seed; ~2 min on one GPU.
# For a machine without the project's environment: the wheels of the pinned packages it lacks
# (transformers, tokenizers, peft, regex, recbole, colorlog, texttable, wcwidth, pandas<3, pytz,
# tzdata; `pip download --no-deps`) in .devicewheels/, installed into /tmp/pp. Outputs in $OUT.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/pp \
  .devicewheels/*.whl > /tmp/pip.log 2>&1 || { tail -5 /tmp/pip.log; echo PIP_FAILED; exit 3; }
export PYTHONPATH=/tmp/pp:$PWD
python3 -c "import torch, pandas, recbole, transformers; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'pandas', pandas.__version__, 'recbole', recbole.__version__, 'transformers', transformers.__version__)" || exit 4
B="python3 -m benchmark.cli"
common="--seeds 0 --no-tracking -q --data-dir /tmp/data"
step() { local name=$1; shift; local t0=$(date +%s.%N); timeout 200 "$@" > /tmp/step.log 2>&1; local rc=$?; cat /tmp/step.log >> "$OUT/logs.txt"; \
  echo "== $name rc=$rc wall=$(python3 -c "print(round($(date +%s.%N)-$t0,1))")s"; tail -n 14 /tmp/step.log; }
step run_cuda $B run --models sasrec,clip_sasrec,vlm2rec,vlm2rec_sasrec --device cuda $common --results-dir /tmp/res_cuda
step robust_cuda $B robustness --drop-image --image-noise --rates 0,1 --models clip_sasrec,vlm2rec,vlm2rec_sasrec --device cuda $common --results-dir /tmp/res_cuda
step diagnose_cuda $B diagnose accuracy --models vlm2rec,vlm2rec_sasrec --device cuda $common --results-dir /tmp/res_cuda
step run_cuda_bf16 $B run --models vlm2rec --set bf16=true --device cuda $common --results-dir /tmp/res_bf16
step run_cpu $B run --models sasrec,clip_sasrec,vlm2rec,vlm2rec_sasrec --device cpu $common --results-dir /tmp/res_cpu
cp /tmp/res_cuda/accuracy/summary.json "$OUT/summary_cuda.json" 2>/dev/null
cp /tmp/res_cuda/accuracy/robustness.json "$OUT/robustness_cuda.json" 2>/dev/null
cp /tmp/res_cuda/accuracy/diagnostics.json "$OUT/diagnostics_cuda.json" 2>/dev/null
cp /tmp/res_bf16/accuracy/summary.json "$OUT/summary_cuda_bf16.json" 2>/dev/null
cp /tmp/res_cpu/accuracy/summary.json "$OUT/summary_cpu.json" 2>/dev/null
