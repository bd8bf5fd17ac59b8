#!/usr/bin/env bash
# Build the Debian package: target/debian/extpresence_<version>_<arch>.deb (cargo-deb, installed
# under target/tools at a pinned version when missing). The man page and the bash/zsh completions
# are generated from the clap definitions (`extpresence generate-assets`), the packaged unit from
# systemd/extpresence.service with the binary in /usr/bin.
#
#   bash scripts/package.sh          build it, print the file list
#   bash scripts/package.sh --test   also (as root; CI does): lintian (no errors), dpkg -i,
#                                    check-config of the installed example with test secrets,
#                                    the installed man page rendered without warnings,
#                                    systemd-analyze verify of the installed unit, dpkg --purge
#                                    leaving nothing behind
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DEB_VERSION=3.8.0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

need=()
command -v lintian >/dev/null 2>&1 || need+=(lintian)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v gzip >/dev/null 2>&1 || need+=(gzip)
command -v man >/dev/null 2>&1 || need+=(man-db)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${need[@]}"
fi
tools="$PWD/target/tools"
if ! [ -x "$tools/bin/cargo-deb" ] || ! "$tools/bin/cargo-deb" --version | grep -q "$CARGO_DEB_VERSION"; then
  cargo install --quiet --locked --root "$tools" --version "$CARGO_DEB_VERSION" cargo-deb
fi

cargo build --release --locked
mkdir -p target/package
target/release/extpresence generate-assets target/package
gzip -9nf target/package/extpresence.1
sed 's|/usr/local/bin/extpresence|/usr/bin/extpresence|g' systemd/extpresence.service \
  > target/package/extpresence.service
deb=$("$tools/bin/cargo-deb" --no-build --strip | tail -n 1)
echo "built: $deb"
dpkg-deb --contents "$deb"

[ "${1:-}" = "--test" ] || exit 0

echo "== lintian"
# Errors fail the build; warnings and info are shown.
lintian --fail-on error --info "$deb" || { echo "lintian found errors" >&2; exit 1; }

echo "== install"
before=$(mktemp); after=$(mktemp)
trap 'rm -f "$before" "$after"' EXIT
snapshot() { find /etc /usr /var/lib /lib -xdev \( -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/lib/systemd -o -path /var/lib/ucf \) -prune -o -print 2>/dev/null | sort; }
snapshot > "$before"
$sudo dpkg -i "$deb"
test -x /usr/bin/extpresence
test -f /lib/systemd/system/extpresence.service
test -f /usr/share/man/man1/extpresence.1.gz
test -f /usr/share/bash-completion/completions/extpresence
test -f /usr/share/zsh/vendor-completions/_extpresence
test -f /usr/share/doc/extpresence/examples/prosody/extpresence.cfg.lua
grep -q 'ConditionPathExists=/etc/extpresence/component-secret' /lib/systemd/system/extpresence.service
# Without its secrets the unit does not start, and systemd names the missing file (what
# `systemctl status` shows); with them its start conditions hold.
mapfile -t conditions < <(grep '^Condition' /lib/systemd/system/extpresence.service)
[ ${#conditions[@]} -eq 2 ]
for c in "${conditions[@]}"; do
  if out=$(systemd-analyze condition "$c" 2>&1); then
    echo "the unit would start without its secrets ($c):" >&2; echo "$out" >&2; exit 1
  fi
  echo "$out" | grep -q "${c#*=} failed" || { echo "$out" >&2; exit 1; }
  echo "$out" | head -n 1
done
# The installed example with test secrets passes check-config.
(umask 077; echo 'test-component-secret' | $sudo tee /etc/extpresence/component-secret >/dev/null)
(umask 077; echo 'test-api-key' | $sudo tee /etc/extpresence/api-key >/dev/null)
$sudo /usr/bin/extpresence check-config --config /etc/extpresence/extpresence.toml
systemd-analyze condition "${conditions[@]}"
# The installed man page renders without a warning and has its sections (tests/man.rs checks
# the generated page in depth).
man_warnings=$(MANWIDTH=80 man --warnings -l /usr/share/man/man1/extpresence.1.gz 2>&1 >/dev/null)
[ -z "$man_warnings" ] || { echo "man page warnings:" >&2; echo "$man_warnings" >&2; exit 1; }
man_text=$(MANWIDTH=80 MANPAGER=cat man -l /usr/share/man/man1/extpresence.1.gz)
grep -q '^EXIT STATUS' <<<"$man_text"
systemd-analyze verify /lib/systemd/system/extpresence.service

echo "== purge"
$sudo dpkg --purge extpresence
snapshot > "$after"
left=$(comm -13 "$before" "$after")
if [ -n "$left" ]; then
  echo "left behind after dpkg --purge:" >&2
  echo "$left" >&2
  exit 1
fi
echo "package test passed: built, lintian clean of errors, installed, checked, verified, purged without a trace"
