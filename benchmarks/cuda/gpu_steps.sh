# Sourced by the one-call scripts of the GPU machine (benchmarks/gpu_compare.sh,
# benchmarks/cuda/*_gpu.sh, tests/cuda/run_gpu.sh): logs go under $OUT (or ./gpu-logs);
# `step NAME TIMEOUT CMD...` runs CMD into $OUT/NAME.log and keeps its status and time for
# `summary`; `configure_gpu TIMEOUT` configures build-gpu for Hopper, the same way in every
# script so that one build folder serves them all.
set -u
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
declare -a SUMMARY
step() {  # step NAME TIMEOUT CMD...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  SUMMARY+=("$(printf '%-16s rc=%-4s %4ss' "$name" "$rc" "$(( $(date +%s) - t0 ))")")
  return $rc
}
configure_gpu() {  # configure_gpu TIMEOUT
  nvidia-smi -L; nvcc --version | tail -1
  step configure "$1" cmake -S . -B build-gpu -G Ninja -DRESBM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DRESBM_BUILD_BENCHMARKS=OFF || tail -30 "$OUT/configure.log"
}
summary() { echo "== summary =="; printf '%s\n' "${SUMMARY[@]}"; }
