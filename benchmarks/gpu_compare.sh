#!/usr/bin/env bash
# resbm-train-cuda against PyTorch (eager and torch.compile; bf16 autocast, SDPA, fused
# AdamW) on the same model, batch and byte vocabulary, plus a GEMM ceiling and the D2D
# copy bandwidth, in one go on the GPU machine; and resbm as 4 pipeline stages in one process
# with the resbm codec (rank 2) and the dense bf16 wire at the 3 boundaries, whose step time
# against 1 stage is what the bottleneck costs; and the per-kernel times at (a)'s shapes
# (bench_kernels_cuda) and the wire kernels' bandwidth against a same-size copy
# (bench_wire_cuda). Logs under $OUT (or ./gpu-logs); a short table last.
# Usage: benchmarks/gpu_compare.sh   (GPU_COMPARE_TESTS=0 skips the CUDA tests,
# GPU_COMPARE_TORCH=0 the PyTorch runs, GPU_COMPARE_STAGES=0 the 4-stage runs,
# GPU_COMPARE_KERNELS=0 the kernel benchmarks; PY=... picks the Python that has torch)
source "$(dirname "$0")/cuda/gpu_steps.sh"
PY=${PY:-/opt/torch/.venv/bin/python3}
STEPS=${STEPS:-30}
configure_gpu 120
targets="resbm-train-cuda"
[ "${GPU_COMPARE_KERNELS:-1}" = 1 ] && targets="$targets bench_kernels_cuda bench_wire_cuda"
[ "${GPU_COMPARE_TESTS:-1}" = 1 ] && targets="$targets test_cuda_ops test_cuda_model test_cuda_pipeline \
  test_cuda_attention_wgmma test_cuda_attention_wgmma_bwd"
step build 400 ninja -C build-gpu $targets || grep -E "error" -A5 "$OUT/build.log" | head -60
if [ "${GPU_COMPARE_TESTS:-1}" = 1 ]; then
  step test_ops 240 build-gpu/tests/test_cuda_ops
  step test_model 120 build-gpu/tests/test_cuda_model
  step test_pipeline 120 build-gpu/tests/test_cuda_pipeline
  step test_attn_fwd 120 build-gpu/tests/test_cuda_attention_wgmma
  step test_attn_bwd 120 build-gpu/tests/test_cuda_attention_wgmma_bwd
  for t in attention_wgmma attention_wgmma_bwd; do  # the TMA kernels' mbarrier rings and shared staging
    step race_$t 300 compute-sanitizer --tool racecheck --error-exitcode 9 build-gpu/tests/test_cuda_$t "~*timing*"
  done
fi
step ceiling 120 "$PY" benchmarks/torch_gpu.py ceiling
TRAIN="build-gpu/examples/resbm-train-cuda --optimizer adamw"  # AdamW, as benchmarks/torch_gpu.py
step resbm_a 180 $TRAIN --layers 12 --d-model 768 --heads 12 --seq 1024 --batch 16 --steps "$STEPS" --warmup 10 --eval-batches 2
step resbm_b 240 $TRAIN --layers 8 --d-model 2048 --heads 16 --seq 1024 --batch 16 --steps "$STEPS" --warmup 10 --eval-batches 2
# the same (a) with Muon (Newton-Schulz on cuBLASLt for every matrix; what the optimizer costs)
step resbm_a_muon 180 ${TRAIN/adamw/muon} --layers 12 --d-model 768 --heads 12 --seq 1024 --batch 16 --steps "$STEPS" --warmup 10 --eval-batches 2
if [ "${GPU_COMPARE_STAGES:-1}" = 1 ]; then
  for key in a b; do
    [ $key = a ] && M="--layers 12 --d-model 768 --heads 12" || M="--layers 8 --d-model 2048 --heads 16"
    step resbm_${key}_s4resbm 240 $TRAIN $M --seq 1024 --batch 16 --steps "$STEPS" --warmup 10 --eval-batches 2 \
      --stages 4 --codec resbm --rank 2
    step resbm_${key}_s4dense 240 $TRAIN $M --seq 1024 --batch 16 --steps "$STEPS" --warmup 10 --eval-batches 2 \
      --stages 4 --codec dense
  done
fi
if [ "${GPU_COMPARE_KERNELS:-1}" = 1 ]; then
  step kernels 120 build-gpu/bench_kernels_cuda 20
  step wire 120 build-gpu/bench_wire_cuda 20
fi
[ "${GPU_COMPARE_TORCH:-1}" = 1 ] && for m in eager compile; do
  step torch_a_$m 200 "$PY" benchmarks/torch_gpu.py model --layers 12 --d-model 768 --heads 12 --seq 1024 --batch 16 --mode $m --steps 20
  step torch_b_$m 200 "$PY" benchmarks/torch_gpu.py model --layers 8 --d-model 2048 --heads 16 --seq 1024 --batch 16 --mode $m --steps 20
done

if [ "${GPU_COMPARE_TESTS:-1}" = 1 ]; then
  echo "== tests =="
  grep -hE "rel err|loss cpu|init:|slices:|gradients:|weights after|attention \(|dense:|resbm:|test cases|FAILED" \
    "$OUT/test_ops.log" "$OUT/test_model.log" "$OUT/test_pipeline.log" | grep -vE "^  grad " | head -120
  grep -hE "^timing|test cases|FAILED" "$OUT/test_attn_fwd.log" "$OUT/test_attn_bwd.log"
  grep -hE "RACECHECK SUMMARY" "$OUT"/race_*.log
fi
echo "== resbm-train-cuda =="; grep -hE "^step|RESULT|error" "$OUT/resbm_a.log" "$OUT/resbm_b.log" | tail -20
if [ "${GPU_COMPARE_KERNELS:-1}" = 1 ]; then
  echo "== kernels (a) =="; sed -n '/^op (B=/,$p' "$OUT/kernels.log"
  echo "== wire vs copy =="; tail -40 "$OUT/wire.log"
fi
summary
echo "== table =="
"$PY" - "$OUT" <<'EOF'
import json, sys, glob, os
out = sys.argv[1]
def grab(name, tag):
    try:
        for line in open(os.path.join(out, name + ".log")):
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1:])
    except OSError:
        pass
    return None
ceil = grab("ceiling", "TORCH") or {}
peak = ceil.get("gemm_8192_bf16_tflops")
print(f"GEMM 8192^3 bf16: {peak or float('nan'):.0f} TFLOP/s, D2D copy {ceil.get('d2d_copy_gbps', float('nan')):.0f} GB/s "
      f"({ceil.get('device', '?')})")
cfgs = {"a": (12, 768, 12, 2048), "b": (8, 2048, 16, 5472)}
print(f"{'config':<28}{'impl':<16}{'tok/s':>12}{'step ms':>10}{'vs compile':>12}{'MFU':>8}")
for key, (L, d, H, F) in cfgs.items():
    T, V = 1024, 256
    flops_tok = 6 * (L * (4 * d * d + 3 * d * F) + V * d) + 6 * L * T * d  # causal attention: half of 12·L·T·d
    rows = [("resbm", grab(f"resbm_{key}", "RESULT")), ("torch eager", grab(f"torch_{key}_eager", "TORCH")),
            ("torch compile", grab(f"torch_{key}_compile", "TORCH"))]
    rows += [(f"resbm 4st {c}", r) for c in ("resbm", "dense") if (r := grab(f"resbm_{key}_s4{c}", "RESULT"))]
    if (r := grab(f"resbm_{key}_muon", "RESULT")):
        rows.append(("resbm muon", r))
    comp = rows[2][1]["tokens_per_s"] if rows[2][1] else None
    for impl, r in rows:
        if not r:
            print(f"{f'({key}) L{L} d{d} H{H} B16 T1024':<28}{impl:<16}{'failed':>12}")
            continue
        tps = r["tokens_per_s"]
        ms = r["step_ms"]
        ratio = f"{tps / comp:.2f}x" if comp else "-"
        mfu = f"{100 * tps * flops_tok / (peak * 1e12):.0f}%" if peak else "-"
        extra = ""
        if impl == "resbm muon" and rows[0][1]:
            extra = f"  step +{100 * (ms / rows[0][1]['step_ms'] - 1):.2f}% vs AdamW"
        if impl.startswith("resbm 4st") and rows[0][1]:
            extra = (f"  step +{100 * (ms / rows[0][1]['step_ms'] - 1):.2f}% vs 1 stage, "
                     f"{r.get('compression_ratio', 0):.0f}x fewer bytes, val {r['val_loss']:.3f} (1 stage {rows[0][1]['val_loss']:.3f})")
        print(f"{f'({key}) L{L} d{d} H{H} B16 T1024':<28}{impl:<16}{tps:>12,.0f}{ms:>10.1f}{ratio:>12}{mfu:>8}{extra}")
EOF
