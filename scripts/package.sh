#!/usr/bin/env bash
# Builds the Debian package tcpcopy-rs: tcpcopy and intercept in /usr/sbin, their man pages
# tcpcopy(8) and intercept(8), bash/zsh/fish completions (all generated from the clap
# definitions by the binaries' hidden --generate-docs), the systemd units intercept.service and
# tcpcopy@.service, /etc/default/intercept, and maintainer scripts that create the user
# tcpcopy and give the binaries file capabilities (packaging/).
#
# The .deb is put together with dpkg-deb from a staged tree: no tool beyond dpkg-dev (which
# also gives dpkg-shlibdeps the library dependencies) and binutils (strip).
#
#   scripts/package.sh [--out DIR] [--bin-dir DIR] [--version VERSION]
#
#   --out DIR        where the .deb goes (default target/debian); its path is the last line
#   --bin-dir DIR    package the tcpcopy and intercept found in DIR as they are instead of
#                    building them (cargo build --release --locked)
#   --version V      the package version (default: the crates' version)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

out=target/debian
bin_dir=
version=
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
    --version) version=${2:?--version needs a version}; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "scripts/package.sh: unknown argument $1 (--help)" >&2; exit 2 ;;
  esac
done

for tool in dpkg-deb dpkg-shlibdeps strip gzip; do
  command -v "$tool" >/dev/null || {
    echo "scripts/package.sh: $tool not found (apt-get install dpkg-dev binutils gzip)" >&2
    exit 1
  }
done

if [ -z "$bin_dir" ]; then
  echo "== cargo build --release --locked -p tcpcopy -p intercept"
  cargo build --release --locked -p tcpcopy -p intercept
  bin_dir=$root/target/release
fi
for b in tcpcopy intercept; do
  [ -x "$bin_dir/$b" ] || { echo "scripts/package.sh: no $b in $bin_dir" >&2; exit 1; }
done
if [ -z "$version" ]; then
  version=$(cargo pkgid -p tcpcopy --offline 2>/dev/null || cargo pkgid -p tcpcopy)
  version=${version##*#}
  version=${version##*@}
fi
arch=$(dpkg --print-architecture)
# Dates in the man pages: the commit's (reproducible), else now.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/tcpcopy-rs-package.XXXXXX")
trap 'rm -rf "$work"' EXIT
stage=$work/tcpcopy-rs
umask 022

echo "== staging tcpcopy-rs $version ($arch)"
install -d "$stage/DEBIAN" "$stage/usr/sbin" "$stage/usr/share/man/man8" \
  "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions" \
  "$stage/usr/share/fish/vendor_completions.d" "$stage/usr/lib/systemd/system" \
  "$stage/etc/default" "$stage/etc/tcpcopy" "$stage/usr/share/doc/tcpcopy-rs/examples"
docs=$work/docs
for b in tcpcopy intercept; do
  install -m 0755 "$bin_dir/$b" "$stage/usr/sbin/$b"
  strip --strip-debug "$stage/usr/sbin/$b"
  "$stage/usr/sbin/$b" --generate-docs "$docs" >/dev/null
  gzip -9n < "$docs/$b.8" > "$stage/usr/share/man/man8/$b.8.gz"
  install -m 0644 "$docs/$b.bash" "$stage/usr/share/bash-completion/completions/$b"
  install -m 0644 "$docs/_$b" "$stage/usr/share/zsh/vendor-completions/_$b"
  install -m 0644 "$docs/$b.fish" "$stage/usr/share/fish/vendor_completions.d/$b.fish"
done
install -m 0644 packaging/systemd/intercept.service packaging/systemd/tcpcopy@.service \
  "$stage/usr/lib/systemd/system/"
install -m 0644 packaging/default/intercept "$stage/etc/default/intercept"
install -m 0644 packaging/examples/tcpcopy-NAME.conf "$stage/usr/share/doc/tcpcopy-rs/examples/"
install -m 0644 LICENSE "$stage/usr/share/doc/tcpcopy-rs/copyright"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm \
  "$stage/DEBIAN/"
echo /etc/default/intercept > "$stage/DEBIAN/conffiles"

# Shared libraries (libpcap, libc) as dpkg-shlibdeps finds them; it wants a debian/control.
mkdir -p "$work/shlibs/debian"
printf 'Source: tcpcopy-rs\n\nPackage: tcpcopy-rs\nArchitecture: any\n' \
  > "$work/shlibs/debian/control"
shlibs=$(cd "$work/shlibs" && dpkg-shlibdeps -O "$stage/usr/sbin/tcpcopy" \
  "$stage/usr/sbin/intercept" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "scripts/package.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<EOF
Package: tcpcopy-rs
Version: $version
Architecture: $arch
Maintainer: tcpcopy-rs developers <tcpcopy-rs@example.invalid>
Installed-Size: $size
Depends: $shlibs, libcap2-bin, passwd
Section: net
Priority: optional
Homepage: https://example.invalid/tcpcopy-rs
Description: live TCP traffic replay (tcpcopy and intercept)
 tcpcopy copies live TCP traffic of a production host to a test server;
 intercept, on the test server's side, passes the responses back to it.
 A Rust re-implementation of TCPCopy. The binaries get the file capabilities
 CAP_NET_RAW and CAP_NET_ADMIN, for root and the group tcpcopy only;
 intercept.service and tcpcopy@.service run them as the user tcpcopy.
EOF

deb=$out/tcpcopy-rs_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
