#!/usr/bin/env bash
# Install what the demo and the tests need (Debian): Prosody with prosody-modules (mod_privilege).
# Does nothing when everything is there already. Needs root (or sudo) when something is missing.
set -euo pipefail
need=()
command -v prosody >/dev/null 2>&1 || need+=(prosody)
[ -f /usr/lib/prosody/modules/mod_privilege/mod_privilege.lua ] || need+=(prosody-modules)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${need[*]}"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${need[@]}"
fi
# The packaged service is not used: tests and the demo start their own Prosody on free ports.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prosody 2>/dev/null; then
  echo "note: a system Prosody is running; tests use their own instance on other ports"
fi
