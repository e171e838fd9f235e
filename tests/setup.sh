#!/usr/bin/env bash
# Installs what nodelet's tests, benchmarks and demo need, from Debian:
# containerd and runc (the runtime), the CNI plugins, iptables, nftables and
# conntrack (the Service proxy),
# busybox-static (the test images), protoc (CRI code generation) and iproute2.
# Idempotent; run as root.
set -euo pipefail
packages=(containerd runc containernetworking-plugins iptables nftables conntrack busybox-static protobuf-compiler iproute2 util-linux)
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
for bin in containerd containerd-shim-runc-v2 runc protoc busybox ip nsenter; do
  command -v "$bin" >/dev/null || { echo "setup.sh: $bin is still missing" >&2; exit 1; }
done
[ -x /usr/lib/cni/bridge ] || { echo "setup.sh: CNI plugins missing in /usr/lib/cni" >&2; exit 1; }
echo "setup.sh: ready"
