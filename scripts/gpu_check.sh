#!/usr/bin/env bash
# One run on a CUDA machine leaves everything needed to publish the GPU numbers:
#   1. the CUDA tests (pytest -m cuda),
#   2. speed_vs_views, efficiency_table and kv_cache at the paper preset with bf16 autocast: latency
#      (CUDA events), model FLOPs, MFU against a bf16 matmul measured in the same run, peak memory and
#      the SDPA kernel actually used; then efficiency_table again under torch.compile.
# Tables, plots, records and the log go to $OUT when it is set, else results/gpu/; at the end
# everything is also packed into gpu_check.tar.gz and the tables into summary.md beside it.
# Budget: about 8 minutes on one H100. Points whose 20 runs would take longer than
# $POINT_BUDGET_S seconds make fewer timed runs (at least $MIN_RUNS); every row records its count.
# Each experiment also stops starting new points after its deadline (the largest N come last);
# the tables list any point left, and rerunning the script measures only those.
# Without CUDA this fails at once (exit 3): it never falls back to the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=${OUT:-results/gpu}
POINT_BUDGET_S=${POINT_BUDGET_S:-12}
MIN_RUNS=${MIN_RUNS:-5}
declare -A DEADLINE_S=([efficiency_table]=${EFFICIENCY_DEADLINE_S:-60} [kv_cache]=${KV_DEADLINE_S:-150} [speed_vs_views]=${SPEED_DEADLINE_S:-210})
mkdir -p "$DEST"
LOG="$DEST/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1

echo "== gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) -> $DEST"
"$PY" - <<'PYEOF'
import sys
import torch
if not torch.cuda.is_available():
    print("gpu-check: no CUDA device (torch.cuda.is_available() is False); this script only measures on a GPU",
          file=sys.stderr)
    sys.exit(3)
print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
PYEOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
git rev-parse --short HEAD 2>/dev/null | sed 's/^/commit: /' || true

start=$(date +%s)
echo "== CUDA tests"
# A failing test is reported (and fails the script at the end) but the measurements still run.
tests_status=0
"$PY" -m pytest -m cuda -q -p no:cacheprovider tests 2>&1 | tee "$DEST/pytest_cuda.txt" || tests_status=$?

for experiment in efficiency_table kv_cache speed_vs_views; do
    echo "== $experiment ($(( $(date +%s) - start )) s so far)"
    "$PY" -m harness run "experiments/$experiment.yaml" --preset paper \
        --set measure.device=cuda --set measure.dtype=bfloat16 --set "output_dir=$DEST/$experiment" \
        --set "measure.time_budget_s=$POINT_BUDGET_S" --set "measure.min_runs=$MIN_RUNS" --set "measure.deadline_s=${DEADLINE_S[$experiment]}"
done

echo "== efficiency_table with torch.compile (compile time reported apart from latency) ($(( $(date +%s) - start )) s so far)"
"$PY" -m harness run experiments/efficiency_table.yaml --preset paper \
    --set measure.device=cuda --set measure.dtype=bfloat16 --set measure.compile=true \
    --set "output_dir=$DEST/efficiency_table_compiled" --set "measure.time_budget_s=$POINT_BUDGET_S" \
    --set "measure.min_runs=$MIN_RUNS" --set "measure.deadline_s=${COMPILE_DEADLINE_S:-90}" || echo "gpu-check: the compiled pass failed (see above)"

for md in "$DEST"/*/*.md; do printf '\n<!-- %s -->\n' "$md"; cat "$md"; done > "$DEST/summary.md"
tar -czf "$DEST/gpu_check.tar.gz" -C "$DEST" --exclude gpu_check.tar.gz .
echo "== gpu-check done in $(( $(date +%s) - start )) s: $DEST/summary.md, $DEST/gpu_check.tar.gz"
if [ "$tests_status" -ne 0 ]; then
    echo "gpu-check: CUDA tests FAILED (pytest exit $tests_status); see $DEST/pytest_cuda.txt" >&2
    exit "$tests_status"
fi
