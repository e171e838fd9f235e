#!/usr/bin/env bash
# Installs what nodelet's tests, benchmarks and demo need, from Debian:
# containerd and runc (the runtime), the CNI plugins, iptables, nftables and
# conntrack (the Service proxy),
# busybox-static (the test images), protoc (CRI code generation), iproute2,
# and a C toolchain (the linker, and ring's C and assembly) with pkg-config
# and curl (rustup); binutils, dpkg-dev and init-system-helpers for the
# Debian package and its test; dbus-daemon for the graceful-shutdown test
# (a private bus with a stand-in logind); docker-registry, skopeo and
# apache2-utils (htpasswd) for the registry tests; e2fsprogs and mount (mkfs.ext4,
# losetup) for the persistent volume tests. Idempotent; run as root.
set -euo pipefail
packages=(containerd runc containernetworking-plugins iptables nftables conntrack busybox-static protobuf-compiler libprotobuf-dev iproute2 util-linux
          gcc libc6-dev pkg-config curl ca-certificates binutils dpkg-dev init-system-helpers dbus-daemon
          docker-registry skopeo apache2-utils e2fsprogs mount)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian containerd package starts a system containerd; nodelet's tests
# start their own and never touch it.
for bin in containerd containerd-shim-runc-v2 runc protoc busybox ip nsenter cc dbus-daemon docker-registry skopeo htpasswd; do
  command -v "$bin" >/dev/null || { echo "setup.sh: $bin is still missing" >&2; exit 1; }
done
[ -x /usr/lib/cni/bridge ] || { echo "setup.sh: CNI plugins missing in /usr/lib/cni" >&2; exit 1; }
# containerd 1.7 for the DRA tests: Debian 12's 1.6 cannot inject CDI devices.
# Debian 13's package (it needs only libc >= 2.34) is fetched with apt-get
# from a source list of its own and unpacked under /var/cache/nodelet-test;
# the system's apt sources and its containerd are left as they are.
c17=/var/cache/nodelet-test/containerd-1.7
if [ ! -x "$c17/usr/bin/containerd" ]; then
  work=$(mktemp -d)
  mkdir -p "$work/lists/partial" "$work/archives/partial"
  echo "deb http://deb.debian.org/debian trixie main" > "$work/sources.list"
  apt_opts=(-o Dir::Etc::sourcelist="$work/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$work/lists"
            -o Dir::Cache="$work" -o Dir::Cache::archives="$work/archives" -o APT::Sandbox::User=root -qq)
  apt-get "${apt_opts[@]}" update
  (cd "$work" && apt-get "${apt_opts[@]}" download containerd)
  rm -rf "$c17.new" && mkdir -p "$c17.new"
  dpkg-deb -x "$work"/containerd_*.deb "$c17.new"
  rm -rf "$c17" && mv "$c17.new" "$c17"
  rm -rf "$work"
fi
"$c17/usr/bin/containerd" --version | grep -q ' 1\.7\.' || { echo "setup.sh: $c17 is not containerd 1.7" >&2; exit 1; }
# Rust comes from rustup, not Debian (bookworm's rustc is too old). Under
# sudo, secure_path leaves out ~/.cargo/bin: look there too.
if ! command -v cargo >/dev/null; then
  for d in "${CARGO_HOME:-}" "$HOME/.cargo" "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)/.cargo"; do
    [ -n "$d" ] && [ -x "$d/bin/cargo" ] && { echo "setup.sh: cargo is in $d/bin but not on PATH: run  export PATH=$d/bin:\$PATH  (or sudo env PATH=\"\$PATH\" ...)" >&2; exit 1; }
  done
  echo "setup.sh: cargo not found: install Rust with  curl --proto '=https' -sSf https://sh.rustup.rs | sh -s -- -y  then  . ~/.cargo/env" >&2
  exit 1
fi
echo "setup.sh: ready"
