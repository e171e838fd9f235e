#!/usr/bin/env bash
# The figures README.md and docs/*.md quote, kept from going stale: each is
# written between markers, <!--fig:KEY-->VALUE<!--/fig-->, and its value
# lives in docs/figures.txt ("KEY VALUE", with when and how it was measured).
#
#   docs/figures.sh --check              # CI: every marker's value is the recorded one, every key recorded
#   docs/figures.sh                      # rewrite the markers from docs/figures.txt
#   docs/figures.sh --measure [BENCH...] # run the benchmarks (default: all but ipvs, which needs the VM)
#                                        # and the release and package builds, record, rewrite
#
# Measuring runs as root on the machine whose figures they are (the benches
# need containerd, network namespaces and, for ipvs, the VM of the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
figures=docs/figures.txt
mode=render
benches=()
case "${1:-}" in
  --check) mode=check ;;
  --measure) mode=measure; shift; benches=("$@") ;;
  "") ;;
  *) echo "usage: $0 [--check | --measure [BENCH...]]" >&2; exit 2 ;;
esac

# record KEY VALUE SOURCE: replaces KEY's line in docs/figures.txt.
record() {
  local key=$1 value=$2 source=$3
  [ -n "$value" ] || { echo "figures: $source printed no figure for $key" >&2; exit 1; }
  local tmp; tmp=$(mktemp)
  { grep -v "^$key " "$figures" | grep -v '^#' || true; } > "$tmp"
  printf '%s %s   # %s, %s\n' "$key" "$value" "$(date -u +%F)" "$source" >> "$tmp"
  # The header (comment lines) stays first and in its order; the figures sorted.
  { grep '^#' "$figures" || true; sort "$tmp"; } > "$tmp.new"
  mv "$tmp.new" "$figures"; rm -f "$tmp"
}

# pick FILE REGEX: the first capture group of the first line matching REGEX.
pick() { sed -En "s/$2/\\1/p" "$1" | head -n 1; }

if [ "$mode" = measure ]; then
  [ ${#benches[@]} -gt 0 ] || benches=(pod_start api_pods probes node_api pull proxy proxy_events release package)
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  for b in "${benches[@]}"; do
    echo "figures: measuring $b"
    case "$b" in
      release)
        cargo build --locked --release --bin nodelet
        record binary.bytes "$(stat -c %s target/release/nodelet)" "cargo build --release: target/release/nodelet" ;;
      package)
        systemd/build-deb.sh --out "$out/debs" | tee "$out/package.txt"
        record package.mb "$(du -m --apparent-size "$out"/debs/nodelet_*.deb | cut -f1)" "systemd/build-deb.sh: nodelet_*.deb" ;;
      *)
        cargo bench --locked --bench "$b" 2>&1 | tee "$out/$b.txt" ;;
    esac
    f=$out/$b.txt
    case "$b" in
      pod_start)
        record pod_start.p50 "$(pick "$f" '.*nodelet\/floor p50 ([0-9.]+)x.*')" "cargo bench --bench pod_start"
        record pod_start.p99 "$(pick "$f" '.*nodelet\/floor p50 [0-9.]+x, p99 ([0-9.]+)x.*')" "cargo bench --bench pod_start"
        record pod_start.idle_pct "$(pick "$f" '.* ([0-9.]+)% of a core idle.*')" "cargo bench --bench pod_start"
        record pod_start.rss_mib "$(pick "$f" '^median over rounds.*peak RSS ([0-9.]+) MiB.*')" "cargo bench --bench pod_start"
        record pod_start.idle_cri_per_min "$(pick "$f" '^median over rounds.* ([0-9]+) CRI calls a minute.*')" "cargo bench --bench pod_start" ;;
      api_pods)
        record api_pods.p50_s "$(pick "$f" '^created -> Running status posted: p50 ([0-9.]+) s.*')" "cargo bench --bench api_pods"
        record api_pods.p99_s "$(pick "$f" '^created -> Running status posted: p50 [0-9.]+ s, p99 ([0-9.]+) s.*')" "cargo bench --bench api_pods"
        record api_pods.requests_per_pod "$(pick "$f" '.*= ([0-9.]+) per pod.*')" "cargo bench --bench api_pods" ;;
      probes)
        record probes.cpu_pct "$(pick "$f" '^nodelet CPU over 60 s: [0-9.]+ s = ([0-9.]+)% of one core.*')" "cargo bench --bench probes" ;;
      node_api)
        record node_api.log_mib_s "$(pick "$f" '^logs +node API \(HTTPS\):.* ([0-9.]+) MiB\/s.*')" "cargo bench --bench node_api"
        record node_api.exec_ratio "$(pick "$f" '^exec +node API: +median +[0-9.]+ ms +([0-9.]+)x.*')" "cargo bench --bench node_api" ;;
      pull)
        record pull.ratio_ctr "$(pick "$f" '^ +nodelet \/ ctr +([0-9.]+)x.*')" "cargo bench --bench pull" ;;
      proxy)
        for m in nftables iptables; do
          record "proxy.$m.full_10k_ms" "$(pick "$f" "^ *$m +full sync 1,000: +[0-9.]+ ms +10,000: +([0-9.]+) ms.*")" "cargo bench --bench proxy"
          record "proxy.$m.one_ms" "$(pick "$f" "^ *$m +full sync.*one endpoint with 10,000: +([0-9.]+) ms.*")" "cargo bench --bench proxy"
          record "proxy.$m.dual_1k_ms" "$(pick "$f" "^ *$m +dual-stack full sync of 1,000 Services \(2,000 Service ports\): +([0-9.]+) ms.*")" "cargo bench --bench proxy"
          record "proxy.$m.v4_1k_ms" "$(pick "$f" "^ *$m +dual-stack full sync.*IPv4 only: +([0-9.]+) ms.*")" "cargo bench --bench proxy"
        done
        record proxy.nftables.mem_10k_mib "$(pick "$f" "^memory:.*with nftables mode's committed state ([0-9.]+) MiB.*")" "cargo bench --bench proxy" ;;
      proxy_events)
        record proxy_events.p50_ms "$(pick "$f" '^event to kernel: p50 ([0-9.]+) ms.*')" "cargo bench --bench proxy_events"
        record proxy_events.p99_ms "$(pick "$f" '^event to kernel: p50 [0-9.]+ ms +p99 ([0-9.]+) ms.*')" "cargo bench --bench proxy_events" ;;
      release|package) ;;
      *) echo "figures: no figures are read from $b" >&2 ;;
    esac
  done
fi

# Rewrite (or check) every marker from the recorded values.
status=0
for doc in README.md docs/*.md; do
  new=$(FIGURES="$figures" perl -0pe '
    BEGIN { local $/ = "\n"; open my $f, "<", $ENV{FIGURES} or die; while (<$f>) { next if /^\s*(#|$)/; my ($k, $v) = split; $fig{$k} = $v } }
    s{<!--fig:([\w.]+)-->(.*?)<!--/fig-->}{ exists $fig{$1} ? "<!--fig:$1-->$fig{$1}<!--/fig-->" : do { print STDERR "figures: $ARGV: no recorded value for $1\n"; $missing = 1; "<!--fig:$1-->$2<!--/fig-->" } }ge;
    END { $? = 3 if $missing }
  ' "$doc") || { echo "figures: $doc names a figure docs/figures.txt does not have" >&2; status=1; continue; }
  if [ "$new" != "$(cat "$doc")" ]; then
    if [ "$mode" = check ]; then
      echo "figures: $doc quotes figures other than docs/figures.txt's (run docs/figures.sh)" >&2
      diff <(cat "$doc") <(printf '%s\n' "$new") | head -n 20 >&2 || true
      status=1
    else
      printf '%s\n' "$new" > "$doc"
      echo "figures: rewrote $doc"
    fi
  fi
done
if [ "$mode" = check ] && [ $status -eq 0 ]; then
  echo "figures: README.md and docs/ quote docs/figures.txt ($(grep -c '^[a-z]' "$figures") figures)"
fi
exit $status
