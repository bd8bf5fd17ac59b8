#!/usr/bin/env bash
# Demo: start a throwaway Prosody on loopback, run extpresence against it, set alice's status over
# HTTP and show bob's real XMPP client receiving it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --quiet --bin extpresence --example demo
cargo run --quiet --example demo
