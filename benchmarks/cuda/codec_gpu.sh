#!/usr/bin/env bash
# The boundary codec on the GPU machine in one call: configure, build test_cuda_codec and
# bench_codec_cuda, run the test, the benchmark (one boundary of Resbm<2> and Resbm<8> at
# d = 768, 16k tokens), then compute-sanitizer memcheck of the whole test. Logs under $OUT
# (or ./gpu-logs); the table last. Usage: benchmarks/cuda/codec_gpu.sh
#   (CODEC_REPS=50, CODEC_STEP_MS=28.9, CODEC_SANITIZE=0 skips memcheck)
set -u
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
declare -a SUMMARY
step() {  # step NAME TIMEOUT CMD...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  SUMMARY+=("$(printf '%-12s rc=%-4s %4ss' "$name" "$rc" "$(( $(date +%s) - t0 ))")")
  return $rc
}
nvidia-smi -L; nvcc --version | tail -1
step configure 90 cmake -S . -B build-gpu -G Ninja -DRESBM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DRESBM_BUILD_EXAMPLES=OFF -DRESBM_BUILD_BENCHMARKS=OFF || tail -30 "$OUT/configure.log"
step build 300 ninja -C build-gpu -j16 test_cuda_codec bench_codec_cuda || grep -E "error" -A5 "$OUT/build.log" | head -60
T=build-gpu/tests/test_cuda_codec
step test 150 $T
step bench 90 build-gpu/bench_codec_cuda "${CODEC_REPS:-50}" "${CODEC_STEP_MS:-28.9}" 4
if [ "${CODEC_SANITIZE:-1}" = 1 ]; then
  step memcheck 200 compute-sanitizer --tool memcheck --error-exitcode 9 $T
fi
echo "== test =="; grep -E "rel err|bytes equal|FAILED|failed|passed|test cases|error" "$OUT/test.log" | head -80
if [ "${CODEC_SANITIZE:-1}" = 1 ]; then
  echo "== memcheck =="; grep -hE "ERROR SUMMARY|test cases" "$OUT/memcheck.log"
fi
echo "== summary =="; printf '%s\n' "${SUMMARY[@]}"
echo "== bench =="; cat "$OUT/bench.log"
