#!/usr/bin/env bash
# Soak test of tcpcopy + intercept in the namespace lab (as root): steady churn of short and
# keep-alive connections for MINUTES (default 30), both processes' RSS sampled every 30 s
# (every 10 s for runs under 5 minutes). Fails (exit 1) when
#   - RSS grows more than 5% after the warm-up (the first 5 minutes; half the run if shorter),
#   - a request served online is missing at the target,
#   - sessions remain in tcpcopy once the traffic stopped and lingering ended.
# usage: sudo scripts/soak.sh [MINUTES]
#   env: BIN_DIR=<dir with tcpcopy, intercept, tc-bench-*> (default: a release build);
#        KEEPALIVE_RATE (req/s, default 300), SHORT_RATE (conn/s, default 100).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
[[ "$MINUTES" =~ ^[0-9]+$ ]] && [ "$MINUTES" -ge 1 ] || { echo "soak.sh: MINUTES must be a whole number >= 1" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "soak.sh: run as root" >&2; exit 1; }
KEEPALIVE_RATE=${KEEPALIVE_RATE:-300}
SHORT_RATE=${SHORT_RATE:-100}
source scripts/lab.sh
if [ -z "${BIN_DIR:-}" ]; then
  install_missing libpcap-dev iproute2 ethtool pkg-config bc
  cargo build --release --bins -q -p tcpcopy -p intercept -p tc-e2e
  BIN_DIR=$PWD/target/release
fi
bin=$BIN_DIR

run=tcsoak$$
work=$(mktemp -d /tmp/tcpcopy-soak.XXXXXX)
trap 'lab_down' EXIT
trap 'exit 130' INT TERM
lab_up

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
start_bench_lab
start tcpcopy online "$bin/tcpcopy" -x 80-198.18.0.30:8080 -s 198.18.0.40 -c 203.0.113.x \
  -l "$work/tcpcopy.log"
tcpcopy_pid=${pids[-1]}
for _ in $(seq 1 100); do grep -qs "event loop running" "$work/tcpcopy.log" && break; sleep 0.1; done
grep -qs "event loop running" "$work/tcpcopy.log" || { echo "soak: tcpcopy did not start" >&2; cat "$work/tcpcopy.log" >&2; exit 1; }

total=$((MINUTES * 60))
if [ "$MINUTES" -ge 5 ]; then warmup=300; period=30; else warmup=$((total / 2)); period=10; fi
echo "soak: $MINUTES min, keep-alive $KEEPALIVE_RATE req/s (new connections every minute), short $SHORT_RATE conn/s; logs $work"

# Keep-alive clients in rounds of at most 60 s (connections churn too); short connections
# throughout.
(
  left=$total
  while [ "$left" -gt 0 ]; do
    round=$(( left < 60 ? left : 60 ))
    ip netns exec "$run-client" "$bin/tc-bench-client" 198.18.0.20:80 20 "$KEEPALIVE_RATE" "$round" >> "$work/client-keepalive.out"
    left=$((left - round))
  done
) &
keepalive_pid=$!
ip netns exec "$run-client" "$bin/tc-bench-client" 198.18.0.20:80 10 "$SHORT_RATE" "$total" short > "$work/client-short.out" &
short_pid=$!

fail=0
base_tc=""; base_ic=""
max_tc=0; max_ic=0
elapsed=0
printf '%8s %12s %12s %10s %10s\n' "time(s)" "tcpcopy KB" "intercept KB" "online" "target" | tee "$work/rss.txt"
while [ "$elapsed" -lt "$total" ]; do
  sleep "$period"
  elapsed=$((elapsed + period))
  kill -0 "$tcpcopy_pid" 2>/dev/null || { echo "soak: tcpcopy died" >&2; fail=1; break; }
  kill -0 "$intercept_pid" 2>/dev/null || { echo "soak: intercept died" >&2; fail=1; break; }
  tc=$(rss_kb "$tcpcopy_pid"); ic=$(rss_kb "$intercept_pid")
  printf '%8s %12s %12s %10s %10s\n' "$elapsed" "$tc" "$ic" "$(count online)" "$(count target)" | tee -a "$work/rss.txt"
  if [ "$elapsed" -ge "$warmup" ]; then
    if [ -z "$base_tc" ]; then base_tc=$tc; base_ic=$ic; fi
    [ "$tc" -gt "$max_tc" ] && max_tc=$tc
    [ "$ic" -gt "$max_ic" ] && max_ic=$ic
  fi
done
wait "$keepalive_pid" "$short_pid" || true

# Every request served online reaches the target (bounded wait for the last ones).
for _ in $(seq 1 100); do
  [ "$(count target)" -ge "$(count online)" ] && break
  sleep 0.2
done
online=$(count online); target=$(count target)
echo "soak: requests online $online, at target $target"
if [ "$online" -eq 0 ] || [ "$target" -lt "$online" ]; then
  echo "soak: FAIL: $((online - target)) requests lost" >&2; fail=1
fi

# Growth after the warm-up.
growth() { echo "scale=2; ($2 - $1) * 100 / $1" | bc -l; }
if [ -n "$base_tc" ]; then
  g_tc=$(growth "$base_tc" "$max_tc"); g_ic=$(growth "$base_ic" "$max_ic")
  echo "soak: RSS after warm-up: tcpcopy $base_tc -> max $max_tc KB ($g_tc%), intercept $base_ic -> max $max_ic KB ($g_ic%)"
  for g in "$g_tc" "$g_ic"; do
    if [ "$(echo "$g > 5" | bc -l)" -eq 1 ]; then echo "soak: FAIL: RSS grew more than 5%" >&2; fail=1; fi
  done
fi

# Sessions left once lingering (6 s) is over: the next statistics line (every 30 s) after it.
sleep 7
stats_re='active:[0-9]+,rel:'
before=$(grep -cE "$stats_re" "$work/tcpcopy.log" || true)
left=""
for _ in $(seq 1 350); do
  now=$(grep -cE "$stats_re" "$work/tcpcopy.log" || true)
  if [ "$now" -gt "$before" ]; then
    left=$(grep -E "$stats_re" "$work/tcpcopy.log" | tail -1 | sed -E 's/.*active:([0-9]+),rel:.*/\1/')
    break
  fi
  sleep 0.1
done
echo "soak: sessions left after the traffic: ${left:-unknown}"
if [ "${left:-1}" != 0 ]; then echo "soak: FAIL: sessions remain" >&2; fail=1; fi

if [ "$fail" -ne 0 ]; then
  echo "soak: FAILED (logs: $work)" >&2
  exit 1
fi
echo "soak: PASSED"
