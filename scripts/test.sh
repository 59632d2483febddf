#!/usr/bin/env bash
# Set up and run every check and test (the README's second command; CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "==> cargo fmt --check (at ${SECONDS}s)"
cargo fmt --check
echo "==> cargo clippy --all-targets -- -D warnings (at ${SECONDS}s)"
cargo clippy --locked --all-targets --quiet -- -D warnings
echo "==> cargo test (at ${SECONDS}s)"
cargo test --locked --no-fail-fast 2>&1
echo "==> bench/stress --quick (16 processes for 60 s on a cache a third of the working set: no run may fail) (at ${SECONDS}s)"
BENCH_PROFILE=dev BENCH_STRESS_GDB=0 bash bench/stress --quick
echo "==> all checks passed in ${SECONDS}s"
