#!/usr/bin/env bash
# Demo: start a throwaway Prosody on loopback, run extpresence against it, set alice's status over
# the native API with an expiry, and show bob's real XMPP client receiving it, `extpresence get`,
# `extpresence watch` and the expiry. `--keep`: keep running until Ctrl-C to try curl and the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --quiet --bin extpresence --example demo
cargo run --quiet --example demo -- "$@"
