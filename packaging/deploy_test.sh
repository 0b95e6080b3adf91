#!/bin/sh
# make deploy-test: install the .deb's contents into a temporary root with the package's own
# postinst, start IIR the way iir.service's ExecStart does (its Environment= lines, the same
# command line, which reads the env file itself, an unprivileged user with no_new_privs when run
# as root),
# smoke-test /health, an authenticated chat with iir/echo and /metrics, then stop it with
# SIGTERM and check it exits 0 within the unit's TimeoutStopSec.
#
# Environment:
#   IIR_DEB          use this .deb instead of building one
#   IIR_PYTHON       interpreter for the venv (default /usr/bin/python3, as on the GPU box)
#   IIR_DEPLOY_USER  user to run as when root (default nobody)
#   IIR_LOG_FILE     where the server's output goes (default var/deploy-test.log)
#   KEEP=1           keep the temporary root for inspection
set -eu

HERE="$(cd "$(dirname "$0")" && pwd)"
TOP="$(dirname "$HERE")"
CLIENT_PY="${PYTHON:-$TOP/.venv/bin/python}"
export IIR_PYTHON="${IIR_PYTHON:-/usr/bin/python3}"
LOG_FILE="${IIR_LOG_FILE:-$TOP/var/deploy-test.log}"

say() { echo "deploy-test: $*"; }
fail() {
    echo "deploy-test: FAILED: $*" >&2
    if [ -s "$LOG_FILE" ]; then
        echo "--- last lines of $LOG_FILE ---" >&2
        tail -n 30 "$LOG_FILE" >&2
    fi
    exit 1
}

[ -x "$CLIENT_PY" ] || CLIENT_PY="$(command -v python3)"
DEB="${IIR_DEB:-}"
if [ -z "$DEB" ]; then
    DEB="$("$HERE/build_deb.sh" | tail -n 1)"
fi
[ -f "$DEB" ] || fail "no package at $DEB"

ROOT="$(mktemp -d /tmp/iir-deploy.XXXXXX)"
CTRL="$(mktemp -d /tmp/iir-deploy-ctrl.XXXXXX)"
PID=""
UDP_PID=""
cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -KILL "$PID" 2>/dev/null || true
    fi
    if [ -n "$UDP_PID" ]; then
        kill -TERM "$UDP_PID" 2>/dev/null || true
        wait "$UDP_PID" 2>/dev/null || true
    fi
    rm -rf "$CTRL"
    if [ "${KEEP:-0}" = 1 ]; then say "kept $ROOT"; else rm -rf "$ROOT"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM
chmod 0755 "$ROOT"

# The user switch: as root, run as an unprivileged user like User=iir does.
RUN_AS=""
if [ "$(id -u)" = 0 ]; then
    DEPLOY_USER="${IIR_DEPLOY_USER:-nobody}"
    getent passwd "$DEPLOY_USER" >/dev/null || fail "user $DEPLOY_USER does not exist"
    export IIR_SERVICE_USER="$DEPLOY_USER"
    RUN_AS="setpriv --reuid=$DEPLOY_USER --regid=$(id -gn "$DEPLOY_USER") --init-groups --no-new-privs"
else
    export IIR_SERVICE_USER="$(id -un)"
    say "not root: running as $(id -un) without a user switch"
fi

say "installing $DEB into $ROOT"
dpkg-deb -x "$DEB" "$ROOT"
dpkg-deb -e "$DEB" "$CTRL"
ROOT="$ROOT" sh "$CTRL/postinst" configure >/dev/null || fail "postinst failed"

UNIT="$ROOT/lib/systemd/system/iir.service"
ENV_FILE="$ROOT/etc/iir/iir.env"
[ -f "$ENV_FILE" ] || fail "postinst did not create $ENV_FILE"

# Map the unit's absolute paths into the temporary root.
relocate() {
    sed -e "s#/opt/iir#$ROOT/opt/iir#g" -e "s#/etc/iir#$ROOT/etc/iir#g" \
        -e "s#/var/lib/iir#$ROOT/var/lib/iir#g" -e "s#/var/cache/iir#$ROOT/var/cache/iir#g"
}
PORT="$("$CLIENT_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

# A UDP log listener (the shipped forward_logs_udp.pyz) to receive REMOTE_LOG_SINK datagrams.
UDP_OUT="$CTRL/udp.out"
"$CLIENT_PY" "$ROOT/usr/share/iir/forward_logs_udp.pyz" --listen 0 --bind 127.0.0.1 \
    >"$UDP_OUT" 2>"$CTRL/udp.err" &
UDP_PID=$!
tries=0
until grep -q '^listening on' "$CTRL/udp.err" 2>/dev/null; do
    [ "$tries" -lt 100 ] || fail "UDP listener did not start: $(cat "$CTRL/udp.err")"
    sleep 0.1
    tries=$((tries + 1))
done
UDP_PORT="$(sed -n 's#^listening on 127.0.0.1:\([0-9]*\)/udp#\1#p' "$CTRL/udp.err")"

# Point the installed env file at a free loopback port, the relocated data directory and the
# UDP listener.
sed -i -e "s#^IIR_HOST=.*#IIR_HOST=127.0.0.1#" -e "s#^IIR_PORT=.*#IIR_PORT=$PORT#" \
    -e "s#^IIR_DATA_DIR=.*#IIR_DATA_DIR=$ROOT/var/lib/iir#" \
    -e "s|^#REMOTE_LOG_SINK=.*|REMOTE_LOG_SINK=127.0.0.1:$UDP_PORT|" "$ENV_FILE"
grep -q "^REMOTE_LOG_SINK=127.0.0.1:$UDP_PORT$" "$ENV_FILE" || fail "could not set REMOTE_LOG_SINK"

EXEC_START="$(sed -n 's/^ExecStart=//p' "$UNIT" | relocate)"
STOP_TIMEOUT="$(sed -n 's/^TimeoutStopSec=\([0-9]*\)$/\1/p' "$UNIT")"
[ -n "$EXEC_START" ] || fail "no ExecStart= in $UNIT"
[ -n "$STOP_TIMEOUT" ] || fail "no TimeoutStopSec= (in seconds) in $UNIT"

# Environment as systemd builds it: the Environment= lines only (the unit has no
# EnvironmentFile=; `iir serve --env-file` reads the file, as root:<service group> 0640).
ENV_ARGS="$(sed -n 's/^Environment=//p' "$UNIT" | relocate | tr '\n' ' ')"
API_KEY="$(sed -n 's/^IIR_API_KEY=//p' "$ENV_FILE")"
[ -n "$API_KEY" ] || fail "no IIR_API_KEY in $ENV_FILE"

mkdir -p "$(dirname "$LOG_FILE")"
: >"$LOG_FILE"
say "starting: $EXEC_START (port $PORT${DEPLOY_USER:+, user $DEPLOY_USER})"
# In the state directory, as WorkingDirectory= has it.
# shellcheck disable=SC2086 # ENV_ARGS and EXEC_START are word lists, split on purpose
env -i -C "$ROOT/var/lib/iir" PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 $ENV_ARGS $RUN_AS $EXEC_START >>"$LOG_FILE" 2>&1 &
PID=$!

"$CLIENT_PY" - "$PORT" "$API_KEY" "$PID" <<'PY' || fail "smoke test"
import json
import os
import sys
import time
import urllib.error
import urllib.request

port, key, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = f"http://127.0.0.1:{port}"


def call(path, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


deadline = time.monotonic() + 60
while True:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("server exited before answering /health")
    try:
        status, body = call("/health")
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("server did not answer /health within 60 s")
        time.sleep(0.2)

assert status == 200 and json.loads(body) == {"status": "ok"}, (status, body)
print("deploy-test: /health ok")

chat = {"model": "iir/echo", "messages": [{"role": "user", "content": "deploy test"}]}
status, body = call("/v1/chat/completions", chat)
assert status == 401, f"chat without a key answered {status}"
status, body = call("/v1/chat/completions", chat, token=key)
assert status == 200, (status, body[:300])
answer = json.loads(body)
content = answer["choices"][0]["message"]["content"]
assert isinstance(content, str) and content, answer
print("deploy-test: authenticated chat with iir/echo ok")

status, body = call("/metrics")
text = body.decode()
assert status == 200 and "iir_requests_total" in text, (status, text[:300])
assert key not in text, "API key appears in /metrics"
print("deploy-test: /metrics ok")
PY

say "stopping with SIGTERM (TimeoutStopSec=$STOP_TIMEOUT)"
kill -TERM "$PID"
waited=0
while kill -0 "$PID" 2>/dev/null; do
    [ "$waited" -lt "$((STOP_TIMEOUT * 10))" ] || fail "still running ${STOP_TIMEOUT}s after SIGTERM"
    sleep 0.1
    waited=$((waited + 1))
done
set +e
wait "$PID"
rc=$?
set -e
PID=""
[ "$rc" = 0 ] || fail "server exited with status $rc after SIGTERM"
if grep -q -- "$API_KEY" "$LOG_FILE"; then fail "API key appears in the server log"; fi
[ -s "$UDP_OUT" ] || fail "no log line arrived at REMOTE_LOG_SINK"
if grep -q -- "$API_KEY" "$UDP_OUT"; then fail "API key appears in a UDP log datagram"; fi
say "REMOTE_LOG_SINK ok ($(wc -l <"$UDP_OUT") lines received, no key in them)"
say "OK (log: $LOG_FILE)"
