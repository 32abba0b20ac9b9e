#!/usr/bin/env bash
# Where the time goes, in one call on the GPU machine: ncu's stall reasons, pipe use and
# occupancy of the two wgmma attention kernels at the training shapes (the timing cases of
# their tests), and ncu's per-kernel totals of one step of resbm-train-cuda on config (a) as 1 stage, 4
# stages with the dense bf16 boundary and 4 with the resbm codec (rank 2), side by side (what
# the stages and the codec add, kernel by kernel), and of config (b) by kind (GEMM, attention,
# the rest). Logs under $OUT (or ./gpu-logs).
# Usage: benchmarks/cuda/profile_gpu.sh   (PROFILE_NCU=0 / PROFILE_STEP=0 skip a half)
source "$(dirname "$0")/gpu_steps.sh"
configure_gpu 120
step build 400 ninja -C build-gpu test_cuda_attention_wgmma test_cuda_attention_wgmma_bwd resbm-train-cuda ||
  grep error -A5 "$OUT/build.log" | head -40
if [ "${PROFILE_NCU:-1}" = 1 ]; then
  S="--section SpeedOfLight --section WarpStateStats --section ComputeWorkloadAnalysis --section Occupancy"
  S="$S --section LaunchStats --section SchedulerStats --section MemoryWorkloadAnalysis"
  step ncu_fwd 150 ncu --clock-control none --kernel-name regex:fwd_tma --launch-skip 3 --launch-count 1 $S \
    build-gpu/tests/test_cuda_attention_wgmma "*timing*"
  step ncu_bwd 150 ncu --clock-control none --kernel-name-base demangled --kernel-name "regex:bwd_tma<.int.64>" --launch-skip 3 --launch-count 1 $S \
    build-gpu/tests/test_cuda_attention_wgmma_bwd "*timing*"
  for f in ncu_fwd ncu_bwd; do
    echo "== $f"
    grep -E "^  [a-z_]+.*\(|Duration|Throughput|Occupancy|Registers Per|Block Limit|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Eligible Warps|Executed Ipc|Bank" "$OUT/$f.log" | head -34
    grep -iE "stall|pipe |bottleneck|estimated speedup" "$OUT/$f.log" | cut -c1-200 | head -20
  done
fi
if [ "${PROFILE_STEP:-1}" = 1 ]; then
  # ncu times each kernel of step 3 alone (--profile-step brackets it); the same flags unprofiled
  # give the step time, so step time - kernel total = what launches and syncs leave idle.
  TRAIN="build-gpu/examples/resbm-train-cuda --optimizer adamw"  # as gpu_compare.sh
  A="--layers 12 --d-model 768 --heads 12 --seq 1024 --batch 16 --warmup 2 --eval-batches 1"
  for c in "s1:" "s4d:--stages 4 --codec dense" "s4r:--stages 4 --codec resbm --rank 2"; do
    n=${c%%:*}
    step run_$n 120 $TRAIN $A --steps 20 ${c#*:}
    step ncu_$n 240 ncu --clock-control none --profile-from-start off --metrics gpu__time_duration.sum --csv \
      $TRAIN $A --steps 4 --profile-step 3 ${c#*:}
  done
  B="--layers 8 --d-model 2048 --heads 16 --seq 1024 --batch 16 --warmup 2 --eval-batches 1"
  step run_b1 120 $TRAIN $B --steps 12
  step ncu_b1 240 ncu --clock-control none --profile-from-start off --metrics gpu__time_duration.sum --csv \
    $TRAIN $B --steps 4 --profile-step 3
  python3 "$(dirname "$0")/kernel_diff.py" "$OUT" s1 s4d s4r
  python3 "$(dirname "$0")/kernel_diff.py" "$OUT" b1 2>/dev/null | head -3
  grep -h RESULT "$OUT"/run_*.log | cut -c1-200
fi
summary
