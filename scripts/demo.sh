#!/usr/bin/env bash
# Set up, build and run `spackfs demo` (the README's first command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked --quiet
exec "${CARGO_TARGET_DIR:-target}/release/spackfs" demo "$@"
