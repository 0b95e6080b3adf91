#!/bin/sh
# Score iir.service's hardening with `systemd-analyze security` without installing it: the unit
# goes into a scratch root next to the system's own units (offline mode needs a loadable tree).
# On a box where the package is installed, `systemd-analyze security iir.service` gives the same.
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
command -v systemd-analyze >/dev/null 2>&1 || { echo "systemd-analyze not found (packaging/ci-deps.sh)" >&2; exit 1; }
R="$(mktemp -d)"
trap 'rm -rf "$R"' EXIT
mkdir -p "$R/etc/systemd/system" "$R/usr/lib/systemd" "$R/opt/iir/venv/bin"
cp -a /usr/lib/systemd/system "$R/usr/lib/systemd/"
cp "$HERE/../iir.service" "$R/etc/systemd/system/iir.service"
printf '#!/bin/sh\n' >"$R/opt/iir/venv/bin/iir"
chmod 0755 "$R/opt/iir/venv/bin/iir"
systemd-analyze security --offline=true --root="$R" --no-pager "$@" iir.service
