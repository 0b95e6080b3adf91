#!/bin/sh
# Install the system tools the packaging tests need, only when missing (idempotent, quiet).
#   systemd-analyze  (Debian package: systemd)  verifies iir.service and scores its hardening
#   dpkg-deb         (Debian package: dpkg)     builds and inspects the .deb
#   git              (Debian package: git)      lists the sources the wheel is built from
#   setpriv          (Debian package: util-linux) drops to an unprivileged user in deploy-test
#   /usr/bin/python3 with venv (python3, python3-venv) builds /opt/iir/venv as the GPU box does
#   chromium         (Debian package: chromium)  the headless browser the /console tests drive
#   redis-server     (Debian package: redis-server) the fleet tests' shared limits (IIR_STATE_URL)
#   postgres, initdb (Debian package: postgresql)   the fleet tests' shared jobs (IIR_JOB_STORE_URL)
# The fleet tests start their own servers on loopback ports in temporary folders
# (tests/fleet_servers.py); the packages' own services are not used.
set -eu

missing=""
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
command -v dpkg-deb >/dev/null 2>&1 || missing="$missing dpkg"
command -v git >/dev/null 2>&1 || missing="$missing git"
command -v setpriv >/dev/null 2>&1 || missing="$missing util-linux"
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
    || missing="$missing chromium"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
if ! command -v postgres >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    missing="$missing postgresql"
fi
if [ ! -x /usr/bin/python3 ]; then
    missing="$missing python3 python3-venv"
elif ! /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing="$missing python3-venv"
fi
[ -n "$missing" ] || exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ci-deps: need$missing but apt-get is not available" >&2
    exit 1
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
echo "ci-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
# shellcheck disable=SC2086 # word splitting of the package list is intended
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
