#!/usr/bin/env bash
# One-command demo: a TCPCopy lab in network namespaces on this machine (see
# ../shared/spec/lab.md for the recipe). An HTTP server runs on "online" and a test server on
# "target"; tcpcopy on "online" copies every request to the test server; curl in "client"
# makes traffic; the report compares the requests served online and at the target.
#
#   sudo scripts/demo.sh             three hosts: intercept on "assist", the target routes the
#                                    fake clients to it (the original deployment)
#   sudo scripts/demo.sh --offline   three hosts, capture to a pcap first, then replay the file
#   sudo scripts/demo.sh --two-hosts intercept --route on the target itself, no assist host
#   sudo scripts/demo.sh --one-host  test server on online:8080 beside the online :80, tcpcopy
#                                    and intercept --route on that host too
#
# Addresses: lab hosts 198.18.0.0/24, fake clients 203.0.113.0/24. Everything is removed on
# exit (also on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=live
deploy=three
case "${1:-}" in
  "") ;;
  --offline) mode=offline ;;
  --two-hosts) deploy=two; hosts=(client online target) ;;
  --one-host) deploy=one; hosts=(client online) ;;
  -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--offline | --two-hosts | --one-host]" >&2; exit 2 ;;
esac
requests=${DEMO_REQUESTS:-100}

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: run as root (sudo scripts/demo.sh): it builds network namespaces" >&2
  exit 1
fi

source scripts/lab.sh
install_missing libpcap-dev iproute2 ethtool curl python3 tcpdump pkg-config
[ -n "${DEMO_BIN_DIR:-}" ] || command -v cargo >/dev/null || { echo "demo.sh: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }

if [ -n "${DEMO_BIN_DIR:-}" ]; then
  bin=$DEMO_BIN_DIR # prebuilt binaries (the CI test of this script)
else
  echo "== building release binaries"
  cargo build --release --bins -q
  bin=$PWD/target/release
fi
py=/usr/bin/python3

run=tcdemo$$
work=$(mktemp -d /tmp/tcpcopy-demo.XXXXXX)
cleanup() {
  lab_down
  echo "== cleaned up (namespaces $run-*); logs kept in $work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== building the lab ($run-{$(IFS=,; echo "${hosts[*]}")} on a bridge)"
lab_up

# Where the test server and intercept run, and where tcpcopy sends and connects.
case $deploy in
  three) target_host=target; target_ip=198.18.0.30; intercept_host=assist
         intercept_at=198.18.0.40
         intercept_args=(-F "tcp and src port 8080" -i eth0 --allow 198.18.0.20) ;;
  two)   target_host=target; target_ip=198.18.0.30; intercept_host=target
         intercept_at=198.18.0.30
         intercept_args=(--route 203.0.113.0/24 --allow 198.18.0.20) ;;
  one)   target_host=online; target_ip=198.18.0.20; intercept_host=online
         intercept_at=127.0.0.1
         intercept_args=(--route 203.0.113.0/24 -b 127.0.0.1) ;;
esac

mkdir -p "$work/www"
echo "hello from tcpcopy-rs demo" > "$work/www/index.html"
start online-http online $py -m http.server 80 --bind 198.18.0.20 --directory "$work/www"
start target-http "$target_host" $py -m http.server 8080 --bind "$target_ip" --directory "$work/www"
wait_port online 80 || exit 1
wait_port "$target_host" 8080 "$target_ip" || exit 1

echo "== intercept on $intercept_host: intercept ${intercept_args[*]}"
start intercept "$intercept_host" "$bin/intercept" "${intercept_args[@]}"
intercept_pid=${pids[-1]}
wait_port "$intercept_host" 36524 "$intercept_at" || { cat "$work/intercept.log" >&2; exit 1; }

traffic() {
  for i in $(seq 1 "$requests"); do
    ns client curl -s -o /dev/null "http://198.18.0.20/index.html?req=$i"
  done
}

served() { grep -c '"GET /index.html' "$work/$1-http.log" 2>/dev/null || true; }

if [ "$mode" = live ]; then
  echo "== tcpcopy on online: tcpcopy -x 80-$target_ip:8080 -s $intercept_at -c 203.0.113.x"
  start tcpcopy online "$bin/tcpcopy" -x "80-$target_ip:8080" -s "$intercept_at" -c 203.0.113.x
  tcpcopy_pid=${pids[-1]}
  for _ in $(seq 1 100); do grep -q "event loop running" "$work/tcpcopy.log" && break; sleep 0.1; done
  echo "== sending $requests HTTP requests from client to online:80 (tcpcopy copies them to $target_host:8080)"
  traffic
else
  echo "== capturing $requests HTTP requests on online to $work/online.pcap"
  start tcpdump online tcpdump -Z root --immediate-mode -i eth0 -w "$work/online.pcap" -U "tcp port 80"
  sleep 1
  traffic
  sleep 0.5
  kill -INT "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  echo "== replaying $work/online.pcap offline to target:8080"
  ns online "$bin/tcpcopy" -i "$work/online.pcap" -x 80-198.18.0.30:8080 -s 198.18.0.40 \
    -c 203.0.113.x --offline-tail 3 > "$work/tcpcopy.log" 2>&1
fi

online=$(served online)
for _ in $(seq 1 100); do
  [ "$(served target)" -ge "$online" ] && break
  sleep 0.1
done
target=$(served target)
if [ "$mode" = live ]; then
  # A graceful stop prints tcpcopy's final statistics.
  kill -INT "$tcpcopy_pid" 2>/dev/null || true
  wait "$tcpcopy_pid" 2>/dev/null || true
fi
leftover=
if [ "$deploy" != three ]; then
  # intercept --route removes its device and route when it stops.
  kill -TERM "$intercept_pid" 2>/dev/null || true
  wait "$intercept_pid" 2>/dev/null || true
  ns "$intercept_host" ip link show tcrs0 >/dev/null 2>&1 && leftover="device tcrs0"
  [ -z "$(ns "$intercept_host" ip route show 203.0.113.0/24)" ] || leftover="$leftover route"
fi

echo
echo "== report ($deploy-host deployment)"
echo "requests served online:        $online"
echo "requests received by target:   $target"
grep -E "conns:|syn cnt:|send:" "$work/tcpcopy.log" | tail -3 | sed 's/^/tcpcopy: /' || true
echo "logs: $work (online-http.log, target-http.log, intercept.log, tcpcopy.log)"
if [ "$deploy" != three ]; then
  if [ -n "$leftover" ]; then
    echo "FAILED: intercept --route left on $intercept_host: $leftover" >&2
    exit 1
  fi
  echo "intercept --route stopped: device tcrs0 and route 203.0.113.0/24 removed from $intercept_host"
fi
if [ "$target" -ge "$online" ] && [ "$online" -gt 0 ]; then
  echo "OK: the target received every request the online server served"
else
  echo "FAILED: the target received $target of $online requests" >&2
  exit 1
fi
