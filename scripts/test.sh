#!/usr/bin/env bash
# The test command of README.md: installs what the tests need (Debian 12, as root), then runs
# formatting, lints and the whole test suite (unit, property and network-namespace end-to-end
# tests). CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: run as root (sudo scripts/test.sh): the end-to-end tests build network namespaces" >&2
    exit 1
  fi
}
need_root

# redis-server .. apache2-utils, wrk, mariadb-*: the real servers and clients of tests/tests/real_*.rs
# and db_auth.rs
# (their Debian service instances, if started, listen in the root namespace: no conflict).
# prometheus: its promtool checks the metrics text (crates/tc-core/tests/metrics.rs).
# dpkg-dev .. systemd: tests/tests/package.rs builds, installs (man -w, getcap,
# systemd-analyze verify) and purges the Debian package of scripts/package.sh.
# dnsmasq-base, dnsperf: the DNS server and client load of tests/tests/udp.rs (--udp).
packages=(libpcap-dev iproute2 ethtool tcpdump pkg-config curl python3 bc wrk memcached
  redis-server redis-tools postgresql postgresql-client nginx-light apache2-utils prometheus
  dpkg-dev binutils man-db libcap2-bin systemd mariadb-server mariadb-client
  dnsmasq-base dnsperf)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The tests start their own server instances: keep Debian from starting its services
  # during the install (a policy-rc.d of the machine's own is left alone).
  policy=/usr/sbin/policy-rc.d
  own_policy=false
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=true
  fi
  rc=0
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" || rc=$?
  if $own_policy; then rm -f "$policy"; fi
  [ "$rc" -eq 0 ] || { echo "scripts/test.sh: installing ${missing[*]} failed" >&2; exit "$rc"; }
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "scripts/test.sh: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi
for c in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
    rustup component add "$c"
  fi
done

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== pure core: tc-core without the io feature"
# packet, session, the control codecs and routing must build without any I/O crate.
cargo build -p tc-core --no-default-features
io_crates=$(cargo tree -p tc-core --no-default-features -e normal \
  | grep -wE 'mio|libc|pcap|socket2|env_logger' || true)
if [ -n "$io_crates" ]; then
  echo "tc-core without the io feature depends on I/O crates:" >&2
  echo "$io_crates" >&2
  exit 1
fi
echo "== cargo build (binaries used by the end-to-end tests)"
cargo build --workspace --bins
before=$(ip netns list | awk '{print $1}' | sort)
echo "== cargo test (with the tests that need root: #[ignore = \"needs root\"])"
cargo test --workspace --no-fail-fast -- --include-ignored
echo "== leftover namespaces check"
after=$(ip netns list | awk '{print $1}' | sort)
left=$(comm -13 <(echo "$before") <(echo "$after") | grep . || true)
if [ -n "$left" ]; then
  echo "namespaces left over by the tests:" >&2
  echo "$left" >&2
  exit 1
fi
# Every cargo-fuzz target of crates/tc-core/fuzz for a short run from its committed seeds
# (FUZZ_SECONDS each, 20 by default; scripts/fuzz.sh SECONDS runs them longer). Needs the
# nightly toolchain: without it scripts/fuzz.sh says so loudly and the run goes on.
echo "== fuzz targets (${FUZZ_SECONDS:-20} s each)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
echo "== all tests passed"
