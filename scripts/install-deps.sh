#!/usr/bin/env bash
# Install what the demo and the tests need (Debian): Prosody with prosody-modules (mod_privilege),
# ejabberd, systemd-analyze (to verify the unit file), Chromium (the status page's browser test),
# man and groff (the man page's test), and the Python test tools in target/venv.
# Does nothing when everything is there already. Needs root (or sudo) when something is missing.
set -euo pipefail
need=()
command -v prosody >/dev/null 2>&1 || need+=(prosody)
[ -f /usr/lib/prosody/modules/mod_privilege/mod_privilege.lua ] || need+=(prosody-modules)
command -v ejabberdctl >/dev/null 2>&1 || [ -x /usr/sbin/ejabberdctl ] || need+=(ejabberd)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The status page's test drives a real headless browser.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The man page's test renders it with man and groff, and looks up the pages it refers to.
command -v man >/dev/null 2>&1 || need+=(man-db)
command -v groff >/dev/null 2>&1 || need+=(groff-base)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${need[@]}"
fi
# The packaged services are not used: tests and the demo start their own servers on free ports.

# Python test tools (schemathesis), pinned in tests/python/requirements.txt, in a virtualenv under
# target/ so nothing is installed system-wide.
venv="$(dirname "$0")/../target/venv"
req="$(dirname "$0")/../tests/python/requirements.txt"
if ! [ -x "$venv/bin/schemathesis" ] || ! cmp -s "$req" "$venv/requirements.txt"; then
  command -v python3 >/dev/null 2>&1 || { echo "python3 is needed for the test tools" >&2; exit 1; }
  python3 -m venv "$venv" || {
    $sudo apt-get update && $sudo apt-get install -y --no-install-recommends python3-venv &&
      python3 -m venv "$venv"
  }
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/requirements.txt"
fi
