#!/usr/bin/env bash
# The demo node: runs the static pods in manifests/static on a real
# containerd, with nodelet in front, and shows `nodelet pods` every few
# seconds until Ctrl-C, with nodelet's warnings and errors as they come.
# Everything lives in a network namespace, a cgroup and a directory of its
# own (/tmp/nodelet-demo), and all of it is removed on exit (KEEP=1 keeps
# the directory and its logs).
# Run as root on Debian: sudo manifests/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
tests/setup.sh
# The release build: the binary the package ships (the first build takes
# several minutes on 2 cores).
cargo build --locked --release --bin nodelet
nodelet=$repo/target/release/nodelet
tests/images/build.sh target/test-images >/dev/null

demo=/tmp/nodelet-demo
ns=nodelet-demo
rm -rf "$demo"; mkdir -p "$demo"/{cni,logs,kubelet,empty}
sed -e "s#@ROOT@#$demo#g" -e "s#@CNI_BIN@#/usr/lib/cni#g" tests/support/containerd-config.toml > "$demo/containerd.toml"
# A network name of its own: the CNI plugins' result cache
# (/var/lib/cni/results/<network>-*) is removed by name at the end.
sed -e "s#@ROOT@#$demo#g" -e "s#@BRIDGE@#nodelet0#g" -e "s#@SUBNET@#10.88.0.0/24#g" -e 's#"nodelet-pods"#"nodelet-demo"#' \
  tests/support/cni.conflist > "$demo/cni/10-pods.conflist"
cat > "$demo/kubelet.yaml" <<CFG
kind: KubeletConfiguration
apiVersion: kubelet.config.k8s.io/v1beta1
podLogsDir: $demo/logs
cgroupRoot: /nodelet-demo
CFG
ip netns del "$ns" 2>/dev/null || true
ip netns add "$ns"
ip -n "$ns" link set lo up
endpoint=unix://$demo/containerd.sock

cleanup() {
  set +e
  echo; echo "demo: removing the pods"
  [ -n "${agent:-}" ] && kill "$agent" 2>/dev/null && wait "$agent" 2>/dev/null
  # A nodelet with no manifests removes every pod it finds, as kubelet does.
  nsenter --net="/run/netns/$ns" "$nodelet" --pod-manifest-path "$demo/empty" --config "$demo/kubelet.yaml" --root-dir "$demo/kubelet" \
    --container-logs-dir "$demo/containers" --container-runtime-endpoint "$endpoint" --healthz-port 0 >>"$demo/cleanup.log" 2>&1 &
  local sweeper=$!
  for _ in $(seq 1 60); do
    [ -z "$(ctr -a "$demo/containerd.sock" -n k8s.io containers ls -q 2>/dev/null)" ] && break
    sleep 1
  done
  kill "$sweeper" 2>/dev/null; wait "$sweeper" 2>/dev/null
  kill "$containerd" 2>/dev/null; wait "$containerd" 2>/dev/null
  ip netns del "$ns" 2>/dev/null
  find /sys/fs/cgroup -depth -type d -path '*nodelet-demo*' -exec rmdir {} \; 2>/dev/null
  rm -f /var/lib/cni/results/nodelet-demo-*
  rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null
  if [ -n "${KEEP:-}" ]; then
    echo "demo: done (logs kept in $demo)"
  else
    umount -R "$demo" 2>/dev/null
    find "$demo" -depth -type d -exec mountpoint -q {} \; -exec umount -l {} \; 2>/dev/null
    rm -rf "$demo"
    echo "demo: done, nothing left (KEEP=1 keeps $demo and its logs)"
  fi
}
trap cleanup EXIT

# Own sessions: a Ctrl-C in this terminal must reach the script, not the
# runtime, so the pods can be removed properly.
setsid nsenter --net="/run/netns/$ns" containerd --config "$demo/containerd.toml" >"$demo/containerd.log" 2>&1 &
containerd=$!
for _ in $(seq 1 100); do [ -S "$demo/containerd.sock" ] && break; sleep 0.1; done
"$nodelet" images import --address "$endpoint" target/test-images/busybox.tar target/test-images/pause.tar

setsid nsenter --net="/run/netns/$ns" "$nodelet" --config "$demo/kubelet.yaml" --pod-manifest-path "$repo/manifests/static" \
  --container-runtime-endpoint "$endpoint" --root-dir "$demo/kubelet" --hostname-override demo-node \
  --container-logs-dir "$demo/containers" \
  --crash-loop-backoff-initial 2s >"$demo/nodelet.log" 2>&1 &
agent=$!
echo "demo: nodelet runs the pods in manifests/static (its log: $demo/nodelet.log; pod logs: $demo/logs)"
echo "demo: edit or remove files in manifests/static to see pods change; Ctrl-C to stop"
echo "demo: from any terminal on this host (as root): $nodelet pods --socket $demo/kubelet/nodelet/status.sock"
echo "demo:   or: $nodelet explain pod web --socket $demo/kubelet/nodelet/status.sock"
seen=0
while kill -0 "$agent" 2>/dev/null; do
  sleep 5
  echo "---- $(date +%T)"
  # nodelet's warnings and errors since the last round (a bad manifest
  # shows here, naming the file and the field).
  total=$(wc -l <"$demo/nodelet.log")
  tail -n +"$((seen + 1))" "$demo/nodelet.log" | head -n "$((total - seen))" | grep -E ' (WARN|ERROR) ' | sed 's/^/  nodelet: /' || true
  seen=$total
  "$nodelet" pods --socket "$demo/kubelet/nodelet/status.sock" || true
done
echo "demo: nodelet exited:"
tail -n 5 "$demo/nodelet.log"
KEEP=1
