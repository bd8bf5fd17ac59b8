#!/usr/bin/env bash
# Run every test: unit tests, and integration tests against a real Prosody with real XMPP clients.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo test --all-targets -- --test-threads=2 "$@"
