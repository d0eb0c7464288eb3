# Shared by demo.sh and bench.sh (source it): a single-host TCPCopy lab of network namespaces
# (recipe: ../shared/spec/lab.md). Hosts client/online/target/assist on a bridge in "sw";
# lab addresses 198.18.0.0/24, fake clients 203.0.113.0/24 routed from target to assist.
# Set `run` (a unique prefix) and `work` (a log directory) before calling lab_up; to build
# fewer hosts, set `hosts` too (without assist, the target gets no route to it: the two-host
# and one-host deployments run intercept --route on the target instead).

hosts=(${hosts[@]:-client online target assist})
declare -A ip=([client]=198.18.0.10 [online]=198.18.0.20 [target]=198.18.0.30 [assist]=198.18.0.40)
pids=()

ns() { ip netns exec "$run-$1" "${@:2}"; }

lab_up() {
  ip netns add "$run-sw"
  ip -n "$run-sw" link add br0 type bridge stp_state 0 forward_delay 0
  ip -n "$run-sw" link set br0 up
  local h k
  for h in "${hosts[@]}"; do
    ip netns add "$run-$h"
    ip -n "$run-sw" link add "v$h" type veth peer name eth0 netns "$run-$h"
    ip -n "$run-sw" link set "v$h" master br0 up
    ns "$h" ip link set lo up
    ns "$h" ip addr add "${ip[$h]}/24" dev eth0
    ns "$h" ip link set eth0 up
    for k in all default eth0 lo; do ns "$h" sysctl -qw "net.ipv4.conf.$k.rp_filter=0"; done
    ns "$h" sysctl -qw net.ipv4.ip_local_port_range="10000 60999"
    ns "$h" sysctl -qw net.core.somaxconn=4096
    # Transmit checksum offload as on container/VM links (partial checksums reach tcpcopy);
    # LAB_TX_OFFLOAD=off computes them in software (to compare with builds before issue 13).
    ns "$h" ethtool -K eth0 tx "${LAB_TX_OFFLOAD:-on}" tso off gso off gro off >/dev/null 2>&1 || true
  done
  if [[ " ${hosts[*]} " == *" assist "* ]]; then
    ns target ip route add 203.0.113.0/24 via 198.18.0.40
    ns assist sysctl -qw net.ipv4.ip_forward=0
  fi
}

# Kills what `start` started and removes the namespaces.
lab_down() {
  set +e
  local p h
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for h in "${hosts[@]}" sw; do ip netns del "$run-$h" 2>/dev/null; done
}

# start NAME HOST COMMAND...: runs COMMAND in HOST, output to $work/NAME.log; its pid is the
# last of `pids` (ip netns exec execs the command).
start() {
  ip netns exec "$run-$2" "${@:3}" > "$work/$1.log" 2>&1 &
  pids+=($!)
}

# wait_port HOST PORT [ADDR]: until something listens on ADDR (default: HOST's address)
# inside HOST (bounded, 10 s).
wait_port() {
  local _ addr=${3:-${ip[$1]}}
  for _ in $(seq 1 100); do
    ns "$1" bash -c "exec 3<>/dev/tcp/$addr/$2" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $addr:$2" >&2
  return 1
}

# install_missing PACKAGE...: apt-get install what dpkg does not have (Debian, as root).
install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

# The bench protocol's servers on online:80 and target:8080 (requests counted in
# $work/{online,target}.count, read with `count`), and intercept on assist for tcpcopy on
# online (its pid in intercept_pid). Needs `bin` (the tc-bench-* and intercept binaries).
# count NAME: the server's request count (its file is rewritten as it goes: a read that
# races a rewrite finds it empty, and is retried).
count() {
  local v _
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    v=$(cat "$work/$1.count" 2>/dev/null || true)
    [[ $v =~ ^[0-9]+$ ]] && { echo "$v"; return; }
    sleep 0.01
  done
  echo 0
}
start_bench_lab() {
  start target-srv target "$bin/tc-bench-server" 198.18.0.30:8080 "$work/target.count"
  start online-srv online "$bin/tc-bench-server" 198.18.0.20:80 "$work/online.count"
  wait_port target 8080; wait_port online 80
  # 8081: bench.sh's ab phase (nginx).
  start intercept assist "${intercept_bin:-$bin/intercept}" -F "tcp and src portrange 8080-8081" \
    -i eth0 --allow 198.18.0.20
  intercept_pid=${pids[-1]}
  wait_port assist 36524
}
