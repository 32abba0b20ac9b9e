#!/usr/bin/env bash
# The boundary codec on the GPU machine in one call: configure, build test_cuda_codec and
# bench_codec_cuda, run the test, the benchmark (one boundary of Resbm<2> and Resbm<8> at
# d = 768, 16k tokens), then compute-sanitizer memcheck and racecheck of the whole test. Logs under $OUT
# (or ./gpu-logs); the table last. Usage: benchmarks/cuda/codec_gpu.sh
#   (CODEC_REPS=50, CODEC_STEP_MS=28.9, CODEC_SANITIZE=0 skips memcheck, CODEC_NCU=1 adds
#   ncu's duration of each kernel of one Resbm<CODEC_NCU_RANK=2> round)
source "$(dirname "$0")/gpu_steps.sh"
configure_gpu 90
step build 300 ninja -C build-gpu -j16 test_cuda_codec bench_codec_cuda || grep -E "error" -A5 "$OUT/build.log" | head -60
T=build-gpu/tests/test_cuda_codec
step test 150 $T
step bench 90 build-gpu/bench_codec_cuda "${CODEC_REPS:-50}" "${CODEC_STEP_MS:-28.9}" 4
if [ "${CODEC_NCU:-0}" = 1 ]; then  # per-kernel durations of one measured round of Resbm<CODEC_NCU_RANK>
  step ncu 200 ncu --clock-control none --csv --metrics gpu__time_duration.sum build-gpu/bench_codec_cuda 1 28.9 4 1 \
    "${CODEC_NCU_RANK:-2}"
fi
if [ "${CODEC_SANITIZE:-1}" = 1 ]; then
  step memcheck 200 compute-sanitizer --tool memcheck --error-exitcode 9 $T
  step racecheck 200 compute-sanitizer --tool racecheck --error-exitcode 9 $T
fi
echo "== test =="; grep -E "Resbm|rel err|bytes equal|FAILED|failed|passed|test cases|error" "$OUT/test.log" | grep -v silu | head -90
if [ "${CODEC_SANITIZE:-1}" = 1 ]; then
  echo "== sanitizers =="; grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|test cases" "$OUT/memcheck.log" "$OUT/racecheck.log"
fi
if [ "${CODEC_NCU:-0}" = 1 ]; then
  echo "== ncu: last round, kernel µs =="
  python3 - "$OUT/ncu.log" <<'PY'
import csv, sys
lines = open(sys.argv[1]).read().splitlines()
start = next(i for i, l in enumerate(lines) if l.startswith('"ID"'))
rd = list(csv.reader(lines[start:]))
h = rd[0]
K, M, U, V = h.index("Kernel Name"), h.index("Metric Name"), h.index("Metric Unit"), h.index("Metric Value")
scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}
rows = [(r[K], float(r[V].replace(",", "")) * scale[r[U]]) for r in rd[1:]
        if len(r) > V and r[M] == "gpu__time_duration.sum" and "fill_normal" not in r[K] and "cast_kernel" not in r[K]]
half = rows[len(rows) // 2:]
for name, us in half:
    print(f"{us:8.1f}  {name[:110]}")
print(f"{sum(us for _, us in half):8.1f}  total of {len(half)} kernels")
PY
fi
summary
echo "== bench =="; cat "$OUT/bench.log"
