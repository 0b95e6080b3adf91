#!/bin/sh
# make logs: follow the service's logs: the journal when systemd runs iir, else the log file.
set -eu
LOG_FILE="${IIR_LOG_FILE:-var/deploy-test.log}"
if [ -d /run/systemd/system ] && command -v journalctl >/dev/null 2>&1 \
    && systemctl cat iir.service >/dev/null 2>&1; then
    exec journalctl -u iir.service -f -o cat
fi
if [ -f "$LOG_FILE" ]; then
    echo "logs: no iir.service in a running systemd; following $LOG_FILE" >&2
    exec tail -n 50 -F "$LOG_FILE"
fi
echo "logs: no iir.service journal and no log file at $LOG_FILE (set IIR_LOG_FILE=...)" >&2
exit 1
