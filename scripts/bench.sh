#!/usr/bin/env bash
# Whole-process benchmark of tcpcopy + intercept in the namespace lab (as root). One run
# measures, on this machine and in this run only (the figures to compare are the ratios):
#   offline: a generated capture (CONNS connections, REQUESTS requests, keep-alive and short
#            mixed) replayed at maximum speed: wall time, packets/s, requests/s, and requests
#            received at the target / requests in the capture;
#   live:    a load generator in client against online at RATE requests/s for SECONDS, with
#            tcpcopy replaying: requests at the target / requests served online, CPU seconds
#            and peak RSS of tcpcopy and intercept, CPU microseconds per replayed request;
#   short:   the same with a connection per request (SHORT_RATE connections/s for
#            SHORT_SECONDS): handshakes, FINs and lingering sessions, CPU per connection.
# usage: sudo scripts/bench.sh [--json]     (env: CONNS REQUESTS RATE LIVE_SECONDS LIVE_CONNS
#        SHORT_RATE SHORT_SECONDS; TCPCOPY_BIN=<path> measures another tcpcopy binary, e.g. an
#        older build, against the same intercept, servers and load)
#        LAB_TX_OFFLOAD=off: the lab's links compute checksums in software (builds before the
#        fix of issue 13 replay nothing live with offload on);
#        CAPTURE=ring|pcap: the live tcpcopy's --capture (default: tcpcopy's own);
#        PROFILE=1 also records tcpcopy's live phase with `perf record -g` (linux-perf) into
#        the logs directory; `perf report -i <logs>/tcpcopy.perf` shows where its CPU goes.
set -euo pipefail
cd "$(dirname "$0")/.."
json=false
[ "${1:-}" = "--json" ] && json=true
CONNS=${CONNS:-2000}
REQUESTS=${REQUESTS:-200000}
RATE=${RATE:-2000}
SECONDS_LIVE=${LIVE_SECONDS:-20}
LIVE_CONNS=${LIVE_CONNS:-50}
SHORT_RATE=${SHORT_RATE:-500}
SHORT_SECONDS=${SHORT_SECONDS:-10}

[ "$(id -u)" -eq 0 ] || { echo "bench.sh: run as root" >&2; exit 1; }
source scripts/lab.sh
install_missing libpcap-dev iproute2 ethtool pkg-config bc time
cargo build --release --bins -q -p tcpcopy -p intercept -p tc-e2e
bin=$PWD/target/release
tcpcopy_bin=${TCPCOPY_BIN:-$bin/tcpcopy}

run=tcbench$$
work=$(mktemp -d /tmp/tcpcopy-bench.XXXXXX)
trap 'lab_down' EXIT
trap 'exit 130' INT TERM
lab_up

# cpu_seconds PID: user+system CPU time; peak_rss_kb PID: VmHWM.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14+$15)/hz}' "/proc/$1/stat"; }
peak_rss_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
start_bench_lab

# ---- offline ----
gen=$("$bin/tc-bench-gen" "$work/bench.pcap" "$CONNS" "$REQUESTS")
packets=$(echo "$gen" | awk '{print $2}')
cap_requests=$(echo "$gen" | awk '{print $4}')
cap_duration=$(echo "$gen" | awk '{print $8}')
t0=$(date +%s.%N)
# /usr/bin/time: tcpcopy's own CPU (user, system) and peak RSS (KB).
ns online /usr/bin/time -f "%U %S %M" -o "$work/offline.time" \
  "$tcpcopy_bin" -i "$work/bench.pcap" -x 80-198.18.0.30:8080 -s 198.18.0.40 \
  -c 203.0.113.x -a 100000 --offline-tail 30 -l "$work/tcpcopy-offline.log"
t1=$(date +%s.%N)
off_cpu=$(awk 'END {printf "%.2f", $1 + $2}' "$work/offline.time")
off_rss=$(awk 'END {print $3}' "$work/offline.time")
# The target server writes its count as it goes: wait until it is complete (bounded).
for _ in $(seq 1 50); do
  [ "$(count target)" -ge "$cap_requests" ] 2>/dev/null && break
  sleep 0.1
done
off_target=$(count target)
off_wall=$(echo "$t1 - $t0" | bc -l)

# ---- live ----
echo 0 > "$work/target.count.base"; base_target=$(count target); base_online=$(count online)
capture_args=()
[ -n "${CAPTURE:-}" ] && capture_args=(--capture "$CAPTURE")
start tcpcopy online "$tcpcopy_bin" -x 80-198.18.0.30:8080 -s 198.18.0.40 -c 203.0.113.x \
  "${capture_args[@]}" -l "$work/tcpcopy-live.log"
tcpcopy_pid=${pids[-1]}
for _ in $(seq 1 100); do grep -qs "event loop running" "$work/tcpcopy-live.log" && break; sleep 0.1; done
ic_cpu0=$(cpu_seconds "$intercept_pid")
perf_pid=
if [ "${PROFILE:-0}" = 1 ]; then
  perf record -q -F 999 -g -p "$tcpcopy_pid" -o "$work/tcpcopy.perf" >/dev/null 2>&1 &
  perf_pid=$!
fi
# Instructions tcpcopy executes in user space: far less noisy than CPU time on a shared host.
# stat_start NAME: sets stat_pid (empty without perf); stat_end NAME: sets stat_count (0
# without perf). Not in $(...): the shell must wait for its own perf child.
stat_start() {
  stat_pid=
  command -v perf >/dev/null || return 0
  perf stat -x, -e instructions:u -p "$tcpcopy_pid" -o "$work/$1.stat" >/dev/null 2>&1 &
  stat_pid=$!
}
stat_end() {
  stat_count=0
  [ -n "$stat_pid" ] || return 0
  kill -INT "$stat_pid" 2>/dev/null || true; wait "$stat_pid" 2>/dev/null || true
  stat_count=$(awk -F, '/instructions/ {print $1; exit}' "$work/$1.stat" 2>/dev/null | grep -E '^[0-9]+$' || echo 0)
}
stat_start live
c0=$(date +%s.%N)
ns client "$bin/tc-bench-client" 198.18.0.20:80 "$LIVE_CONNS" "$RATE" "$SECONDS_LIVE" > "$work/client.out"
c1=$(date +%s.%N)
# The replay has finished when the target has served what online served (bounded, 10 s).
for _ in $(seq 1 1000); do
  [ $(( $(count target) - base_target )) -ge $(( $(count online) - base_online )) ] && break
  sleep 0.01
done
r1=$(date +%s.%N)
replay_lag_ratio=$(echo "scale=3; ($r1 - $c0) / ($c1 - $c0)" | bc -l)
sleep 1
stat_end live; live_insns=$stat_count
[ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
live_online=$(( $(count online) - base_online ))
live_target=$(( $(count target) - base_target ))
tc_cpu=$(cpu_seconds "$tcpcopy_pid"); tc_rss=$(peak_rss_kb "$tcpcopy_pid")
ic_cpu=$(echo "$(cpu_seconds "$intercept_pid") - $ic_cpu0" | bc -l); ic_rss=$(peak_rss_kb "$intercept_pid")

# ---- short connections ----
base_target=$(count target); base_online=$(count online)
tc_cpu1=$(cpu_seconds "$tcpcopy_pid")
stat_start short
ns client "$bin/tc-bench-client" 198.18.0.20:80 20 "$SHORT_RATE" "$SHORT_SECONDS" short > "$work/client-short.out"
sleep 1
short_online=$(( $(count online) - base_online ))
short_target=$(( $(count target) - base_target ))
# Lingering sessions end 6 s after their connection: include that time in tcpcopy's CPU.
sleep 7
short_cpu=$(echo "$(cpu_seconds "$tcpcopy_pid") - $tc_cpu1" | bc -l)
stat_end short; short_insns=$stat_count

ratio() { echo "scale=4; if ($2 > 0) $1 / $2 else 0" | bc -l; }
per_us() { echo "scale=1; if ($2 > 0) $1 * 1000000 / $2 else 0" | bc -l; }
off_pps=$(echo "scale=0; $packets / $off_wall" | bc -l)
off_rps=$(echo "scale=0; $cap_requests / $off_wall" | bc -l)
off_ratio=$(ratio "$off_target" "$cap_requests")
off_us=$(per_us "$off_cpu" "$cap_requests")
off_wall_ratio=$(ratio "$off_wall" "$cap_duration")
live_ratio=$(ratio "$live_target" "$live_online")
tc_us=$(per_us "$tc_cpu" "$live_target"); ic_us=$(per_us "$ic_cpu" "$live_target")
short_ratio=$(ratio "$short_target" "$short_online")
short_us=$(per_us "$short_cpu" "$short_target")
per_n() { echo "scale=0; if ($2 > 0) $1 / $2 else 0" | bc -l; }
live_ipr=$(per_n "${live_insns:-0}" "$live_target"); short_ipc=$(per_n "${short_insns:-0}" "$short_target")

if $json; then
  cat <<JSON
{"offline":{"connections":$CONNS,"packets":$packets,"requests":$cap_requests,"wall_s":$off_wall,"packets_per_s":$off_pps,"requests_per_s":$off_rps,"target_requests":$off_target,"target_over_capture":$off_ratio,"capture_duration_s":$cap_duration,"wall_over_capture_duration":$off_wall_ratio,"tcpcopy_cpu_s":$off_cpu,"tcpcopy_cpu_us_per_request":$off_us,"tcpcopy_peak_rss_kb":$off_rss},
 "live":{"rate":$RATE,"seconds":$SECONDS_LIVE,"online_requests":$live_online,"target_requests":$live_target,"target_over_online":$live_ratio,"replay_finished_over_client_finished":$replay_lag_ratio,"capture":"${CAPTURE:-default}","tcpcopy_cpu_s":$tc_cpu,"tcpcopy_peak_rss_kb":$tc_rss,"tcpcopy_cpu_us_per_request":$tc_us,"tcpcopy_instructions_per_request":$live_ipr,"intercept_cpu_s":$ic_cpu,"intercept_peak_rss_kb":$ic_rss,"intercept_cpu_us_per_request":$ic_us},
 "short":{"rate":$SHORT_RATE,"seconds":$SHORT_SECONDS,"online_connections":$short_online,"target_connections":$short_target,"target_over_online":$short_ratio,"tcpcopy_cpu_s":$short_cpu,"tcpcopy_cpu_us_per_connection":$short_us,"tcpcopy_instructions_per_connection":$short_ipc}}
JSON
else
  printf '%-44s %s\n' "offline: connections / packets / requests" "$CONNS / $packets / $cap_requests"
  printf '%-44s %.2f s\n' "offline: wall time (max speed, tail ends early)" "$off_wall"
  printf '%-44s %s pkt/s, %s req/s\n' "offline: throughput" "$off_pps" "$off_rps"
  printf '%-44s %s / %s = %s\n' "offline: requests at target / in capture" "$off_target" "$cap_requests" "$off_ratio"
  printf '%-44s %s / %s s = %s\n' "offline: wall time / capture duration" "$off_wall" "$cap_duration" "$off_wall_ratio"
  printf '%-44s %s s CPU, %s KB peak RSS, %s us CPU/request\n' "offline: tcpcopy" "$off_cpu" "$off_rss" "$off_us"
  printf '%-44s %s req/s x %s s, %s connections\n' "live: load" "$RATE" "$SECONDS_LIVE" "$LIVE_CONNS"
  printf '%-44s %s / %s = %s\n' "live: requests at target / served online" "$live_target" "$live_online" "$live_ratio"
  printf '%-44s %s (capture: %s)\n' "live: replay finished / client finished" "$replay_lag_ratio" "${CAPTURE:-default}"
  printf '%-44s %s s CPU, %s KB peak RSS, %s us CPU/request\n' "live: tcpcopy" "$tc_cpu" "$tc_rss" "$tc_us"
  printf '%-44s %s\n' "live: tcpcopy user instructions/request" "$live_ipr"
  printf '%-44s %s s CPU, %s KB peak RSS, %s us CPU/request\n' "live: intercept" "$ic_cpu" "$ic_rss" "$ic_us"
  printf '%-44s %s conn/s x %s s, a request each\n' "short: load" "$SHORT_RATE" "$SHORT_SECONDS"
  printf '%-44s %s / %s = %s\n' "short: connections at target / online" "$short_target" "$short_online" "$short_ratio"
  printf '%-44s %s s CPU (incl. lingering), %s us CPU/connection\n' "short: tcpcopy" "$short_cpu" "$short_us"
  printf '%-44s %s\n' "short: tcpcopy user instructions/connection" "$short_ipc"
fi
echo "logs: $work" >&2
