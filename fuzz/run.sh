#!/usr/bin/env bash
# Runs every fuzz target under libFuzzer (cargo-fuzz, nightly Rust) for
# SECONDS seconds each (default 60), starting from fuzz/corpus/<target>.
# A crash, a run over 1 s (-timeout) or a single allocation over 64 times
# the largest input (-malloc_limit_mb with -max_len) fails the run; the
# reproducer is left in fuzz/artifacts/<target>/.
#   fuzz/run.sh                 # all targets, 60 s each
#   SECONDS_EACH=1800 fuzz/run.sh static_pod
#   SKIP_BUILD=1 fuzz/run.sh cri_log     # run what is built (parallel lanes)
set -euo pipefail
cd "$(dirname "$0")"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
secs="${SECONDS_EACH:-60}"
max_len="${MAX_LEN:-32768}"
malloc_mb=$(( max_len * 64 / 1048576 + 1 ))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
# Build once, then run the binaries: a source edit during a long run does
# not rebuild halfway (SKIP_BUILD=1 runs what is built).
[ -n "${SKIP_BUILD:-}" ] || cargo +nightly fuzz build
bin_dir=target/$(rustc -vV | sed -n 's/^host: //p')/release
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" "work/$t"
    echo "== $t: ${secs}s"
    # New inputs go to work/ (not committed); corpus/ is the seed set.
    "$bin_dir/$t" "work/$t" "corpus/$t" \
        -max_total_time="$secs" -timeout=1 -max_len="$max_len" -malloc_limit_mb="$malloc_mb" -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 > "artifacts/$t.log" 2>&1 || failed+=("$t")
    grep -E '^(Done|stat::)|ERROR|SUMMARY' "artifacts/$t.log" || true
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]} (reproducers and logs in fuzz/artifacts/)"
    exit 1
fi
