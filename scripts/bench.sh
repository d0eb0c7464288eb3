#!/usr/bin/env bash
# Whole-process benchmark of tcpcopy + intercept in the namespace lab (as root). One run
# measures, on this machine and in this run only (the figures to compare are the ratios):
#   offline: a generated capture (CONNS connections, REQUESTS requests, keep-alive and short
#            mixed) replayed at maximum speed: wall time, packets/s, requests/s, and requests
#            received at the target / requests in the capture;
#   live:    a load generator in client against online at RATE requests/s for SECONDS, with
#            tcpcopy replaying: requests at the target / requests served online, CPU seconds
#            and peak RSS of tcpcopy and intercept, CPU microseconds per replayed request;
#   full:    the issue's live figure: FULL_REQUESTS keep-alive requests on FULL_CONNS
#            connections at full client speed (as `ab -k -n 50000 -c 10`): replay finished /
#            client finished, tcpcopy CPU per request split user/system, intercept CPU;
#   short:   the same with a connection per request (SHORT_RATE connections/s for
#            SHORT_SECONDS): handshakes, FINs and lingering sessions, CPU per connection;
#   ab:      the issue's own measurement of the full phase (not in the default phases):
#            `ab -k -n FULL_REQUESTS -c FULL_CONNS` against nginx on online:81, replayed by
#            a tcpcopy of its own to nginx on target:8081 (apt: nginx-light apache2-utils);
#   fanout:  (FANOUT=N, N >= 2) tcpcopy as the bottleneck: FANOUT_REQUESTS keep-alive requests
#            on FANOUT_CONNS connections are made while tcpcopy is stopped (SIGSTOP; the
#            capture buffers them), then the replay runs flat out on the backlog: replay
#            rate with one process, then with N processes (--fanout i/N), FANOUT_ROUNDS times
#            alternated: the median rates and their ratio N / 1.
# usage: sudo scripts/bench.sh [--json]     (env: CONNS REQUESTS RATE LIVE_SECONDS LIVE_CONNS
#        FULL_REQUESTS FULL_CONNS SHORT_RATE SHORT_SECONDS FANOUT FANOUT_REQUESTS FANOUT_CONNS
#        FANOUT_ROUNDS;
#        PHASES="offline live full short" chooses phases (ab only when named; fanout runs
#        with FANOUT=N);
#        TCPCOPY_BIN=<path> measures another tcpcopy binary, e.g. an older build, against the
#        same intercept, servers and load; INTERCEPT_BIN=<path> the same for intercept)
#        LAB_TX_OFFLOAD=off: the lab's links compute checksums in software (builds before the
#        fix of issue 13 replay nothing live with offload on);
#        CAPTURE=ring|pcap: the live tcpcopy's --capture (default: tcpcopy's own);
#        STEER=1: tcpcopy (live and offline) pinned to CPU 0, the frames it sends handled
#        on CPU 1 (RPS), so the lab's other hosts' stacks are not counted as tcpcopy's CPU;
#        PROFILE=1 also samples tcpcopy and intercept in the full-speed phase with `perf
#        record -e cpu-clock -g` (linux-perf; no hardware counters needed) and prints their
#        top frames and the share of each one's samples spent in softirq (the lab's other
#        hosts' network stacks run on its time); the data stay in the logs directory
#        (`perf report -i <logs>/tcpcopy.perf --children` shows the call paths);
set -euo pipefail
cd "$(dirname "$0")/.."
json=false
[ "${1:-}" = "--json" ] && json=true
CONNS=${CONNS:-2000}
REQUESTS=${REQUESTS:-200000}
RATE=${RATE:-2000}
SECONDS_LIVE=${LIVE_SECONDS:-20}
LIVE_CONNS=${LIVE_CONNS:-50}
FULL_REQUESTS=${FULL_REQUESTS:-50000}
FULL_CONNS=${FULL_CONNS:-10}
SHORT_RATE=${SHORT_RATE:-500}
SHORT_SECONDS=${SHORT_SECONDS:-10}
FANOUT=${FANOUT:-1}
FANOUT_REQUESTS=${FANOUT_REQUESTS:-30000}
FANOUT_CONNS=${FANOUT_CONNS:-100}
FANOUT_ROUNDS=${FANOUT_ROUNDS:-3}
PHASES=${PHASES:-offline live full short}
[ "$FANOUT" -ge 2 ] 2>/dev/null && PHASES="$PHASES fanout"
has() { [[ " $PHASES " == *" $1 "* ]]; }

[ "$(id -u)" -eq 0 ] || { echo "bench.sh: run as root" >&2; exit 1; }
source scripts/lab.sh
install_missing libpcap-dev iproute2 ethtool pkg-config bc time
[ "${PROFILE:-0}" = 1 ] && install_missing linux-perf
cargo build --release --bins -q -p tcpcopy -p intercept -p tc-e2e
bin=$PWD/target/release
tcpcopy_bin=${TCPCOPY_BIN:-$bin/tcpcopy}
intercept_bin=${INTERCEPT_BIN:-$bin/intercept}

run=tcbench$$
work=$(mktemp -d /tmp/tcpcopy-bench.XXXXXX)
trap 'lab_down' EXIT
trap 'exit 130' INT TERM
lab_up

# cpu_seconds PID: user+system CPU time; user_sys PID: "user system" seconds;
# peak_rss_kb PID: VmHWM.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14+$15)/hz}' "/proc/$1/stat"; }
# cpu_idle: the host's idle + iowait time so far, in clock ticks (all CPUs).
cpu_idle() { awk '/^cpu / {print $5 + $6}' /proc/stat; }
user_sys() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f %.2f\n", $14/hz, $15/hz}' "/proc/$1/stat"; }
peak_rss_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# switches PID: context switches so far (voluntary: it slept and was woken; involuntary:
# preempted): how many requests each turn of its event loop handled.
switches() { awk '/ctxt_switches/ {n += $2} END {print n}' "/proc/$1/status"; }
start_bench_lab

# Every figure defaults to 0 (its phase did not run).
packets=0 cap_requests=0 cap_duration=0 off_cpu=0 off_rss=0 off_target=0 off_wall=0
live_online=0 live_target=0 replay_lag_ratio=0 tc_cpu=0 tc_rss=0 ic_cpu=0 ic_rss=0 live_insns=0
short_online=0 short_target=0 short_cpu=0 short_insns=0

# STEER=1: tcpcopy pinned to CPU 0 and the frames it sends steered to CPU 1 (RPS on the
# bridge port of online's link), so the lab's other hosts' network stacks (bridge, the
# target's TCP, waking its server), which the veth link otherwise runs inside tcpcopy's send
# calls, are not counted as tcpcopy's CPU: on real hosts that work is the target's.
pin=()
if [ "${STEER:-0}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  pin=(taskset -c 0)
  ip netns exec "$run-sw" sh -c 'echo 2 > /sys/class/net/vonline/queues/rx-0/rps_cpus'
fi

# ---- offline ----
if has offline; then
gen=$("$bin/tc-bench-gen" "$work/bench.pcap" "$CONNS" "$REQUESTS")
packets=$(echo "$gen" | awk '{print $2}')
cap_requests=$(echo "$gen" | awk '{print $4}')
cap_duration=$(echo "$gen" | awk '{print $8}')
t0=$(date +%s.%N)
# /usr/bin/time: tcpcopy's own CPU (user, system) and peak RSS (KB).
ns online /usr/bin/time -f "%U %S %M" -o "$work/offline.time" \
  "${pin[@]}" "$tcpcopy_bin" -i "$work/bench.pcap" -x 80-198.18.0.30:8080 -s 198.18.0.40 \
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
fi

# ---- live ----
echo 0 > "$work/target.count.base"; base_target=$(count target); base_online=$(count online)
capture_args=()
[ -n "${CAPTURE:-}" ] && capture_args=(--capture "$CAPTURE")
start tcpcopy online "${pin[@]}" "$tcpcopy_bin" -x 80-198.18.0.30:8080 -s 198.18.0.40 -c 203.0.113.x \
  "${capture_args[@]}" -l "$work/tcpcopy-live.log"
tcpcopy_pid=${pids[-1]}
for _ in $(seq 1 100); do grep -qs "event loop running" "$work/tcpcopy-live.log" && break; sleep 0.1; done
ic_cpu0=$(cpu_seconds "$intercept_pid")
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
# wait_replayed BASE_TARGET CLIENT_OUTPUT SECONDS: until the target has served, since its
# base count, the requests the client got answered (its `requests_ok N`; a count file read
# while its server rewrites it can fail, the client's own count cannot), bounded.
wait_replayed() {
  local _ want
  want=$(awk '/requests_ok/ {print $2}' "$2")
  for _ in $(seq 1 $(( $3 * 100 ))); do
    [ $(( $(count target) - $1 )) -ge "${want:-0}" ] && return 0
    sleep 0.01
  done
  return 1
}
if has live; then
stat_start live
c0=$(date +%s.%N)
ns client "$bin/tc-bench-client" 198.18.0.20:80 "$LIVE_CONNS" "$RATE" "$SECONDS_LIVE" > "$work/client.out"
c1=$(date +%s.%N)
# The replay has finished when the target has served what online served (bounded, 10 s).
wait_replayed "$base_target" "$work/client.out" 10 || true
r1=$(date +%s.%N)
replay_lag_ratio=$(echo "scale=3; ($r1 - $c0) / ($c1 - $c0)" | bc -l)
sleep 1
stat_end live; live_insns=$stat_count
live_online=$(( $(count online) - base_online ))
live_target=$(( $(count target) - base_target ))
tc_cpu=$(cpu_seconds "$tcpcopy_pid"); tc_rss=$(peak_rss_kb "$tcpcopy_pid")
ic_cpu=$(echo "$(cpu_seconds "$intercept_pid") - $ic_cpu0" | bc -l); ic_rss=$(peak_rss_kb "$intercept_pid")
fi

# ---- full speed (keep-alive, as ab -k -n FULL_REQUESTS -c FULL_CONNS) ----
full_online=0 full_target=0 full_client_s=0 full_ratio=0 full_lag_ratio=0
full_user=0 full_sys=0 full_ic=0 full_at_client_end=0 full_rate_during=0 full_rate_after=0
full_sw=0 full_ic_sw=0
perf_pids=()
if has full; then
  base_target=$(count target); base_online=$(count online)
  read -r u0 s0 < <(user_sys "$tcpcopy_pid")
  sw0=$(switches "$tcpcopy_pid"); ic_sw0=$(switches "$intercept_pid")
  ic0=$(cpu_seconds "$intercept_pid")
  if [ "${PROFILE:-0}" = 1 ]; then
    for who in tcpcopy intercept; do
      pid_var=${who}_pid
      perf record -q -e cpu-clock -F 999 -g -p "${!pid_var}" -o "$work/$who.perf" >/dev/null 2>&1 &
      perf_pids+=($!)
    done
  fi
  c0=$(date +%s.%N)
  ns client "$bin/tc-bench-client" 198.18.0.20:80 "$FULL_CONNS" 0 300 "requests=$FULL_REQUESTS" > "$work/client-full.out"
  c1=$(date +%s.%N)
  # How much of the replay was done when the client finished: the replay's rate while the
  # client ran (sharing the cores) and after (the backlog alone) tells what limits it.
  full_at_client_end=$(( $(count target) - base_target ))
  wait_replayed "$base_target" "$work/client-full.out" 30 || true
  r1=$(date +%s.%N)
  for p in "${perf_pids[@]}"; do kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  full_online=$(( $(count online) - base_online ))
  full_target=$(( $(count target) - base_target ))
  full_client_s=$(echo "$c1 - $c0" | bc -l)
  full_lag_ratio=$(echo "scale=3; ($r1 - $c0) / ($c1 - $c0)" | bc -l)
  full_rate_during=$(echo "$full_at_client_end / ($c1 - $c0)" | bc -l | awk '{printf "%.0f", $1}')
  full_rate_after=$(echo "($full_target - $full_at_client_end) / ($r1 - $c1)" | bc -l 2>/dev/null \
    | awk '{printf "%.0f", $1}')
  read -r u1 s1 < <(user_sys "$tcpcopy_pid")
  full_user=$(echo "$u1 - $u0" | bc -l); full_sys=$(echo "$s1 - $s0" | bc -l)
  full_sw=$(( $(switches "$tcpcopy_pid") - sw0 )); full_ic_sw=$(( $(switches "$intercept_pid") - ic_sw0 ))
  full_ic=$(echo "$(cpu_seconds "$intercept_pid") - $ic0" | bc -l)
fi

# ---- ab: the issue's own measurement, `ab -k` against nginx (its own tcpcopy, port 81) ----
# The full phase's client (tc-bench-client) is faster than ab, so its replay ratio is the
# harder one; this phase measures the figure as the issue defines it.
ab_complete=0 ab_failed=0 ab_client_s=0 ab_target=0 ab_lag_ratio=0 ab_tc=0 ab_ic=0 ab_rps=0
ab_sw=0 ab_ic_sw=0
ab_at_client_end=0
# start_nginx HOST ADDR: nginx (one worker, keep-alive, every request in $work/HOST-nginx/access.log).
start_nginx() {
  local d=$work/$1-nginx
  mkdir -p "$d/www" "$d/body"
  # nginx's worker runs as nobody: it must reach the pages through the private logs directory.
  chmod 711 "$work"
  printf '<html><body>replay</body></html>\n%.0s' $(seq 1 20) > "$d/www/index.html"
  cat > "$d/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $d/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
  log_format n '\$remote_addr \$status';
  access_log $d/access.log n;
  client_body_temp_path $d/body;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  server { listen $2; root $d/www; }
}
NGINX
  : > "$d/access.log"
  start "$1-nginx" "$1" /usr/sbin/nginx -p "$d/" -e stderr -c "$d/nginx.conf"
}
# nginx_count HOST: requests in its access log (complete lines).
nginx_count() { wc -l < "$work/$1-nginx/access.log"; }
if has ab; then
  install_missing nginx-light apache2-utils
  start_nginx online 198.18.0.20:81; start_nginx target 198.18.0.30:8081
  wait_port online 81; wait_port target 8081
  start tcpcopy-ab online "${pin[@]}" "$tcpcopy_bin" -x 81-198.18.0.30:8081 -s 198.18.0.40 \
    -c 203.0.113.x "${capture_args[@]}" -l "$work/tcpcopy-ab.log"
  ab_pid=${pids[-1]}
  for _ in $(seq 1 100); do grep -qs "event loop running" "$work/tcpcopy-ab.log" && break; sleep 0.1; done
  ab_base=$(nginx_count target)
  ab_tc0=$(cpu_seconds "$ab_pid"); ab_ic0=$(cpu_seconds "$intercept_pid")
  sw0=$(switches "$ab_pid"); ic_sw0=$(switches "$intercept_pid")
  c0=$(date +%s.%N)
  ns client ab -q -k -c "$FULL_CONNS" -n "$FULL_REQUESTS" http://198.18.0.20:81/index.html \
    > "$work/ab.out" 2>&1 || true
  c1=$(date +%s.%N)
  ab_at_client_end=$(( $(nginx_count target) - ab_base ))
  ab_complete=$(awk '/^Complete requests:/ {print $3}' "$work/ab.out")
  ab_failed=$(awk '/^Failed requests:/ {f = $3} /^Non-2xx responses:/ {n = $3} END {print f + n}' "$work/ab.out")
  for _ in $(seq 1 3000); do
    [ $(( $(nginx_count target) - ab_base )) -ge "${ab_complete:-0}" ] && break
    sleep 0.01
  done
  r1=$(date +%s.%N)
  ab_target=$(( $(nginx_count target) - ab_base ))
  ab_client_s=$(echo "$c1 - $c0" | bc -l)
  ab_rps=$(echo "${ab_complete:-0} / $ab_client_s" | bc -l | awk '{printf "%.0f", $1}')
  ab_lag_ratio=$(echo "scale=3; ($r1 - $c0) / ($c1 - $c0)" | bc -l)
  ab_tc=$(echo "$(cpu_seconds "$ab_pid") - $ab_tc0" | bc -l)
  ab_sw=$(( $(switches "$ab_pid") - sw0 )); ab_ic_sw=$(( $(switches "$intercept_pid") - ic_sw0 ))
  ab_ic=$(echo "$(cpu_seconds "$intercept_pid") - $ab_ic0" | bc -l)
  kill -TERM "$ab_pid"; wait "$ab_pid" 2>/dev/null || true
fi

# ---- short connections ----
if has short; then
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
fi

# ---- fanout: the replay rate of 1 and of FANOUT processes on a backlog ----
# fanout_round K: K tcpcopy processes (--fanout i/K) replay FANOUT_REQUESTS requests made
# while they were stopped; sets fan_rate (requests replayed per second from SIGCONT until
# the target has served them all, bounded 120 s) and fan_done. Short connections would
# measure the target server (a thread per connection) more than tcpcopy.
fan1_rate=0 fanN_rate=0 fan1_done=0 fanN_done=0 fan_online=0 fan1_online=0 fanN_online=0
fan1_busy=0 fanN_busy=0 fan1_cpu=0 fanN_cpu=0
fanout_round() {
  local k=$1 i fan_pids=() args
  for i in $(seq 1 "$k"); do
    args=(-x 80-198.18.0.30:8080 -s 198.18.0.40 -c 203.0.113.x "${capture_args[@]}")
    [ "$k" -gt 1 ] && args+=(--fanout "$i/$k")
    start "fan$k-$i" online "$tcpcopy_bin" "${args[@]}" -l "$work/fan$k-$i.log"
    fan_pids+=("${pids[-1]}")
  done
  for i in $(seq 1 "$k"); do
    for _ in $(seq 1 100); do grep -qs "event loop running" "$work/fan$k-$i.log" && break; sleep 0.1; done
  done
  for p in "${fan_pids[@]}"; do kill -STOP "$p"; done
  local bt bo
  bt=$(count target); bo=$(count online)
  ns client "$bin/tc-bench-client" 198.18.0.20:80 "$FANOUT_CONNS" 0 300 "requests=$FANOUT_REQUESTS" > "$work/client-fan$k.out"
  sleep 0.3
  fan_online=$(( $(count online) - bo ))
  local f0 f1
  f0=$(date +%s.%N)
  local idle0 idle1
  idle0=$(cpu_idle)
  for p in "${fan_pids[@]}"; do kill -CONT "$p"; done
  wait_replayed "$bt" "$work/client-fan$k.out" 120 || true
  f1=$(date +%s.%N)
  idle1=$(cpu_idle)
  # Cores the whole machine kept busy during the drain (all of it: tcpcopy, the target
  # server, intercept, the lab's network stack, and whatever else runs on this host).
  fan_busy=$(echo "scale=2; $(nproc) - ($idle1 - $idle0) / $(getconf CLK_TCK) / ($f1 - $f0)" | bc -l)
  fan_tc_cpu=0
  for p in "${fan_pids[@]}"; do fan_tc_cpu=$(echo "$fan_tc_cpu + $(cpu_seconds "$p")" | bc -l); done
  fan_done=$(( $(count target) - bt ))
  fan_rate=$(echo "scale=0; $fan_done / ($f1 - $f0)" | bc -l)
  for p in "${fan_pids[@]}"; do kill -TERM "$p"; done
  for p in "${fan_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
if has fanout; then
  kill -TERM "$tcpcopy_pid"; wait "$tcpcopy_pid" 2>/dev/null || true
  # Rounds alternate 1 and N processes; the rates are the medians (one round is noisy on a
  # shared host); the counts add up over the rounds; CPU and busy cores are the last round's.
  rates1=() ratesN=()
  for _ in $(seq 1 "$FANOUT_ROUNDS"); do
    fanout_round 1; rates1+=("$fan_rate"); fan1_done=$(( fan1_done + fan_done ))
    fan1_online=$(( fan1_online + fan_online )); fan1_busy=$fan_busy; fan1_cpu=$fan_tc_cpu
    fanout_round "$FANOUT"; ratesN+=("$fan_rate"); fanN_done=$(( fanN_done + fan_done ))
    fanN_online=$(( fanN_online + fan_online )); fanN_busy=$fan_busy; fanN_cpu=$fan_tc_cpu
  done
  median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : int((v[NR/2] + v[NR/2+1]) / 2)}'; }
  fan1_rate=$(median "${rates1[@]}"); fanN_rate=$(median "${ratesN[@]}")
fi

per_n() { echo "scale=0; if ($2 > 0) $1 / $2 else 0" | bc -l; }
ratio() { echo "scale=4; if ($2 > 0) $1 / $2 else 0" | bc -l; }
per_us() { echo "scale=1; if ($2 > 0) $1 * 1000000 / $2 else 0" | bc -l; }
off_pps=$(per_n "$packets" "$off_wall")
off_rps=$(per_n "$cap_requests" "$off_wall")
off_ratio=$(ratio "$off_target" "$cap_requests")
off_us=$(per_us "$off_cpu" "$cap_requests")
off_wall_ratio=$(ratio "$off_wall" "$cap_duration")
live_ratio=$(ratio "$live_target" "$live_online")
tc_us=$(per_us "$tc_cpu" "$live_target"); ic_us=$(per_us "$ic_cpu" "$live_target")
short_ratio=$(ratio "$short_target" "$short_online")
short_us=$(per_us "$short_cpu" "$short_target")
live_ipr=$(per_n "${live_insns:-0}" "$live_target"); short_ipc=$(per_n "${short_insns:-0}" "$short_target")
full_ratio=$(ratio "$full_target" "$full_online")
full_user_us=$(per_us "$full_user" "$full_target"); full_sys_us=$(per_us "$full_sys" "$full_target")
full_us=$(per_us "$(echo "$full_user + $full_sys" | bc -l)" "$full_target")
full_ic_us=$(per_us "$full_ic" "$full_target")
# Context switches per request (3 decimals).
per_req() { echo "scale=3; if ($2 > 0) $1 / $2 else 0" | bc -l | sed 's/^\./0./'; }
full_swr=$(per_req "$full_sw" "$full_target"); full_ic_swr=$(per_req "$full_ic_sw" "$full_target")
ab_swr=$(per_req "$ab_sw" "$ab_target"); ab_ic_swr=$(per_req "$ab_ic_sw" "$ab_target")
full_client_rps=$(per_n "$full_online" "$full_client_s")
fan_ratio=$(ratio "$fanN_rate" "$fan1_rate")
ab_ratio=$(ratio "$ab_target" "${ab_complete:-0}")
ab_tc_us=$(per_us "$ab_tc" "$ab_target"); ab_ic_us=$(per_us "$ab_ic" "$ab_target")

if $json; then
  # bc writes .5 for 0.5: JSON needs the 0.
  sed -e "s/:\./:0./g" -e "s/:-\./:-0./g" <<JSON
{"offline":{"connections":$CONNS,"packets":$packets,"requests":$cap_requests,"wall_s":$off_wall,"packets_per_s":$off_pps,"requests_per_s":$off_rps,"target_requests":$off_target,"target_over_capture":$off_ratio,"capture_duration_s":$cap_duration,"wall_over_capture_duration":$off_wall_ratio,"tcpcopy_cpu_s":$off_cpu,"tcpcopy_cpu_us_per_request":$off_us,"tcpcopy_peak_rss_kb":$off_rss},
 "live":{"rate":$RATE,"seconds":$SECONDS_LIVE,"online_requests":$live_online,"target_requests":$live_target,"target_over_online":$live_ratio,"replay_finished_over_client_finished":$replay_lag_ratio,"capture":"${CAPTURE:-default}","tcpcopy_cpu_s":$tc_cpu,"tcpcopy_peak_rss_kb":$tc_rss,"tcpcopy_cpu_us_per_request":$tc_us,"tcpcopy_instructions_per_request":$live_ipr,"intercept_cpu_s":$ic_cpu,"intercept_peak_rss_kb":$ic_rss,"intercept_cpu_us_per_request":$ic_us},
 "short":{"rate":$SHORT_RATE,"seconds":$SHORT_SECONDS,"online_connections":$short_online,"target_connections":$short_target,"target_over_online":$short_ratio,"tcpcopy_cpu_s":$short_cpu,"tcpcopy_cpu_us_per_connection":$short_us,"tcpcopy_instructions_per_connection":$short_ipc},
 "full":{"requests":$FULL_REQUESTS,"connections":$FULL_CONNS,"client_s":$full_client_s,"online_requests":$full_online,"target_requests":$full_target,"target_over_online":$full_ratio,"replay_finished_over_client_finished":$full_lag_ratio,"replayed_when_client_finished":$full_at_client_end,"replay_rate_while_client_ran":$full_rate_during,"replay_rate_after":$full_rate_after,"tcpcopy_cpu_us_per_request":$full_us,"tcpcopy_user_us_per_request":$full_user_us,"tcpcopy_system_us_per_request":$full_sys_us,"intercept_cpu_us_per_request":$full_ic_us,"tcpcopy_switches_per_request":$full_swr,"intercept_switches_per_request":$full_ic_swr},
 "ab":{"requests":$FULL_REQUESTS,"connections":$FULL_CONNS,"client_s":$ab_client_s,"client_complete":${ab_complete:-0},"client_failed":${ab_failed:-0},"target_requests":$ab_target,"target_over_client":$ab_ratio,"replay_finished_over_client_finished":$ab_lag_ratio,"tcpcopy_cpu_us_per_request":$ab_tc_us,"intercept_cpu_us_per_request":$ab_ic_us,"tcpcopy_switches_per_request":$ab_swr,"intercept_switches_per_request":$ab_ic_swr},
 "fanout":{"processes":$FANOUT,"rounds":$FANOUT_ROUNDS,"requests":$FANOUT_REQUESTS,"connections":$FANOUT_CONNS,"replayed_1":$fan1_done,"replayed_n":$fanN_done,"rate_1":$fan1_rate,"rate_n":$fanN_rate,"rate_n_over_1":$fan_ratio,"tcpcopy_cpu_s_1":$fan1_cpu,"tcpcopy_cpu_s_n":$fanN_cpu,"host_cores_busy_1":$fan1_busy,"host_cores_busy_n":$fanN_busy}}
JSON
else
  has offline && printf '%-44s %s\n' "offline: connections / packets / requests" "$CONNS / $packets / $cap_requests"
  has offline && printf '%-44s %.2f s\n' "offline: wall time (max speed, tail ends early)" "$off_wall"
  has offline && printf '%-44s %s pkt/s, %s req/s\n' "offline: throughput" "$off_pps" "$off_rps"
  has offline && printf '%-44s %s / %s = %s\n' "offline: requests at target / in capture" "$off_target" "$cap_requests" "$off_ratio"
  has offline && printf '%-44s %s / %s s = %s\n' "offline: wall time / capture duration" "$off_wall" "$cap_duration" "$off_wall_ratio"
  has offline && printf '%-44s %s s CPU, %s KB peak RSS, %s us CPU/request\n' "offline: tcpcopy" "$off_cpu" "$off_rss" "$off_us"
  has live && printf '%-44s %s req/s x %s s, %s connections\n' "live: load" "$RATE" "$SECONDS_LIVE" "$LIVE_CONNS"
  has live && printf '%-44s %s / %s = %s\n' "live: requests at target / served online" "$live_target" "$live_online" "$live_ratio"
  has live && printf '%-44s %s (capture: %s)\n' "live: replay finished / client finished" "$replay_lag_ratio" "${CAPTURE:-default}"
  has live && printf '%-44s %s s CPU, %s KB peak RSS, %s us CPU/request\n' "live: tcpcopy" "$tc_cpu" "$tc_rss" "$tc_us"
  has live && printf '%-44s %s\n' "live: tcpcopy user instructions/request" "$live_ipr"
  has live && printf '%-44s %s s CPU, %s KB peak RSS, %s us CPU/request\n' "live: intercept" "$ic_cpu" "$ic_rss" "$ic_us"
  has short && printf '%-44s %s conn/s x %s s, a request each\n' "short: load" "$SHORT_RATE" "$SHORT_SECONDS"
  has short && printf '%-44s %s / %s = %s\n' "short: connections at target / online" "$short_target" "$short_online" "$short_ratio"
  has short && printf '%-44s %s s CPU (incl. lingering), %s us CPU/connection\n' "short: tcpcopy" "$short_cpu" "$short_us"
  has short && printf '%-44s %s\n' "short: tcpcopy user instructions/connection" "$short_ipc"
  if has full; then
    printf '%-44s %s requests on %s connections, %.2f s (%s req/s)\n' "full: keep-alive at full client speed" "$FULL_REQUESTS" "$FULL_CONNS" "$full_client_s" "$full_client_rps"
    printf '%-44s %s / %s = %s\n' "full: requests at target / served online" "$full_target" "$full_online" "$full_ratio"
    printf '%-44s %s\n' "full: replay finished / client finished" "$full_lag_ratio"
    printf '%-44s %s of %s, %s req/s; then %s req/s\n' "full: replayed when the client finished" \
      "$full_at_client_end" "$full_target" "$full_rate_during" "$full_rate_after"
    printf '%-44s %s us CPU/request (user %s + system %s), %s switches/request\n' "full: tcpcopy" "$full_us" "$full_user_us" "$full_sys_us" "$full_swr"
    printf '%-44s %s us CPU/request, %s switches/request\n' "full: intercept" "$full_ic_us" "$full_ic_swr"
  fi
  if has ab; then
    printf '%-44s %s requests on %s connections, %.2f s (%s req/s), %s failed or not 2xx\n' "ab: ab -k against nginx" "${ab_complete:-0}" "$FULL_CONNS" "$ab_client_s" "$ab_rps" "${ab_failed:-?}"
    printf '%-44s %s / %s = %s\n' "ab: requests at target / completed by ab" "$ab_target" "${ab_complete:-0}" "$ab_ratio"
    printf '%-44s %s (%s replayed when ab finished)\n' "ab: replay finished / client finished" "$ab_lag_ratio" "$ab_at_client_end"
    printf '%-44s %s us CPU/request, %s switches/request\n' "ab: tcpcopy" "$ab_tc_us" "$ab_swr"
    printf '%-44s %s us CPU/request, %s switches/request\n' "ab: intercept" "$ab_ic_us" "$ab_ic_swr"
  fi
  if has fanout; then
    printf '%-44s %s keep-alive requests on %s connections, made while tcpcopy was stopped\n' "fanout: backlog" "$FANOUT_REQUESTS" "$FANOUT_CONNS"
    printf '%-44s %s of %s, median %s req/s (rounds: %s; last: tcpcopy %.2f s CPU, host %s of %s cores busy)\n' "fanout: 1 process replayed" "$fan1_done" "$fan1_online" "$fan1_rate" "${rates1[*]}" "$fan1_cpu" "$fan1_busy" "$(nproc)"
    printf '%-44s %s of %s, median %s req/s (rounds: %s; last: tcpcopy %.2f s CPU, host %s of %s cores busy)\n' "fanout: $FANOUT processes replayed" "$fanN_done" "$fanN_online" "$fanN_rate" "${ratesN[*]}" "$fanN_cpu" "$fanN_busy" "$(nproc)"
    printf '%-44s %s\n' "fanout: replay rate $FANOUT processes / 1 (medians)" "$fan_ratio"
  fi
fi
if [ "${PROFILE:-0}" = 1 ] && has full; then
  for who in tcpcopy intercept; do
    echo "== top frames, $who, full-speed phase (perf, cpu-clock samples):" >&2
    perf report -i "$work/$who.perf" --stdio --no-children --sort dso,symbol 2>/dev/null \
      | grep -E '^ +[0-9.]+%' | head -n "${PROFILE_TOP:-15}" >&2 || true
  done
  # The lab's veth links run the receiving host's network stack inside the sender's calls,
  # and any softirq that interrupts a process is counted as its CPU: the share of samples
  # under handle_softirqs (network receive of any of the lab's hosts, and STEER's RPS IPIs)
  # is the part of the figure that separate hosts would not charge to this process.
  for who in tcpcopy intercept; do
    share=$(perf report -i "$work/$who.perf" --stdio --children -g none --sort symbol 2>/dev/null \
      | awk '$NF == "-" && / handle_softirqs / {gsub("%", "", $1); print $1; exit}' || true)
    us=$([ "$who" = tcpcopy ] && echo "$full_us" || echo "$full_ic_us")
    printf '%-44s %s%% of samples in softirq; %s us CPU/request outside it\n' \
      "full: $who (perf)" "${share:-0}" \
      "$(echo "scale=1; $us * (100 - ${share:-0}) / 100" | bc -l)" >&2
  done
fi
echo "logs: $work" >&2
