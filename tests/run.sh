#!/usr/bin/env bash
# The test suite: installs the Debian packages it needs, then runs every unit
# and integration test. Integration tests start private containerds in
# network namespaces of their own; run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
# The modules that do resource and time arithmetic deny clippy's
# arithmetic_side_effects lint (src/resources.rs, src/clock.rs, ...): this
# keeps them so. Other lints report but do not fail the run.
rustup component add clippy >/dev/null 2>&1 || true
cargo clippy --locked --all-targets --features test-hooks -- -A clippy::all
# The figures README and docs/ quote are docs/figures.txt's (docs/figures.sh).
docs/figures.sh --check
# --no-fail-fast: every test binary runs and reports, even after a failure.
log=$(mktemp /tmp/nodelet-tests.XXXXXX.log)
# Tests that cannot check their claim on this host say so (support::skip);
# on CI every test must run, so a skip there fails.
export NODELET_SKIP_LOG
NODELET_SKIP_LOG=$(mktemp /tmp/nodelet-skips.XXXXXX.log)
if [ -n "${CI:-}" ]; then export NODELET_NO_SKIP=1; fi
status=0
# test-hooks: the watchdog's test wedges the pod sync loop (no release build has the hook).
cargo test --locked --no-fail-fast --features test-hooks --lib --bins --tests -- --test-threads "${TEST_THREADS:-4}" 2>&1 | tee "$log" || status=$?
# One line per suite: passed / failed (a suite that crashed has no result line).
awk '
  /^ *Running / { if (suite != "") print_suite(); suite = ($2 == "unittests") ? $3 : $2; res = "" }
  /^test result:/ { res = $0 }
  function print_suite() {
    if (res == "") { printf "  %-28s no result (crashed)\n", suite; return }
    split(res, w, /[ ;.]+/)
    for (i in w) { if (w[i] == "passed") p = w[i-1]; if (w[i] == "failed") f = w[i-1] }
    printf "  %-28s %4d passed %3d failed\n", suite, p, f
    tp += p; tf += f
  }
  END { if (suite != "") print_suite(); printf "  %-28s %4d passed %3d failed\n", "total", tp, tf }
' "$log" | sed '1i tests/run.sh: per suite'
# Skipped tests: every test that ran as ignored, by name (none on CI).
ignored=$( (grep -E '^test .* \.\.\. ignored' "$log" | sed -E 's/^test (.*) \.\.\. ignored.*/  \1/'; cat "$NODELET_SKIP_LOG") || true)
if [ -n "$ignored" ]; then echo "tests/run.sh: skipped (ignored) tests:"; echo "$ignored"; else echo "tests/run.sh: no test skipped"; fi
rm -f "$log" "$NODELET_SKIP_LOG"
exit "$status"
