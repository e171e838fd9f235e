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
cargo clippy --locked --all-targets -- -A clippy::all
# --no-fail-fast: every test binary runs and reports, even after a failure.
cargo test --locked --no-fail-fast --lib --bins --tests -- --test-threads "${TEST_THREADS:-4}"
