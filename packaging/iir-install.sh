#!/bin/sh
# Install or upgrade IIR from the package's wheelhouse: the iir user, the venv under /opt/iir,
# /etc/iir/iir.env (created once, never overwritten; root:iir 0640, so the service reads its
# keys but cannot rewrite its own configuration) and the state directories.
#
# The package's postinst runs this with ROOT unset. With ROOT=/some/dir every path is placed
# under that directory, no user is created and nothing touches systemd, so the same logic can
# be exercised in a temporary root (tests, `make deploy-test`).
#
# Environment:
#   ROOT              install root (default: empty, the real system)
#   IIR_SHARE_DIR     where wheelhouse/ and iir.env.template are (default $ROOT/usr/share/iir)
#   IIR_PYTHON        interpreter the venv is made from (default /usr/bin/python3)
#   IIR_SERVICE_USER  owner of the env file and state (default iir)
set -eu

ROOT="${ROOT:-}"
SHARE="${IIR_SHARE_DIR:-$ROOT/usr/share/iir}"
PYTHON="${IIR_PYTHON:-/usr/bin/python3}"
SERVICE_USER="${IIR_SERVICE_USER:-iir}"
VENV="$ROOT/opt/iir/venv"
ETC="$ROOT/etc/iir"
ENV_FILE="$ETC/iir.env"
DATA="$ROOT/var/lib/iir"
CACHE="$ROOT/var/cache/iir"

say() { echo "iir-install: $*"; }
fail() { echo "iir-install: error: $*" >&2; exit 1; }

[ -d "$SHARE/wheelhouse" ] || fail "no wheelhouse in $SHARE"
[ -f "$SHARE/iir.env.template" ] || fail "no iir.env.template in $SHARE"
command -v "$PYTHON" >/dev/null 2>&1 || fail "$PYTHON not found (install python3 and python3-venv)"

ensure_user() {
    if getent passwd "$SERVICE_USER" >/dev/null 2>&1; then
        return 0
    fi
    if [ -n "$ROOT" ]; then
        return 0 # a temporary root never gets a system user
    fi
    say "creating system user $SERVICE_USER"
    if command -v adduser >/dev/null 2>&1; then
        adduser --system --group --quiet --home /var/lib/iir --no-create-home \
            --shell /usr/sbin/nologin --gecos "IIR inference router" "$SERVICE_USER"
    else
        useradd --system --user-group --home-dir /var/lib/iir --no-create-home \
            --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
}

# Ownership is set only when it can be: as root, for a user that exists.
own() {
    if [ "$(id -u)" = 0 ] && getent passwd "$SERVICE_USER" >/dev/null 2>&1; then
        chown "$SERVICE_USER:$(id -gn "$SERVICE_USER")" "$@"
    fi
}

# The env file: owned by root, readable by the service's group, by no one else.
own_env_file() {
    if [ "$(id -u)" = 0 ] && getent passwd "$SERVICE_USER" >/dev/null 2>&1; then
        chown "root:$(id -gn "$SERVICE_USER")" "$1"
    fi
    chmod 0640 "$1"
}

ensure_user

# The venv is rebuilt on every install and upgrade (it holds nothing of the operator's) from
# the wheels shipped in the package, so installing needs no network.
say "building $VENV"
mkdir -p "$ROOT/opt/iir"
"$PYTHON" -m venv --clear "$VENV" || fail "cannot create a venv with $PYTHON (is python3-venv installed?)"
"$VENV/bin/python" -m pip install --quiet --no-index --no-cache-dir --disable-pip-version-check \
    --find-links "$SHARE/wheelhouse" iir || fail "installing the iir wheel into $VENV failed"

mkdir -p "$ETC"
chmod 0755 "$ETC"
if [ -e "$ENV_FILE" ]; then
    say "keeping existing $ENV_FILE"
    case "$(stat -c %a "$ENV_FILE")" in
        640 | 600 | 440 | 400) ;;
        *) say "warning: $ENV_FILE is mode $(stat -c %a "$ENV_FILE"); it holds keys, consider chown root:$SERVICE_USER and chmod 640" ;;
    esac
else
    say "creating $ENV_FILE with a new API key"
    key="$("$VENV/bin/python" -m iir.cli.keygen --prefix iir)" || fail "key generation failed"
    tmp="$ETC/.iir.env.new"
    (
        umask 077
        sed "s|__IIR_GENERATED_KEY__|$key|" "$SHARE/iir.env.template" >"$tmp"
    )
    own_env_file "$tmp"
    mv "$tmp" "$ENV_FILE"
fi

mkdir -p "$DATA" "$CACHE"
chmod 0750 "$DATA" "$CACHE"
own "$DATA" "$CACHE"

say "done"
