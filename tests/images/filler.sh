#!/usr/bin/env bash
# Builds an image that takes room: busybox plus MB megabytes of random data
# (incompressible), as an OCI image layout archive. For image GC tests.
#   filler.sh OUT.tar NAME:TAG MB
set -euo pipefail
out=${1:?usage: filler.sh OUT.tar NAME:TAG MB}
ref=${2:?}; mb=${3:?}
busybox=${BUSYBOX:-/bin/busybox}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/bin" "$root/tmp" "$root/etc"
cp "$busybox" "$root/bin/busybox"
for a in sh sleep cat; do ln -s busybox "$root/bin/$a"; done
head -c "$((mb * 1024 * 1024))" /dev/urandom > "$root/filler"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -1 -c "$work/layer.tar" > "$work/layer.tar.gz"
d=$work/oci
mkdir -p "$d/blobs/sha256"
blob() { local dig; dig=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$d/blobs/sha256/$dig"; echo "$dig $(stat -c %s "$1")"; }
read -r ldig lsize < <(blob "$work/layer.tar.gz")
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff_id" > "$work/config.json"
read -r cdig csize < <(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$cdig" "$csize" "$ldig" "$lsize" > "$work/manifest.json"
read -r mdig msize < <(blob "$work/manifest.json")
printf '{"imageLayoutVersion":"1.0.0"}' > "$d/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$mdig" "$msize" "$ref" "${ref##*:}" > "$d/index.json"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$d" -cf "$out" oci-layout index.json blobs
