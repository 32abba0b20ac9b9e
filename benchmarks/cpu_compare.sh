#!/usr/bin/env bash
# CPU training throughput of resbm-train against PyTorch on the same model and optimizer
# (AdamW, global grad-norm clip 1.0), for two configs:
#   small: resbm-train's defaults   d 128, 4 layers, 4 heads, seq 128, batch 16, vocab 65
#   large:                           d 384, 6 layers, 6 heads, seq 256, batch 16, vocab 65
# Each config runs benchmarks/torch_compare.py --resbm REPS times (default 2), so the sides
# alternate torch, resbm, torch, resbm; the better tokens/s of each side is kept (the
# machine is shared: the best run is the one least disturbed). Warmup steps are excluded
# on both sides. Prints one table and the resbm/torch ratios against the bars
# (small >= 1.5x, large >= 1.0x).
#
# usage: benchmarks/cpu_compare.sh [BUILD_DIR]            (default: build-bench)
# env:   THREADS (2), REPS (2), SMALL_STEPS (40), LARGE_STEPS (8), WARMUP (3),
#        WAIT_POLICIES ("default"; e.g. "default passive" also runs OMP_WAIT_POLICY=passive:
#        PyTorch's OpenMP obeys it, resbm's own thread pool does not need it),
#        CONFIGS ("small large")
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=${1:-$root/build-bench}
train=$build/examples/resbm-train
[[ -x $train ]] || { echo "cpu_compare: $train not found (build the resbm-train target)" >&2; exit 2; }
py=/usr/bin/python3
[[ -x $py ]] || py=python3
threads=${THREADS:-2} reps=${REPS:-2} warmup=${WARMUP:-3}
small=(--d-model 128 --layers 4 --heads 4 --seq 128 --batch 16 --vocab 65 --steps "${SMALL_STEPS:-40}")
large=(--d-model 384 --layers 6 --heads 6 --seq 256 --batch 16 --vocab 65 --steps "${LARGE_STEPS:-8}")
log=$(mktemp -d /tmp/cpu_compare.XXXXXX)
echo "cpu_compare: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, threads $threads, reps $reps, logs in $log"
echo "cpu_compare: $(uptime)"

declare -A best
run_config() {  # name policy args...
  local name=$1 policy=$2
  shift 2
  local i out
  for ((i = 1; i <= reps; ++i)); do
    out=$log/$name-$policy-$i.log
    if [[ $policy == default ]]; then
      env -u OMP_WAIT_POLICY "$py" "$here/torch_compare.py" "$@" --threads "$threads" --warmup-steps "$warmup" \
        --resbm "$train" >"$out" 2>&1
    else
      OMP_WAIT_POLICY=$policy "$py" "$here/torch_compare.py" "$@" --threads "$threads" --warmup-steps "$warmup" \
        --resbm "$train" >"$out" 2>&1
    fi || { tail -20 "$out" >&2; exit 1; }
    grep -h 'warning' "$out" >&2 || true
    local t r
    t=$(grep '^RESULT {"impl": "torch"' "$out" | sed 's/^RESULT //' | "$py" -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_s"])')
    r=$(grep '^RESULT {"impl": "resbm"' "$out" | sed 's/^RESULT //' | "$py" -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_s"])')
    printf '  %-6s %-8s run %d: torch %8.0f tokens/s, resbm %8.0f tokens/s (%.2fx)   load %s\n' "$name" "$policy" "$i" \
      "$t" "$r" "$("$py" -c "print($r / $t)")" "$(cut -d' ' -f1-3 /proc/loadavg)"
    best[$name-$policy-torch]=$("$py" -c "print(max($t, ${best[$name-$policy-torch]:-0}))")
    best[$name-$policy-resbm]=$("$py" -c "print(max($r, ${best[$name-$policy-resbm]:-0}))")
  done
}

for policy in ${WAIT_POLICIES:-default}; do
  for name in ${CONFIGS:-small large}; do
    if [[ $name == small ]]; then run_config small "$policy" "${small[@]}"; else run_config large "$policy" "${large[@]}"; fi
  done
done

echo
echo "best of $reps per side (tokens/s, warmup excluded):"
printf '%-6s %-8s %10s %10s %8s %6s %s\n' config policy torch resbm ratio bar verdict
for policy in ${WAIT_POLICIES:-default}; do
  for name in ${CONFIGS:-small large}; do
    t=${best[$name-$policy-torch]} r=${best[$name-$policy-resbm]}
    bar=1.0
    [[ $name == small ]] && bar=1.5
    "$py" -c "
t, r, bar = $t, $r, $bar
print(f'{\"$name\":6} {\"$policy\":8} {t:10.0f} {r:10.0f} {r / t:7.2f}x {bar:5.1f}x {\"met\" if r / t >= bar else \"MISSED\"}')"
  done
done
echo "cpu_compare: $(uptime)"
