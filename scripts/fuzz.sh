#!/usr/bin/env bash
# Time-bounded fuzzing of every parser: run each property target of tests/properties.rs for
# about SECONDS seconds (default 60) with fresh random seeds, optimised but with overflow
# checks and debug assertions on (cargo profile `fuzz`), then print per target the number of
# cases it ran and whether it found a failure (with the minimised input).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# TARGET names test functions of tests/properties.rs (default: all of them). The targets run
# two at a time, so the whole run takes about SECONDS x targets / 2. Replay a run with the
# seed it printed: SPACKFS_FUZZ_SEED=<seed> scripts/fuzz.sh SECONDS TARGET. Respects
# CARGO_TARGET_DIR. Exits non-zero when a target failed. Without SPACKFS_FUZZ_SECONDS (plain
# `cargo test`, as CI runs it) the same targets run a small fixed number of cases.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
if ! [[ "$seconds" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi

log="$(mktemp "${TMPDIR:-/tmp}/spackfs-fuzz.XXXXXX")"
trap 'rm -f "$log"' EXIT

echo "==> building the property tests (profile fuzz)"
cargo test --locked --profile fuzz --test properties --no-run

echo "==> fuzzing each target for ${seconds} s"
status=0
SPACKFS_FUZZ_SECONDS="$seconds" \
    cargo test --locked --profile fuzz --test properties -- --test-threads=2 "$@" \
    >"$log" 2>&1 || status=$?

echo "==> results"
if ! grep '^fuzz: ' "$log" | sed -e 's/^fuzz: //'; then
    echo "(no target reported: see the test output below)"
    status=1
fi
if [ "$status" -ne 0 ]; then
    echo "==> test output"
    cat "$log"
fi
exit "$status"
