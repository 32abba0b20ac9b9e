#!/usr/bin/env bash
# The codec's wire kernels (ops/cuda/wire.cuh) on the GPU machine in one call: configure,
# build test_cuda_wire and bench_wire_cuda, run the test, compute-sanitizer memcheck of the
# whole test and racecheck of the fused kernel's cases, then the bandwidth table. Logs under
# $OUT (or ./gpu-logs); the table last. Usage: benchmarks/cuda/wire_gpu.sh  (WIRE_REPS=30,
# WIRE_SANITIZE=0 skips the sanitizers)
source "$(dirname "$0")/gpu_steps.sh"
configure_gpu 90
step build 240 ninja -C build-gpu test_cuda_wire bench_wire_cuda || grep -E "error" -A5 "$OUT/build.log" | head -60
T=build-gpu/tests/test_cuda_wire
step test 120 $T
step bench 120 build-gpu/bench_wire_cuda "${WIRE_REPS:-30}"
if [ "${WIRE_NCU:-0}" = 1 ]; then  # hardware counters of the 1M-token kernels
  for k in int8_encode_lanes fused_linear; do
    step ncu_$k 150 ncu --clock-control none --kernel-name "regex:$k" --launch-count 1 --section SpeedOfLight \
      --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
      --section ComputeWorkloadAnalysis --section SchedulerStats build-gpu/bench_wire_cuda 3 large
  done
fi
if [ "${WIRE_SANITIZE:-1}" = 1 ]; then
  step memcheck 180 compute-sanitizer --tool memcheck --error-exitcode 9 $T
  step racecheck 100 compute-sanitizer --tool racecheck --error-exitcode 9 $T "cuda fused encoder output + int8 wire*"
fi
echo "== test =="; grep -E "DIFFER|differ|FAILED|failed|passed|test cases|z err" "$OUT/test.log" | sort | uniq -c | sort -rn | head -12
grep -E "rank 64 .* r 64|non-finite" "$OUT/test.log" | head -6
if [ "${WIRE_SANITIZE:-1}" = 1 ]; then
  echo "== sanitizers =="; grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|test cases" "$OUT/memcheck.log" "$OUT/racecheck.log"
fi
if [ "${WIRE_NCU:-0}" = 1 ]; then
  echo "== ncu =="; grep -hE "^  [a-z_]+.*\(|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\)|Achieved Occupancy|Registers Per|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Stall|L1/TEX Hit|L2 Hit|Executed Ipc A" \
    "$OUT"/ncu_*.log | head -60
fi
summary
echo "== bench =="; sed -n '/^wire kernels/,$p' "$OUT/bench.log"; tail -3 "$OUT/bench.log"
