#!/usr/bin/env bash
# Run every test: unit tests, and integration tests against real Prosody and ejabberd servers with
# real XMPP clients (plus the Tigase double). Ends with one summary line over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --all-targets --no-fail-fast "$@" -- --test-threads=2 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$rc"
