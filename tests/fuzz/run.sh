#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for SECONDS:
#
#   tests/fuzz/run.sh SECONDS [TARGET...]      (targets: frame handshake; default both)
#
# Prints, per target, the inputs executed and the crashes found. New inputs go to
# build-fuzz/<target>/corpus (the committed seeds in tests/fuzz/corpus/<target> are only
# read); a crash leaves its reproducer in build-fuzz/<target>/crash-*: rerun it with
# build-fuzz/fuzz_<target> FILE, and commit it to tests/fuzz/corpus/<target>/ once fixed.
# Needs clang and its fuzzer runtime (Debian: apt-get install clang libclang-rt-14-dev).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

seconds=${1:?usage: tests/fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(frame handshake)

cxx=${CXX_FUZZ:-$(command -v clang++ || command -v clang++-14 || true)}
if [[ -z "$cxx" ]]; then
  echo "run.sh: clang++ not found (fix: apt-get install clang libclang-rt-14-dev)" >&2
  exit 1
fi
out=build-fuzz
mkdir -p "$out"
flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -Iinclude -Itests/fuzz)

status=0
for t in "${targets[@]}"; do
  src=tests/fuzz/fuzz_$t.cpp
  [[ -f $src ]] || { echo "run.sh: no target $t ($src missing)" >&2; exit 2; }
  echo "== fuzz_$t: building with $cxx"
  "$cxx" "${flags[@]}" "$src" -o "$out/fuzz_$t"
  mkdir -p "$out/$t/corpus"
  rm -f "$out/$t"/crash-* "$out/$t"/leak-* "$out/$t"/timeout-* "$out/$t"/oom-*
  log=$out/$t/fuzz.log
  echo "== fuzz_$t: running ${seconds}s"
  rc=0
  # -fork keeps going after a crash (each crash is saved and counted); one job on the
  # shared 2-core machine.
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  "$out/fuzz_$t" -max_total_time="$seconds" -print_final_stats=1 -fork=1 -ignore_crashes=1 \
    -max_len=4096 -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$out/$t/" \
    "$out/$t/corpus" "tests/fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  # With -fork the parent reports the running total of executed inputs as "#N: cov: ...".
  execs=$(sed -n 's/^#\([0-9][0-9]*\):.*/\1/p' "$log" | tail -n 1)
  execs=${execs:-0}
  crashes=$(find "$out/$t" -maxdepth 1 \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  printf 'fuzz_%s: %s inputs executed in %ss, %s crashes (log %s)\n' "$t" "$execs" "$seconds" "$crashes" "$log"
  if [[ $crashes -gt 0 ]]; then
    find "$out/$t" -maxdepth 1 \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) -printf '  reproducer: %p\n'
    status=1
  fi
  [[ $rc -eq 0 || $crashes -gt 0 ]] || { echo "fuzz_$t exited with status $rc; see $log" >&2; tail -20 "$log" >&2; status=1; }
done
exit $status
