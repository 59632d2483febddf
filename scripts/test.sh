#!/usr/bin/env bash
# Set up and run every check and test (the README's second command; CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "==> cargo fmt --check"
cargo fmt --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets --quiet -- -D warnings
echo "==> cargo test"
cargo test --locked --no-fail-fast 2>&1
