#!/usr/bin/env bash
# Pipeline throughput over shaped links: resbm-train --stages 4 (stages as threads joined
# by in-process links; --link-mbps / --link-latency-ms shape every link, both directions)
# with the dense (bf16) and the resbm (rank 2) boundary codec, for the link settings
#   unshaped, 1000 Mbit/s, 100 Mbit/s, 80 Mbit/s + 25 ms one-way latency,
# then resbm-launch (one process per stage over real TCP loopback) unshaped for both
# codecs. Every row uses the same model, batch, micro-batches, schedule, steps and threads.
# The two codecs alternate inside each link setting so load drift hits both alike.
#
# Writes OUT_DIR/results.jsonl (one record per run: RESULT plus link, codec, steady
# tokens/s from the per-step metrics after WARMUP steps) and prints a markdown table;
# benchmarks/plot_pipeline_links.py OUT_DIR/results.jsonl docs/pipeline_links.png plots it.
#
# usage: benchmarks/pipeline_links.sh [BUILD_DIR] [OUT_DIR]   (defaults: build-bench, /tmp/pipeline_links)
# env:   STEPS (12), WARMUP (2), THREADS (2: the 4 stages share them, 1 each),
#        BATCH (128), MICRO (16), SCHEDULE (1f1b), LOOKAHEAD (2: 1f1b's extra in-flight
#        micro-batches per downstream stage, which hide link latency; 0 = plain 1f1b),
#        MODEL ("" = resbm-train's default model),
#        REPS (1: rounds over all links; the table keeps each row's best run),
#        TCP (1: also run resbm-launch), LINKS (default list below, "name:mbps:latency_ms")
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=${1:-$root/build-bench}
out=${2:-/tmp/pipeline_links}
train=$build/examples/resbm-train launch=$build/examples/resbm-launch
[[ -x $train ]] || { echo "pipeline_links: $train not found (build resbm-train)" >&2; exit 2; }
py=/usr/bin/python3
[[ -x $py ]] || py=python3
mkdir -p "$out"
: >"$out/results.jsonl"
steps=${STEPS:-12} warmup=${WARMUP:-2}
read -r -a model <<<"${MODEL:-}"
sched=(--schedule "${SCHEDULE:-1f1b}")
if [[ ${SCHEDULE:-1f1b} == 1f1b ]]; then sched+=(--lookahead "${LOOKAHEAD:-2}"); fi
common=(--stages 4 --batch "${BATCH:-128}" --micro-batches "${MICRO:-16}" "${sched[@]}"
        --steps "$steps" --eval-every 0 --eval-batches 1 --seed 1 "${model[@]}")
links=(${LINKS:-unshaped:0:0 1000Mbps:1000:0 100Mbps:100:0 80Mbps+25ms:80:25})
codecs=("dense --codec dense" "resbm --codec resbm --rank 2")
echo "pipeline_links: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores; $(uptime)"
echo "pipeline_links: common flags: ${common[*]} --threads ${THREADS:-2}"

record() {  # link transport codec_name logfile metrics
  "$py" "$here/plot_pipeline_links.py" --record "$4" "$5" "$1" "$2" "$3" "$warmup" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    >>"$out/results.jsonl"
}

for ((rep = 1; rep <= ${REPS:-1}; ++rep)); do
for spec in "${links[@]}"; do
  IFS=: read -r link mbps lat <<<"$spec"
  for c in "${codecs[@]}"; do
    read -r -a cf <<<"$c"
    name=${cf[0]}
    logf=$out/threads-$link-$name-$rep.log metrics=$out/threads-$link-$name-$rep.jsonl
    rm -f "$metrics"
    "$train" "${common[@]}" --threads "${THREADS:-2}" "${cf[@]:1}" --link-mbps "$mbps" --link-latency-ms "$lat" --metrics "$metrics" \
      >"$logf" 2>&1 || { tail -20 "$logf" >&2; exit 1; }
    record "$link" threads "$name" "$logf" "$metrics"
  done
done
done

if [[ ${TCP:-1} == 1 && -x $launch ]]; then
  # One process per stage: each gets THREADS / 4 threads (at least 1), as the stage
  # threads above do. Only the last stage writes metrics.
  tcp_threads=$(( ${THREADS:-2} / 4 > 0 ? ${THREADS:-2} / 4 : 1 ))
  for c in "${codecs[@]}"; do
    read -r -a cf <<<"$c"
    name=${cf[0]}
    logf=$out/tcp-unshaped-$name.log metrics=$out/tcp-unshaped-$name.jsonl
    rm -f "$metrics"
    "$launch" "${common[@]}" --threads "$tcp_threads" "${cf[@]:1}" --metrics "$metrics" \
      >"$logf" 2>&1 || { tail -20 "$logf" >&2; exit 1; }
    record unshaped tcp "$name" "$logf" "$metrics"
  done
fi

echo
"$py" "$here/plot_pipeline_links.py" --table "$out/results.jsonl"
echo "pipeline_links: $(uptime)"
