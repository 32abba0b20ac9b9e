#!/usr/bin/env bash
# Trains the same model with every boundary codec (4 stages, same steps, optimizer and
# seed) and writes one metrics file and one RESULT line per codec into OUT_DIR.
# usage: benchmarks/codec_results.sh BUILD_DIR OUT_DIR [extra resbm-train flags...]
set -euo pipefail
build=$1 out=$2
shift 2
mkdir -p "$out"
common=(--d-model 256 --layers 4 --heads 4 --seq 128 --batch 16 --steps 400 --warmup 20
        --stages 4 --eval-every 50 --eval-batches 8 --optimizer muon --seed 1 "$@")
run() {
  local name=$1
  shift
  "$build/examples/resbm-train" "${common[@]}" "$@" --metrics "$out/$name.jsonl" 2>"$out/$name.log" \
    | grep '^RESULT ' > "$out/$name.result"
  echo "$name: $(cat "$out/$name.result")"
}
run dense --codec dense &
run int8 --codec int8 &
wait
run resbm-linear-8 --codec resbm-linear --rank 8 &
run resbm-8 --codec resbm --rank 8 &
wait
run resbm-2 --codec resbm --rank 2 &
run subspace-8 --codec subspace --rank 8 &
wait
/usr/bin/python3 "$(dirname "$0")/plot_codec_results.py" "$out" "$out/codec_results.png"
