#!/usr/bin/env bash
# Runs every cargo-fuzz target of crates/tc-core/fuzz for SECONDS each (default 300), starting
# from the committed seeds (crates/tc-core/fuzz/seeds/<target>) and the corpus kept between
# runs (crates/tc-core/fuzz/corpus/<target>, not committed). scripts/test.sh runs it with 20.
#
#   scripts/fuzz.sh [SECONDS]        e.g. scripts/fuzz.sh 3600
#   FUZZ_TARGETS="pcap_read offline_pacing" scripts/fuzz.sh 600     only these targets
#   FUZZ_JOBS=1 scripts/fuzz.sh 600                                 one target at a time (default: one per core)
#   FUZZ_SANITIZER=address scripts/fuzz.sh 600                      with ASan (slower; default none:
#                                                                   the fuzzed code is safe Rust)
#
# Needs the nightly toolchain (cargo +nightly fuzz); installs cargo-fuzz if it is missing.
# Without nightly it says so loudly and exits 0, so the rest of a test run goes on.
# A crash or a timeout (an input running over 10 s) fails with libFuzzer's report; the input
# is saved under crates/tc-core/fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../crates/tc-core"

seconds=${1:-300}
sanitizer=${FUZZ_SANITIZER:-none}
case "$seconds" in
  '' | *[!0-9]*) echo "scripts/fuzz.sh: SECONDS must be a number, not '$seconds'" >&2; exit 2 ;;
esac

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  echo "!!! scripts/fuzz.sh: no nightly toolchain: the fuzz targets were NOT built or run." >&2
  echo "!!! Install it with: rustup toolchain install nightly" >&2
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

start=$(date +%s)
cargo +nightly fuzz build -s "$sanitizer"
echo "== fuzz targets built in $(( $(date +%s) - start )) s"

targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}
for t in $targets; do
  if [ ! -d "fuzz/seeds/$t" ]; then
    echo "scripts/fuzz.sh: target $t has no seed directory fuzz/seeds/$t" >&2
    exit 1
  fi
done

# fuzz_one TARGET: one run of SECONDS; prints its executions; non-zero on a crash.
fuzz_one() {
  local t=$1 log runs
  mkdir -p "fuzz/corpus/$t"
  log=$(mktemp)
  echo "== fuzz $t for $seconds s"
  if ! cargo +nightly fuzz run -s "$sanitizer" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    rm -f "$log"
    echo "scripts/fuzz.sh: fuzz target $t failed (input saved under crates/tc-core/fuzz/artifacts/$t)" >&2
    return 1
  fi
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo '?')
  echo "   $t: $runs executions in $seconds s, corpus $(ls "fuzz/corpus/$t" | wc -l) files"
  rm -f "$log"
}
export -f fuzz_one
export seconds sanitizer

# One target per core at a time (FUZZ_JOBS to change): libFuzzer runs single-threaded.
jobs=${FUZZ_JOBS:-$(nproc)}
if ! printf '%s\n' $targets | xargs -P "$jobs" -I{} bash -c 'fuzz_one "$1"' _ {}; then
  echo "scripts/fuzz.sh: a fuzz target failed (see above)" >&2
  exit 1
fi
echo "== fuzzing done in $(( $(date +%s) - start )) s"
