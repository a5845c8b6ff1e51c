#!/usr/bin/env bash
# CUDA benchmark preset: the kernel, neighbourhood, sparse-video and agent benchmark scripts on CUDA (those with a
# --device flag; SDPA/FlexAttention/xformers comparisons are inside them where installed), then end-to-end pipeline
# benchmarks through `attnplug bench` on the embedded models (fp16, warmed-up, interleaved, CUDA-synchronised).
# Installs nothing. Writes JSON under benchmarks/results/gpu/ (or $1). Only for a machine with a GPU (not CI):
#   bash benchmarks/gpu.sh [OUT_DIR]        # also: attnplug bench --suite gpu
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-benchmarks/results/gpu}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: no CUDA device here; nothing was run." >&2
  exit 2
fi
mkdir -p "$OUT"
status=0
run() {
  local name=$1; shift
  echo "== $name: $*"
  if "$@"; then echo "ok: $name"; else echo "FAILED: $name"; status=1; fi
}

for script in kernel_bench neighborhood_bench video_bench agent_bench; do
  if "$PY" "benchmarks/$script.py" --help 2>/dev/null | grep -q -- "--device"; then
    run "$script" "$PY" "benchmarks/$script.py" --device cuda --out "$OUT/$script.json"
  else
    echo "skip: $script has no --device flag (CPU-only script)"
  fi
done

BENCH=("$PY" -m attnplug bench --device cuda --dtype float16 --warmup 1 --repeats 3 --seeds 0-3 --no-progress)
run pipeline-unet "${BENCH[@]}" --model shapes-unet --height 64 --width 64 --steps 20 \
  --methods "stock,dense,agent,neighborhood,window" --prompt "red circle" --prompt "blue square" \
  --out "$OUT/pipeline-shapes-unet"
run pipeline-dit "${BENCH[@]}" --model shapes-dit --height 64 --width 64 --steps 20 \
  --methods "stock,dense,agent,neighborhood" --prompt "green triangle" --out "$OUT/pipeline-shapes-dit"
run pipeline-video "${BENCH[@]}" --model shapes-video --frames 32 --steps 20 \
  --methods "stock,dense,sparse_video,sparse_video[pattern=topk]" --prompt "red circle moving right" \
  --out "$OUT/pipeline-shapes-video"
for d in "$OUT"/pipeline-*/; do
  [ -f "$d/report.json" ] && cp "$d/report.json" "$OUT/$(basename "$d").json"
done
echo "gpu.sh: results in $OUT/ (exit $status)"
exit $status
