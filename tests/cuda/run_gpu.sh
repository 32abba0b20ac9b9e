#!/usr/bin/env bash
# Build + test + sanitize + time the CUDA backend in one go on the GPU machine.
# Logs under $OUT (or ./gpu-logs); a short table last. Usage: tests/cuda/run_gpu.sh
source "$(dirname "$0")/../../benchmarks/cuda/gpu_steps.sh"
configure_gpu 120
# every CUDA test binary (tests/cuda/test_*.cu), which ctest -L cuda runs below
tests=$(ninja -C build-gpu -t targets all | grep -oE '^test_cuda_[a-z0-9_]+' | sort -u | tr '\n' ' ')
step build 400 ninja -C build-gpu $tests bench_kernels_cuda || { grep -E "error" -A5 "$OUT/build.log" | head -60; }
T=build-gpu/tests/test_cuda_ops
step test 200 $T
step ctest 200 ctest --test-dir build-gpu -L cuda --output-on-failure
step memcheck 240 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 $T
step racecheck 300 compute-sanitizer --tool racecheck --error-exitcode 9 $T
# attention's default backward adds dq with atomics (varies by design; its own test checks the
# deterministic path repeats bitwise), so the repeat leaves the attention cases out
step repeat 120 bash -c "for i in 1 2 3; do $T '~*attention*' | grep 'rel err' | md5sum; done"
step bench 150 build-gpu/bench_kernels_cuda 20
echo "== test (rel errors) =="; grep -E "rel err|^(matmul|embedding|rmsnorm|cross|attention) |FAILED|failed|passed|REQUIRE|CHECK\(" "$OUT/test.log" | head -150
echo "== sanitizers =="; grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY|test cases" "$OUT/memcheck.log" "$OUT/racecheck.log"
echo "== repeat (same rel errors each run?) =="; cat "$OUT/repeat.log"
echo "== ctest =="; tail -4 "$OUT/ctest.log"
echo "== bench =="; sed -n '/op (B=16/,$p' "$OUT/bench.log"
summary
