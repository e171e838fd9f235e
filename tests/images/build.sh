#!/usr/bin/env bash
# Builds the test and demo images as OCI image layout archives from Debian's
# busybox-static, without a registry or a container engine:
#   OUT/busybox.tar  nodelet.local/busybox:1   (busybox with every applet)
#   OUT/pause.tar    nodelet.local/pause:1     (the sandbox image: sleeps, exits 0 on TERM)
#   OUT/entrypoint.tar nodelet.local/entrypoint:1 (busybox whose Entrypoint and Cmd echo
#                    themselves, for upstream's "Containers" cases on image defaults)
# The archives are reproducible: same busybox, same bytes.
set -euo pipefail
out=${1:?usage: build.sh OUT_DIR}
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "build.sh: $busybox not found (apt-get install busybox-static)" >&2; exit 1; }
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The root filesystem: busybox, a link per applet, and the files a container expects.
root=$work/rootfs
mkdir -p "$root"/{bin,etc,tmp,root,var/www,home/user}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
mkdir -p "$root/sbin" "$root/usr/bin" "$root/usr/sbin"
printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n' > "$root/etc/group"
chmod 1777 "$root/tmp"
echo "hello from nodelet" > "$root/var/www/index.html"

layer_tar=$work/layer.tar
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$layer_tar" .
diff_id=sha256:$(sha256sum "$layer_tar" | cut -d' ' -f1)
gzip -n -9 -c "$layer_tar" > "$work/layer.tar.gz"
layer_digest=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer.tar.gz")

# make_image NAME TAG FILE CONFIG_JSON_FRAGMENT
make_image() {
  local name=$1 tag=$2 file=$3 cfg=$4
  local d=$work/$file.d
  mkdir -p "$d/blobs/sha256"
  cp "$work/layer.tar.gz" "$d/blobs/sha256/$layer_digest"
  printf '{"architecture":"amd64","os":"linux","config":{%s},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "$cfg" "$diff_id" > "$work/config.json"
  local cdig csize mdig msize
  cdig=$(sha256sum "$work/config.json" | cut -d' ' -f1); csize=$(stat -c %s "$work/config.json")
  cp "$work/config.json" "$d/blobs/sha256/$cdig"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$cdig" "$csize" "$layer_digest" "$layer_size" > "$work/manifest.json"
  mdig=$(sha256sum "$work/manifest.json" | cut -d' ' -f1); msize=$(stat -c %s "$work/manifest.json")
  cp "$work/manifest.json" "$d/blobs/sha256/$mdig"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$d/oci-layout"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s:%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$mdig" "$msize" "$name" "$tag" "$tag" > "$d/index.json"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$d" -cf "$out/$file" oci-layout index.json blobs
}

env_path='"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'
make_image nodelet.local/busybox 1 busybox.tar "$env_path,\"Cmd\":[\"sh\"],\"WorkingDir\":\"/\""
make_image nodelet.local/pause 1 pause.tar \
  "$env_path,\"Entrypoint\":[\"/bin/sh\",\"-c\",\"trap 'exit 0' TERM INT; while true; do sleep 86400 & wait \$!; done\"],\"WorkingDir\":\"/\""
make_image nodelet.local/entrypoint 1 entrypoint.tar \
  "$env_path,\"Entrypoint\":[\"/bin/echo\",\"[/ep]\"],\"Cmd\":[\"default\",\"arguments\"],\"WorkingDir\":\"/\""
echo "built $out/busybox.tar (nodelet.local/busybox:1), $out/pause.tar (nodelet.local/pause:1) and $out/entrypoint.tar (nodelet.local/entrypoint:1)"
