#!/usr/bin/env bash
# Boot Debian's own kernel under qemu (TCG) with a busybox initramfs and run a
# test payload in it. The host kernel lacks IP_VS, dummy, NFS, ...; Debian's
# kernel has them as modules.
#
#   vm.sh prepare  install host tools, fetch + unpack the kernel into the cache,
#                  print the kernel version (idempotent; seconds when cached)
#   vm.sh run [--timeout SECS] [--mem MB] [--bin PATH]... [--file SRC:DEST]... [--deb PKG]... -- CMD [ARGS...]
#                  boot, run CMD, stream the console to stdout, exit with CMD's code
#                  (124: timed out, 125: no NODELET_VM_RC line); --deb PKG puts a Debian package's
#                  files into the guest (fetched with apt-get download, cached, never installed
#                  on the host), with the libraries its programs need
# Env: NODELET_VM_CACHE (default /var/tmp/nodelet-vm); NODELET_VM_REFRESH=1 re-resolves
# the kernel package; NODELET_VM_EXTRA_MODULES="m1 m2" loads more; NODELET_VM_SMP (2).
set -euo pipefail

CACHE=${NODELET_VM_CACHE:-/var/tmp/nodelet-vm}
HOST_PKGS=(qemu-system-x86 busybox-static kmod ipvsadm nftables iproute2 xz-utils)
# Modules to load in the guest, in this order (deps are resolved by modprobe).
# Names the kernel does not have (or has built in) are skipped.
MODULES=(crc32c_generic crc32c_intel libcrc32c
  nf_conntrack nf_nat nf_tables nfnetlink nf_conntrack_netlink
  nft_chain_nat nft_ct nft_masq nft_nat nft_redir nft_numgen nft_hash nft_limit
  nft_log nft_counter nft_objref nft_compat
  nft_reject nft_reject_inet nft_reject_ipv4 nft_reject_ipv6
  nft_fib nft_fib_inet nft_fib_ipv4 nft_fib_ipv6
  nft_set_hash nft_set_rbtree nft_set_bitmap nft_set_pipapo
  ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_dh
  ip_vs_sh ip_vs_sed ip_vs_nq ip_vs_fo ip_vs_ovf ip_vs_mh ip_vs_twos
  dummy veth bridge br_netfilter nfsd nfs nfsv4 overlay virtio_pci virtio_net)
read -ra extra <<<"${NODELET_VM_EXTRA_MODULES:-}"; MODULES+=("${extra[@]}")

die() { echo "vm.sh: error: $*" >&2; exit 1; }
log() { echo "vm.sh: $*" >&2; }

# ---------------------------------------------------------------- prepare ---
# Prints the kernel version on stdout; everything else goes to stderr.
prepare() {
  [[ $EUID -eq 0 ]] || die "must run as root (apt-get, dpkg-deb)"
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"; flock 9   # parallel tests share one cache

  # 1. Host packages: apt-get update only when something is missing.
  local p need=() updated=0
  for p in "${HOST_PKGS[@]}"; do
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || need+=("$p")
  done
  if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get update -q >&2 || die "apt-get update failed"; updated=1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2 \
      || die "apt-get install ${need[*]} failed"
  fi

  # 2. Cached kernel? ($CACHE/current = "<kernel tree dir> <version>")
  if [[ -s $CACHE/current && -z ${NODELET_VM_REFRESH:-} ]]; then
    local dir ver; read -r dir ver <"$CACHE/current"
    [[ -f $dir/boot/vmlinuz-$ver && -f $dir/lib/modules/$ver/modules.dep.bin ]] && { echo "$ver"; return 0; }
  fi

  # 3. Resolve the metapackage to the versioned image (linux-image-X-amd64[-unsigned]).
  local pkg=""
  resolve() { apt-cache depends linux-image-amd64 2>/dev/null \
      | awk '$1 ~ /Depends:$/ && $NF ~ /^linux-image-[0-9]/ {print $NF; exit}'; }
  pkg=$(resolve)
  if [[ -z $pkg && $updated == 0 ]]; then apt-get update -q >&2; pkg=$(resolve); fi
  [[ -n $pkg ]] || die "cannot resolve linux-image-amd64 to a versioned kernel package"

  # 4. Download and unpack (never installed on the host), then depmod.
  local tree=$CACHE/$pkg dl=$CACHE/dl
  if [[ ! -f $tree/.complete ]]; then
    rm -rf "$dl" "$tree"; mkdir -p "$dl"
    log "downloading $pkg"
    if ! (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2); then
      # Stale package lists name a version the mirror no longer has.
      ((updated)) && die "apt-get download $pkg failed"
      apt-get update -q >&2; pkg=$(resolve); tree=$CACHE/$pkg
      (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) || die "apt-get download $pkg failed"
    fi
    dpkg-deb -x "$dl"/*.deb "$tree.tmp" || die "dpkg-deb -x failed"
    rm -rf "$dl"; mv "$tree.tmp" "$tree"; touch "$tree/.complete"
  fi
  local ver; ver=$(ls "$tree/lib/modules" | head -n1)
  [[ -n $ver && -f $tree/boot/vmlinuz-$ver ]] || die "no vmlinuz/modules in $tree"
  # An uncompressed vmlinux boots via PVH and skips the slow (TCG) in-guest XZ
  # decompression (~2.5 s per boot). Optional: run falls back to vmlinuz.
  if [[ ! -f $tree/boot/vmlinux-$ver ]] && grep -q '^CONFIG_PVH=y' "$tree/boot/config-$ver"; then
    extract_vmlinux "$tree/boot/vmlinuz-$ver" "$tree/boot/vmlinux-$ver" || log "cannot extract vmlinux; using vmlinuz"
  fi
  depmod -b "$tree" "$ver" || die "depmod failed"
  echo "$tree $ver" >"$CACHE/current"
  echo "$ver"
}

extract_vmlinux() {  # $1 bzImage, $2 output: find the payload's magic, decompress.
  local m off
  for m in '\xfd7zXZ\x00:xz -dc' '\x28\xb5\x2f\xfd:zstd -qdc' '\x1f\x8b\x08:gzip -dc'; do
    off=$(LC_ALL=C grep -obUaP "${m%%:*}" "$1" | head -n1 | cut -d: -f1 || true)
    [[ -n $off ]] || continue
    tail -c +$((off + 1)) "$1" | ${m#*:} >"$2.tmp" 2>/dev/null || true  # trailing data: expected
    if [[ $(head -c4 "$2.tmp" | od -An -c | tr -d ' ') == 177ELF ]]; then mv "$2.tmp" "$2"; return 0; fi
  done
  rm -f "$2.tmp"; return 1
}

# -------------------------------------------------------- initramfs build ---
ROOT=""
# Copy a file to the same absolute path inside the initramfs.
put() { mkdir -p "$ROOT$(dirname "$1")"; rm -f "$ROOT$1"; cp -L "$1" "$ROOT$1"; }
# Copy an executable plus its shared libraries and dynamic loader (via ldd).
put_bin() {
  local f=$1 lib
  [[ -f $f && -x $f ]] || die "not an executable file: $f"
  put "$f"
  for lib in $(ldd "$f" 2>/dev/null | awk '{for (i=1;i<=NF;i++) if ($i ~ /^\//) print $i}'); do
    [[ -e $ROOT$lib ]] || put "$lib"
  done
}
# Quote args for sh -c: 'a'\''b'.
shquote() { local a out=""; for a; do out+="'${a//\'/\'\\\'\'}' "; done; printf '%s' "$out"; }

build_initramfs() {  # $1 kernel tree, $2 version, $3 output file; uses BINS/FILES/CMD
  local tree=$1 ver=$2 out=$3 l m f
  # Merged-/usr layout like the host, so ldd's paths (/lib/..., /lib64/...) resolve.
  mkdir -p "$ROOT"/{usr/bin,usr/sbin,usr/lib,usr/lib64,usr/local/bin,proc,sys,dev,tmp,run,root,var,etc/nodelet-vm}
  for l in bin sbin lib lib64; do ln -s "usr/$l" "$ROOT/$l"; done; ln -s ../run "$ROOT/var/run"

  # busybox with every applet as a symlink; real tools below replace some of them.
  cp /bin/busybox "$ROOT/usr/bin/busybox"
  for l in $(/bin/busybox --list-full); do
    [[ -e $ROOT/$l || -L $ROOT/$l ]] || ln -s /usr/bin/busybox "$ROOT/$l"
  done
  # /bin/sh is dash: Debian's busybox-static ash runs its own applets before PATH
  # (so `ip` would be busybox's ip, not iproute2's).
  for f in /usr/bin/dash /usr/sbin/nft /usr/sbin/ip /usr/sbin/ipvsadm /usr/bin/kmod; do put_bin "$f"; done
  ln -sf dash "$ROOT/usr/bin/sh"
  for l in modprobe insmod rmmod lsmod modinfo depmod; do
    rm -f "$ROOT/usr/sbin/$l" "$ROOT/usr/bin/$l"; ln -s /usr/bin/kmod "$ROOT/usr/sbin/$l"
  done
  for f in /etc/protocols /etc/services /etc/iproute2/rt_tables; do [[ -f $f ]] && put "$f"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$ROOT/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOT/etc/group"
  printf '127.0.0.1 localhost vm\n::1 localhost\n' >"$ROOT/etc/hosts"
  echo 'nameserver 10.0.2.3' >"$ROOT/etc/resolv.conf"

  # Test binaries (same path inside, plus a /usr/local/bin symlink) and files.
  for f in "${BINS[@]}"; do
    f=$(realpath -s "$f"); put_bin "$f"
    # Test binaries carry their debug info: not needed in the guest's RAM.
    if [[ $(stat -c %s "$f") -gt 20000000 ]] && command -v objcopy >/dev/null; then
      objcopy --strip-debug "$ROOT$f" 2>/dev/null || true
    fi
    [[ $f == /usr/local/bin/* ]] || ln -sf "$f" "$ROOT/usr/local/bin/$(basename "$f")"
  done
  # Debian packages for the guest only: their files overlaid on the root,
  # their programs' libraries resolved against them first, then the host.
  if ((${#DEBS[@]})); then
    local debroot=$CACHE/debroot/$(printf '%s\n' "${DEBS[@]}" | sort | tr '\n' '+')
    if [[ ! -f $debroot/.complete ]]; then
      rm -rf "$debroot"; mkdir -p "$debroot/dl"
      (cd "$debroot/dl" && apt-get download -q -o APT::Sandbox::User=root "${DEBS[@]}" >&2) \
        || { apt-get update -q >&2; (cd "$debroot/dl" && apt-get download -q -o APT::Sandbox::User=root "${DEBS[@]}" >&2); } \
        || die "apt-get download ${DEBS[*]} failed"
      for f in "$debroot"/dl/*.deb; do dpkg-deb -x "$f" "$debroot/root" || die "dpkg-deb -x $f failed"; done
      rm -rf "$debroot/dl"; touch "$debroot/.complete"
    fi
    tar -C "$debroot/root" -c . | tar -C "$ROOT" -x --keep-directory-symlink
    local libpath="$debroot/root/usr/lib/x86_64-linux-gnu:$debroot/root/lib/x86_64-linux-gnu"
    while IFS= read -r f; do
      for lib in $(LD_LIBRARY_PATH=$libpath ldd "$f" 2>/dev/null | awk '{for (i=1;i<=NF;i++) if ($i ~ /^\//) print $i}'); do
        [[ $lib == "$debroot"/* || -e $ROOT$lib ]] || put "$lib"
      done
    done < <(find "$debroot/root" -type f -perm -u+x 2>/dev/null)
  fi
  for f in "${FILES[@]}"; do
    local src=${f%%:*} dest=${f#*:}
    [[ $f == *:* && -e $src && $dest == /* ]] || die "bad --file $f (want SRC:/ABS/DEST)"
    mkdir -p "$ROOT$(dirname "$dest")"
    if [[ -d $src ]]; then mkdir -p "$ROOT$dest"; cp -a "$src/." "$ROOT$dest/"; else cp -L "$src" "$ROOT$dest"; fi
  done

  # Kernel modules: resolve deps (incl. softdeps) with the host's modprobe against
  # the unpacked tree, copy them (decompressed), then depmod the subset so that
  # modprobe works in the guest, also for the kernel's own request_module().
  local mdir=/lib/modules/$ver load=() path rel
  declare -A seen=()
  for m in "${MODULES[@]}"; do
    l=$(modprobe -d "$tree" -S "$ver" --show-depends "$m" 2>/dev/null) || continue  # not in this kernel
    load+=("$m")
    while read -r kind path _; do
      [[ $kind == insmod && -z ${seen[$path]:-} ]] || continue; seen[$path]=1
      rel=${path#"$tree$mdir/"}
      mkdir -p "$ROOT$mdir/$(dirname "$rel")"
      case $rel in
        *.ko.xz)  xz -dc "$path" >"$ROOT$mdir/${rel%.xz}" ;;
        *.ko.zst) zstd -qdc "$path" >"$ROOT$mdir/${rel%.zst}" ;;
        *.ko.gz)  gzip -dc "$path" >"$ROOT$mdir/${rel%.gz}" ;;
        *)        cp "$path" "$ROOT$mdir/$rel" ;;
      esac
    done <<<"$l"
  done
  for f in modules.builtin modules.builtin.modinfo modules.order; do
    [[ -f $tree$mdir/$f ]] && cp "$tree$mdir/$f" "$ROOT$mdir/"
  done
  depmod -b "$ROOT" "$ver" || die "depmod of the initramfs module subset failed"
  echo "${load[*]}" >"$ROOT/etc/nodelet-vm/modules"
  printf '%s\n' "$CMD" >"$ROOT/etc/nodelet-vm/cmd"

  # PID 1.
  cat >"$ROOT/init" <<'EOF'
#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
# tmpfs on /tmp and /run, unless --bin/--file put something there (would be hidden).
for d in /tmp /run; do [ -n "$(ls -A $d)" ] || mount -t tmpfs tmpfs $d; done
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mkdir -p /run/netns; mount --make-rshared / 2>/dev/null
ip link set lo up
# One modprobe for all (fast); on failure, one by one to report the culprits.
mods=$(cat /etc/nodelet-vm/modules); ok=0; failed=""
if modprobe -a $mods 2>/dev/null; then ok=$(echo $mods | wc -w); else
  for m in $mods; do
    if err=$(modprobe "$m" 2>&1); then ok=$((ok+1)); else failed="$failed $m"; echo "vm: modprobe $m: $err"; fi
  done
fi
echo "vm: modules: $ok loaded${failed:+, failed:$failed}"
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
  i=0; while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $i -lt 40 ]; do usleep 50000; i=$((i+1)); done
  [ $i -lt 40 ] || echo "vm: eth0 has no carrier"
fi
hostname vm
cd /
sh -c "$(cat /etc/nodelet-vm/cmd)" </dev/null
echo "NODELET_VM_RC=$?"
sleep 0.2   # let the serial port drain before powering off
poweroff -f
EOF
  chmod +x "$ROOT/init"
  (cd "$ROOT" && find . -mindepth 1 | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$out" \
    || die "building the initramfs failed"
}

# -------------------------------------------------------------------- run ---
TMP="" BOOTING=""
# On exit (also Ctrl-C / SIGTERM): stop our qemu if it runs, drop the temp dir.
cleanup() {
  if [[ -n $BOOTING ]]; then  # interrupted while the VM runs: stop our qemu, reap the pipeline
    for _ in 1 2 3 4 5 6 7 8 9 10; do [[ -s $TMP/qemu.pid ]] && break; sleep 0.2; done
    [[ -s $TMP/qemu.pid ]] && kill "$(cat "$TMP/qemu.pid")" 2>/dev/null
    wait 2>/dev/null || true
  fi
  [[ -z $TMP ]] || rm -rf "$TMP"
}
run() {
  local timeout=300 mem=1024
  BINS=(); FILES=(); DEBS=()
  while (($#)); do
    case $1 in
      --timeout) timeout=${2:?--timeout needs SECS}; shift 2 ;;
      --mem)     mem=${2:?--mem needs MB}; shift 2 ;;
      --bin)     BINS+=("${2:?--bin needs PATH}"); shift 2 ;;
      --file)    FILES+=("${2:?--file needs SRC:DEST}"); shift 2 ;;
      --deb)     DEBS+=("${2:?--deb needs PKG}"); shift 2 ;;
      --)        shift; break ;;
      *)         die "unknown option '$1' (usage: vm.sh run [opts] -- CMD [ARGS...])" ;;
    esac
  done
  (($#)) || die "no command given (usage: vm.sh run [opts] -- CMD [ARGS...])"
  CMD=$(shquote "$@")  # the guest runs: sh -c "$CMD"

  local ver dir kernel; ver=$(prepare); read -r dir _ <"$CACHE/current"
  kernel=$dir/boot/vmlinux-$ver; [[ -f $kernel ]] || kernel=$dir/boot/vmlinuz-$ver
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/nodelet-vm.XXXXXX")
  trap cleanup EXIT; trap 'exit 130' INT; trap 'exit 143' TERM
  ROOT=$TMP/root; mkdir -p "$ROOT"
  build_initramfs "$dir" "$ver" "$TMP/initrd.gz"

  # Boot; the console (ttyS0) is our stdout, CRs stripped, a copy kept to find the
  # RC line. qboot instead of SeaBIOS and no NIC option ROM: faster, no firmware
  # noise. In the background + wait, so that signals are handled promptly.
  BOOTING=1
  (
    rc=0; timeout -k 10 "$timeout" qemu-system-x86_64 -machine q35 -accel tcg -cpu max \
      -smp "${NODELET_VM_SMP:-2}" -m "$mem" -bios /usr/share/qemu/qboot.rom \
      -nographic -no-reboot -pidfile "$TMP/qemu.pid" -kernel "$kernel" -initrd "$TMP/initrd.gz" \
      -append "console=ttyS0 panic=-1 quiet loglevel=3 mitigations=off" \
      -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= </dev/null 2>&1 || rc=$?
    echo $rc >"$TMP/qemu.rc"
  ) | sed -u -e 's/\r$//' -e '/^\[ *[0-9.]*\] reboot: Power down$/d' | tee "$TMP/console.log" &
  wait $! || true; BOOTING=""
  local line qrc; qrc=$(cat "$TMP/qemu.rc" 2>/dev/null || echo '?')
  line=$(grep -aE '^NODELET_VM_RC=[0-9]+$' "$TMP/console.log" | tail -n1 || true)
  if [[ -n $line ]]; then exit "${line#NODELET_VM_RC=}"; fi
  if [[ $qrc == 124 || $qrc == 137 ]]; then log "timed out after ${timeout}s"; exit 124; fi
  log "no NODELET_VM_RC line (qemu exit $qrc)"; exit 125
}

case ${1:-} in
  prepare) shift; prepare ;;
  run)     shift; run "$@" ;;
  *)       echo "usage: $0 prepare | run [--timeout SECS] [--mem MB] [--bin PATH]... [--file SRC:DEST]... [--deb PKG]... -- CMD [ARGS...]" >&2; exit 2 ;;
esac
