#!/usr/bin/env bash
# Builds the Debian packages: nodelet_<version>_<arch>.deb (the stripped
# binary, the systemd units and environment file, default configs, the
# directories, maintainer scripts) and nodelet-dbgsym_<version>_<arch>.deb
# (the debug info, found by build ID under /usr/lib/debug/.build-id).
#
#   systemd/build-deb.sh                     # cargo build --profile dist, then package
#   systemd/build-deb.sh --binary PATH       # package an already built binary
#   systemd/build-deb.sh --out DIR           # where the .debs go [target/debian]
#   systemd/build-deb.sh --fast              # gzip -1 instead of xz (for tests)
# Needs dpkg-dev (dpkg-shlibdeps) and binutils; tests/setup.sh installs both.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=target/debian
bin=
compress=()
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) bin=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --fast) compress=(-Zgzip -z1); shift ;;
    *) echo "usage: $0 [--binary PATH] [--out DIR] [--fast]" >&2; exit 2 ;;
  esac
done
if [ -z "$bin" ]; then
  cargo build --locked --profile dist --bin nodelet
  bin=target/dist/nodelet
fi
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
# The Kubernetes release nodelet follows: the package provides kubelet at it.
kube_version=$("$bin" --version | sed -n 's/.*; Kubernetes v\([0-9][0-9.]*\),.*/\1/p')
[ -n "$kube_version" ] || { echo "build-deb: $bin --version names no Kubernetes release" >&2; exit 1; }
arch=$(dpkg --print-architecture)
build_id=$(readelf -n "$bin" | sed -n 's/^ *Build ID: \([0-9a-f]*\)$/\1/p')
[ -n "$build_id" ] || { echo "build-deb: $bin has no GNU build ID" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=$work/nodelet
dbg=$work/nodelet-dbgsym
umask 022

# The binary, stripped; its debug info goes to the -dbgsym package, where
# gdb and Rust's own backtraces find it by build ID.
install -d "$pkg/usr/bin" "$dbg/usr/lib/debug/.build-id/${build_id:0:2}"
debug_file=$dbg/usr/lib/debug/.build-id/${build_id:0:2}/${build_id:2}.debug
objcopy --only-keep-debug --compress-debug-sections "$bin" "$debug_file"
chmod 0644 "$debug_file"
objcopy --strip-unneeded --remove-section=.comment --add-gnu-debuglink="$debug_file" "$bin" "$pkg/usr/bin/nodelet"
chmod 0755 "$pkg/usr/bin/nodelet"

install -D -m 0644 systemd/nodelet.service "$pkg/lib/systemd/system/nodelet.service"
# kubelet's names, for kubeadm and the tools that know kubelet: the unit
# `kubelet.service` is an alias of nodelet.service (so kubeadm's drop-in
# kubelet.service.d/10-kubeadm.conf applies to it, and `systemctl restart
# kubelet` restarts nodelet), and /usr/bin/kubelet, which that drop-in runs,
# is nodelet under kubelet's name (`kubelet --version` answers as kubelet).
ln -s nodelet.service "$pkg/lib/systemd/system/kubelet.service"
ln -s nodelet "$pkg/usr/bin/kubelet"
install -D -m 0644 systemd/nodelet.path "$pkg/lib/systemd/system/nodelet.path"
install -D -m 0644 systemd/nodelet.env "$pkg/etc/default/nodelet"
install -D -m 0644 manifests/kubelet-config.yaml "$pkg/etc/nodelet/kubelet-config.yaml"
install -D -m 0644 manifests/kube-proxy-config.yaml "$pkg/etc/nodelet/kube-proxy-config.yaml"
install -D -m 0644 README.md "$pkg/usr/share/doc/nodelet/README.md"
install -d "$pkg/usr/share/doc/nodelet/docs"
install -m 0644 docs/*.md "$pkg/usr/share/doc/nodelet/docs/"
install -D -m 0644 systemd/debian/copyright "$pkg/usr/share/doc/nodelet/copyright"
install -D -m 0644 manifests/nodelet-rbac.yaml "$pkg/usr/share/doc/nodelet/nodelet-rbac.yaml"
# kubelet's directories: its root dir and certificate dir (keys: owner only),
# static pods, pod logs.
install -d -m 0755 "$pkg/etc/kubernetes/manifests" "$pkg/var/log/pods" "$pkg/var/log/containers"
install -d -m 0750 "$pkg/var/lib/kubelet"
install -d -m 0700 "$pkg/var/lib/kubelet/pki"

install -d "$pkg/DEBIAN" "$dbg/DEBIAN"
install -m 0755 systemd/debian/postinst systemd/debian/prerm systemd/debian/postrm "$pkg/DEBIAN/"
printf '%s\n' /etc/default/nodelet /etc/nodelet/kubelet-config.yaml /etc/nodelet/kube-proxy-config.yaml > "$pkg/DEBIAN/conffiles"

# Shared-library dependencies as Debian computes them.
mkdir -p "$work/debian"
printf 'Source: nodelet\n\nPackage: nodelet\nArchitecture: any\n' > "$work/debian/control"
shlibs=$(cd "$work" && dpkg-shlibdeps -O -e nodelet/usr/bin/nodelet 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "build-deb: dpkg-shlibdeps found no libraries" >&2; exit 1; }
rm -rf "$work/debian"

size() { du -sk --exclude=DEBIAN "$1" | cut -f1; }
(cd "$pkg" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | sort -z | xargs -0 md5sum) > "$pkg/DEBIAN/md5sums"
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: nodelet
Version: $version
Architecture: $arch
Maintainer: nodelet developers <nodelet@localhost>
Installed-Size: $(size "$pkg")
Depends: $shlibs, containerd, runc, containernetworking-plugins, iptables, nftables, conntrack
Provides: kubelet (= $kube_version)
Conflicts: kubelet
Replaces: kubelet
Section: admin
Priority: optional
Description: Kubernetes node agent: the kubelet and kube-proxy roles in one daemon
 nodelet runs the pods bound to its node in containerd over CRI v1, reports
 them to the apiserver, joins the cluster by TLS bootstrap, serves the node
 API on :10250 and programs Services with iptables or nftables. It reads the
 KubeletConfiguration and KubeProxyConfiguration files operators already have.
CONTROL
(cd "$dbg" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) > "$dbg/DEBIAN/md5sums"
cat > "$dbg/DEBIAN/control" <<CONTROL
Package: nodelet-dbgsym
Source: nodelet
Version: $version
Architecture: $arch
Maintainer: nodelet developers <nodelet@localhost>
Installed-Size: $(size "$dbg")
Depends: nodelet (= $version)
Section: debug
Priority: optional
Auto-Built-Package: debug-symbols
Build-Ids: $build_id
Description: debug symbols for nodelet
CONTROL

mkdir -p "$out"
dpkg-deb "${compress[@]}" --root-owner-group --build "$pkg" "$out/nodelet_${version}_${arch}.deb" >/dev/null
dpkg-deb "${compress[@]}" --root-owner-group --build "$dbg" "$out/nodelet-dbgsym_${version}_${arch}.deb" >/dev/null
for f in "$out/nodelet_${version}_${arch}.deb" "$out/nodelet-dbgsym_${version}_${arch}.deb"; do
  echo "build-deb: $f ($(du -h "$f" | cut -f1))"
done
echo "build-deb: /usr/bin/nodelet is $(du -h "$pkg/usr/bin/nodelet" | cut -f1) stripped"
