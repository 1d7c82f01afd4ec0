#!/usr/bin/env bash
# `make gpu-check`: on a machine with an NVIDIA GPU and a python3 that holds torch (no network,
# no .venv). Builds fastnets in place with the CUDA kernels, runs the CUDA tests, then
# `python -m fastnets bench --device cuda --quick`, the demo and a short precision sweep on CUDA,
# and prints the benchmark table last. Logs (at most 8 files) go to $OUT (default gpu-check-logs/).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-gpu-check-logs}
mkdir -p "$OUT"
export OUT
export PYTHONUNBUFFERED=1
status=0

step() {  # step NAME COMMAND...: runs it, output to the terminal and $OUT/NAME.log
  local name=$1; shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "== $name FAILED (exit $rc)"; status=1; }
  return "$rc"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/env.log"
# Compile for this GPU only (half the nvcc time of the default sm_80 + sm_90).
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
step build env FASTNETS_CUDA=1 MAX_JOBS="$(nproc)" "$PY" setup.py --quiet build_ext --inplace || exit 1
"$PY" -m fastnets info 2>&1 | tee -a "$OUT/env.log"
# Spread the tests over processes and stop a hung kernel when the plugins are there (device time is short).
has() { "$PY" -c "import $1" 2>/dev/null; }
test_args=()
has xdist && test_args+=(-n 8)
has pytest_timeout && test_args+=(--timeout 300)
step tests "$PY" -m pytest tests -q -ra -m cuda -p no:cacheprovider "${test_args[@]}"
rm -f "$OUT/bench.json"  # never summarise an earlier run
step bench timeout 900 "$PY" -m fastnets bench --device cuda --quick
# The tools on the GPU: the main job (also data-parallel through NCCL on one GPU) and a short
# precision sweep; their tables go to tools.log, their files to a scratch folder.
tools=$(mktemp -d)
step tools bash -c "timeout 300 '$PY' -m fastnets demo --device cuda --out '$tools/demo' && \
  timeout 300 '$PY' -m torch.distributed.run --standalone --nproc_per_node 1 -m fastnets demo --distributed \
    --device cuda --model lenet5 --epochs 1 --out '$tools/ddp' && \
  timeout 300 '$PY' -m fastnets precision --device cuda --fl 8,14 --seeds 1 --epochs 5 --json '$tools/precision.json'"

echo
echo "== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
grep -E "passed|failed|error" "$OUT/tests.log" | tail -1
[ -f "$OUT/bench.json" ] && "$PY" -m fastnets bench --load "$OUT/bench.json" | tee "$OUT/summary.md"
exit $status
